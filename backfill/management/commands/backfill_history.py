"""Backfill every killmail of some UTC days from zKillboard's day dumps on R2Z2."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from backfill import lifecycle, planning
from backfill.cli import JobCommand
from killboard import ratelimit
from killboard.inputs import InvalidInput
from upstream import clients


class Command(JobCommand):
    help = (
        "Store every killmail of the UTC days --from-date..--to-date (default: yesterday) "
        "from R2Z2's day dumps: ids from each day's list, bodies from its raw dump where R2Z2 "
        "has one, from ESI for the rest. Days already complete are skipped unless "
        "zKillboard's count of them changed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from-date", metavar="YYYY-MM-DD", required=True)
        parser.add_argument("--to-date", metavar="YYYY-MM-DD", help="default: yesterday")
        self.add_run_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            job = lifecycle.build_history_job(options["from_date"], options["to_date"])
        except InvalidInput as exc:
            raise CommandError(str(exc)) from None
        self.estimate_or_run(
            job,
            options,
            lambda: planning.history_plan(
                job.from_date, job.to_date, clients.r2z2_client(ratelimit)
            ),
        )
