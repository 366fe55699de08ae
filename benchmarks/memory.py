"""Memory: peak RSS of a worker through a 50,000-killmail backfill, and of import_killmails
through a 1 GB JSON Lines file.

The worker's figure is the highest VmHWM of its processes (the main process and its four
pool processes), read just before it stops; the fake upstream's rate is high for this run,
so it measures memory, not patience. The import runs as `manage.py import_killmails` in a
subprocess, whose peak comes from its resource usage (see `LAUNCHER`).
"""

from __future__ import annotations

import subprocess

from benchmarks.backfill import run_job
from benchmarks.data import big_file, killmails_file, line_count
from benchmarks.environment import (
    PYTHON,
    ROOT,
    VAR,
    FakeProcess,
    Row,
    Worker,
    purge_queues,
    reset_data,
    subprocess_env,
    timer,
)

CHARACTER = 2117325769
KILLMAILS = 50_000
FILE_BYTES = 1 << 30
LIMIT_MB = 300.0
# A process's ru_maxrss starts from the peak of the memory it was forked or spawned with, so
# a command started straight from this (large) process would report this process's peak.
# This small launcher forks the command from itself instead, waits for it, and writes the
# command's own peak (kB) to the file named by its first argument.
LAUNCHER = """
import os, resource, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status = os.waitpid(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _worker_peak() -> Row:
    from killboard.models import Killmail

    reset_data()
    purge_queues()
    fast = "1000"
    fake = FakeProcess(f"--character={CHARACTER}:{KILLMAILS}", f"--zkb-rate={fast}")
    with fake, Worker(fake, VAR / "worker-memory.log", ZKILLBOARD_REQUESTS_PER_SECOND=fast) as w:
        job, _ = run_job(CHARACTER)
        main_mb, pool_mb = w.peak_rss_mb()
    purge_queues()
    stored = Killmail.objects.count()
    peak = max(main_mb, pool_mb)
    return Row(
        "worker peak RSS, 50,000-killmail backfill",
        f"{peak:.0f} MB",
        f"< {LIMIT_MB:.0f} MB",
        LIMIT_MB / peak,
        peak < LIMIT_MB and job.status == "succeeded" and stored == KILLMAILS,
        f"main process {main_mb:.0f} MB, largest pool process {pool_mb:.0f} MB; "
        f"{job.pages_fetched} pages, {stored} killmails stored in "
        f"{job.duration.total_seconds():.0f}s (job {job.status})",
    )


def _import_peak() -> Row:
    from killboard.models import Killmail

    path = big_file(FILE_BYTES, killmails_file(20_000))
    count = line_count(path)
    reset_data()
    report = VAR / "import.peak"
    command = [PYTHON, "manage.py", "import_killmails", str(path)]
    with (VAR / "import.log").open("wb") as log, timer() as took:
        done = subprocess.run(
            [PYTHON, "-c", LAUNCHER, str(report), *command],
            cwd=ROOT,
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    peak = int(report.read_text()) / 1024  # kB on Linux
    stored = Killmail.objects.count()
    ok = done.returncode == 0 and stored == count
    return Row(
        "import_killmails peak RSS, 1 GB file",
        f"{peak:.0f} MB",
        f"< {LIMIT_MB:.0f} MB",
        LIMIT_MB / peak,
        peak < LIMIT_MB and ok,
        f"{path.stat().st_size / 2**30:.2f} GB, {count} killmails, {stored} stored in "
        f"{took['seconds']:.0f}s ({stored / took['seconds']:,.0f} killmails/s)",
    )


def run() -> list[Row]:
    """Both peaks, one row each."""
    return [_worker_peak(), _import_peak()]
