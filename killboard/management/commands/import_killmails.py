"""Import killmails from JSON Lines, JSON arrays, day dumps and archives."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from killboard.ingest import IngestResult, ingest_stream
from killboard.quarantine import write_jsonl
from killboard.readers import UnreadableFile, read_records

# Rejections printed in full before the summary; the rest are only counted.
SHOWN_REJECTIONS = 20


class Command(BaseCommand):
    help = (
        "Import killmails (ESI body plus zkb) from JSON Lines, JSON arrays, zKillboard day "
        "dumps and .tar/.tar.gz/.tar.bz2 archives; gzip and bzip2 files are read as they are."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
        parser.add_argument(
            "--rejects",
            type=Path,
            metavar="PATH",
            help="also write the rejected records, as they came, to PATH as JSON Lines",
        )

    def handle(self, *args: Any, paths: list[Path], rejects: Path | None, **options: Any) -> None:
        for path in paths:
            if not path.is_file():
                raise CommandError(f"{path}: no such file")
        if rejects is not None and not rejects.parent.is_dir():
            raise CommandError(f"--rejects {rejects}: no such directory")
        total = IngestResult()
        with tqdm(
            total=sum(path.stat().st_size for path in paths),
            unit="B",
            unit_scale=True,
            disable=not sys.stderr.isatty(),
        ) as bar:
            for path in paths:
                try:
                    total.add(
                        ingest_stream(read_records(path, bar.update), source=f"import {path}")
                    )
                except UnreadableFile as exc:
                    raise CommandError(f"{exc} (whole killmails before it were stored)") from None
        for rejection in total.rejected[:SHOWN_REJECTIONS]:
            self.stderr.write(f"rejected {rejection}")
        self.stdout.write(f"Imported {len(paths)} file(s): {total.summary()}.")
        if total.new and settings.CELERY_TASK_ALWAYS_EAGER:
            self.stdout.write("Names of what they reference: `manage.py enrich` resolves them.")
        if rejects is not None:
            with rejects.open("w", encoding="utf-8") as stream:
                write_jsonl((rejection.record for rejection in total.rejected), stream)
        if total.rejected:
            kept = f"{rejects} and the quarantine" if rejects else "the quarantine"
            raise CommandError(
                f"{len(total.rejected)} killmail(s) rejected, kept as they came in {kept} "
                "(`retry_rejected` retries them, `export_killmails --rejected` lists them)"
            )
