"""Retry the quarantined (rejected) killmails: store those that pass now, keep the rest."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from killboard.quarantine import parse_job_id, retry_rejected


class Command(BaseCommand):
    help = (
        "Ingest the rejected killmails kept in the quarantine again: those that pass now are "
        "stored and leave it, the others stay with their new reason."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--job", metavar="ID", help="only those this backfill job brought")

    def handle(self, *args: Any, job: str | None, **options: Any) -> None:
        try:
            job_id = parse_job_id(job)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        outcome = retry_rejected(job_id)
        self.stdout.write(f"Retried {outcome.summary()}.")
        if outcome.still_rejected:
            raise CommandError(
                f"{outcome.still_rejected} killmail(s) still rejected, kept in the quarantine "
                "with their reasons (admin: Rejected killmails; `export_killmails --rejected`)"
            )
