"""Follow R2Z2's live feed: store every killmail as zKillboard publishes it (Procfile `live`)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from killboard import ratelimit
from killboard.inputs import InvalidInput, parse_seconds, parse_whole_number
from live.follower import Follower
from upstream import clients


class Command(BaseCommand):
    help = (
        "Follow R2Z2's live feed (ephemeral/): store each killmail once, refresh the zkb of "
        "those published again, note stretches that expired unread as coverage gaps. Runs "
        "until --max-killmails packages were read, --seconds passed, or SIGTERM/SIGINT "
        "(the current package is finished); then prints one summary line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--max-killmails", metavar="N", help="stop after N packages")
        parser.add_argument("--seconds", metavar="S", help="stop after S seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            max_killmails = self._max_killmails(options["max_killmails"])
            seconds = options["seconds"]
            if seconds is not None:
                seconds = parse_seconds(seconds, "--seconds")
        except InvalidInput as exc:
            raise CommandError(str(exc)) from None
        stop = threading.Event()
        previous = {
            signum: signal.signal(signum, lambda *_: stop.set())
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            follower = Follower(clients.r2z2_client(ratelimit), stop)
            totals = follower.run(max_killmails=max_killmails, seconds=seconds)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.stdout.write(totals.summary())

    @staticmethod
    def _max_killmails(value: str | None) -> int | None:
        if value is None:
            return None
        count = parse_whole_number(value, "--max-killmails")
        if count < 1:
            raise InvalidInput(f"--max-killmails must be at least 1, got {value!r}")
        return count
