"""The coverage ledger of some UTC days: zKillboard's count against the store's, and repair."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from backfill import coverage
from backfill.cli import JobCommand
from killboard import ratelimit
from killboard.inputs import InvalidInput
from upstream import clients
from upstream.errors import UpstreamError


class Command(JobCommand):
    help = (
        "Compare the UTC days --from-date..--to-date (default: the last 30 days through "
        "yesterday) with zKillboard's count of each (R2Z2's totals.json, one request) and "
        "print the ledger: a line a day, a summary per month, the open live gaps. --repair "
        "then starts one history job that fetches only what the short days lack."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from-date", metavar="YYYY-MM-DD", help="default: 30 days back")
        parser.add_argument("--to-date", metavar="YYYY-MM-DD", help="default: yesterday")
        parser.add_argument(
            "--repair", action="store_true", help="start a history job over the short days"
        )
        parser.add_argument("--wait", action="store_true", help="with a broker: follow the job")
        parser.add_argument(
            "--json", action="store_true", help="print the ledger (and the job) as JSON"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            first, last = coverage.ledger_range(options["from_date"], options["to_date"])
        except InvalidInput as exc:
            raise CommandError(str(exc)) from None
        try:
            coverage.check_days(clients.r2z2_client(ratelimit), first, last)
        except UpstreamError as exc:
            raise CommandError(f"no coverage check: {exc}") from None
        report = coverage.report(first, last)
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
        else:
            self.stdout.write("\n".join(report.lines()))
        if options["repair"]:
            self._repair(first, last, options)

    def _repair(self, first: Any, last: Any, options: dict[str, Any]) -> None:
        job = coverage.repair(first, last)
        if job is None:
            # With --json, stdout keeps the ledger alone: no job, no second object.
            out = self.stderr if options["json"] else self.stdout
            out.write("Nothing to repair: every day of the range is complete.")
            return
        self.run(job, options)
