"""Backfill the killmails of any zKillboard target: a character, corporation, alliance, ship
type, solar system or region, newest first; with --update, only what arrived since its last
complete backfill (`backfill.updates`)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from backfill import lifecycle, planning, updates
from backfill.cli import JobCommand, whole_number
from backfill.models import BackfillJob
from backfill.planner import Plan
from killboard import ratelimit
from killboard.inputs import InvalidInput
from upstream import clients


class Command(JobCommand):
    help = (
        "Backfill a target's killmails, newest first. Without a broker the backfill runs "
        "here with a progress bar; with one it is queued (--wait follows it to the end)."
    )
    # backfill_character fixes the type.
    target_type: str | None = None

    def add_arguments(self, parser: CommandParser) -> None:
        if self.target_type is None:
            parser.add_argument("target_type", metavar="TYPE", choices=lifecycle.TARGET_TYPES)
            parser.add_argument("target_id", metavar="ID")
        else:
            parser.add_argument("target_id", metavar=f"{self.target_type.upper()}_ID")
        parser.add_argument("--from-date", metavar="YYYY-MM-DD", help="only killmails since")
        parser.add_argument("--to-date", metavar="YYYY-MM-DD", help="only killmails until")
        parser.add_argument("--max-pages", metavar="N", help="at most N pages of --limit")
        parser.add_argument("--limit", metavar="N", default="200", help="killmails a page, 1..200")
        parser.add_argument(
            "--no-skip-existing",
            action="store_false",
            dest="skip_existing",
            help="also refresh the zkb values of killmails already stored",
        )
        parser.add_argument(
            "--update",
            action="store_true",
            help="read only what arrived since the last complete run (late arrivals included) "
            "and the months it left short",
        )
        self.add_run_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        target_type = self.target_type or options["target_type"]
        try:
            job = lifecycle.build_job(
                options["target_id"],
                target_type=target_type,
                from_date=options["from_date"],
                to_date=options["to_date"],
                max_pages=whole_number(options["max_pages"], "--max-pages"),
                limit=whole_number(options["limit"], "--limit"),
                skip_existing=options["skip_existing"],
                update=options["update"],
            )
        except InvalidInput as exc:  # InvalidBackfill, or a bad --max-pages/--limit
            raise CommandError(str(exc)) from None
        self.estimate_or_run(job, options, lambda: _plan(job))


def _plan(job: BackfillJob) -> Plan:
    """The plan `--estimate` prints: the whole history's, or an update's part of it."""
    plan = planning.scoped_plan(
        job.target_type,
        job.target_id,
        from_date=job.from_date,
        to_date=job.to_date,
        bound=job.max_killmails,
        zkb=clients.zkillboard_client(ratelimit),
    )
    return updates.update_plan(job, plan) if job.update_since else plan
