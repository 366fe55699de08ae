"""Export stored killmails as JSON Lines (ESI bodies as ESI gave them, plus zkb), or the
quarantined ones as they came."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from killboard.export import iter_records
from killboard.models import Killmail
from killboard.quarantine import iter_rejected_lines, parse_job_id


class Command(BaseCommand):
    help = (
        "Write stored killmails as JSON Lines, one killmail (ESI body plus zkb) a line; with "
        "--rejected, the quarantined records exactly as they came."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--character", type=int, metavar="ID", help="only this character's")
        parser.add_argument(
            "--rejected", action="store_true", help="the rejected killmails kept in the quarantine"
        )
        parser.add_argument("--job", metavar="ID", help="with --rejected: only this job's")
        parser.add_argument("--output", type=Path, metavar="PATH", help="default: standard output")

    def handle(
        self,
        *args: Any,
        character: int | None,
        rejected: bool,
        job: str | None,
        output: Path | None,
        **options: Any,
    ) -> None:
        if character is not None and character <= 0:
            raise CommandError(f"--character must be a positive id, got {character}")
        if rejected and character is not None:
            raise CommandError("--character cannot be used with --rejected (use --job)")
        if job is not None and not rejected:
            raise CommandError("--job needs --rejected")
        try:
            job_id = parse_job_id(job)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if rejected:
            lines = iter_rejected_lines(job_id)
        else:
            killmails = Killmail.objects.all()
            if character is not None:
                killmails = killmails.involving_character(character)
            lines = (
                json.dumps(record, separators=(",", ":")) for record in iter_records(killmails)
            )
        stream = output.open("w", encoding="utf-8") if output else self.stdout
        count = 0
        try:
            for line in lines:
                stream.write(line + "\n")
                count += 1
        finally:
            if output:
                stream.close()
        if output:
            what = "rejected killmail(s)" if rejected else "killmail(s)"
            self.stdout.write(f"Exported {count} {what} to {output}.")
