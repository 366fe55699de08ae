"""Run every benchmark and print one table: figure, anchor, ratio, target and verdict.

    .venv/bin/python -m benchmarks                  # everything (make bench)
    .venv/bin/python -m benchmarks ingest memory    # some of them

Needs PostgreSQL and RabbitMQ on 127.0.0.1 (see the design's "Services"); no internet.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks.environment import Row, drop_database, setup_django

# Benchmark modules, in the order they run; each has run() -> list[Row].
BENCHMARKS = ("ingest", "enrichment", "backfill", "memory", "history", "live", "scale")


def machine() -> str:
    """One line about the machine the figures come from."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    memory_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
        platform.processor(),
    )
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory_kb / 2**20:.1f} GB RAM, "
        f"Python {platform.python_version()}, PostgreSQL {postgres}, "
        f"{platform.system()} {platform.release()}"
    )


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table: each figure, its anchor from this run, ratio and target."""
    lines = [
        "| benchmark | figure | anchor (this run) | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        # A row without a target is there for information: nothing to meet, unless it failed.
        verdict = "MISSED" if not row.ok else "-" if row.target == "-" else "met"
        lines.append(
            f"| {row.name} | {row.figure} | {row.anchor} | {ratio} | {row.target} | {verdict} |"
        )
    notes = [f"- {row.name}: {row.note}" for row in rows if row.note]
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks (default: all) and print the table; 1 if a target is missed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], metavar="NAME")
    names = parser.parse_args(argv).names or list(BENCHMARKS)

    started = time.monotonic()
    setup_django()
    rows: list[Row] = []
    try:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            began = time.monotonic()
            try:
                rows += importlib.import_module(f"benchmarks.{name}").run()
            except Exception:
                traceback.print_exc()
                rows.append(Row(name, "error", "-", None, False, "see the traceback above"))
            print(f"  {name} took {time.monotonic() - began:.0f}s", file=sys.stderr, flush=True)
        about = machine()
    finally:
        drop_database()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(table(rows))
    print(f"\nMachine: {about}")
    print(f"Commit {commit}; whole run {time.monotonic() - started:.0f}s.")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
