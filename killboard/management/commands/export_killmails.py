"""Export stored killmails as JSON Lines (ESI bodies as ESI gave them, plus zkb), all of them or
those of one character, corporation or alliance and of some UTC days; or the quarantined ones
as they came."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from killboard.export import iter_records
from killboard.inputs import InvalidInput, parse_date, parse_positive_id
from killboard.models import Killmail, KillmailQuerySet
from killboard.quarantine import iter_rejected_lines, parse_job_id

# Scope option -> the queryset method that selects its killmails.
SCOPES = {
    "character": KillmailQuerySet.involving_character,
    "corporation": KillmailQuerySet.involving_corporation,
    "alliance": KillmailQuerySet.involving_alliance,
}


class Command(BaseCommand):
    help = (
        "Write stored killmails as JSON Lines, one killmail (ESI body plus zkb) a line, by "
        "killmail id; with --rejected, the quarantined records exactly as they came."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        scope = parser.add_mutually_exclusive_group()
        for name in SCOPES:
            scope.add_argument(
                f"--{name}", metavar="ID", help=f"only killmails this {name} is on (either side)"
            )
        parser.add_argument("--from-date", metavar="YYYY-MM-DD", help="from this UTC day on")
        parser.add_argument("--to-date", metavar="YYYY-MM-DD", help="up to this UTC day, included")
        parser.add_argument(
            "--rejected", action="store_true", help="the rejected killmails kept in the quarantine"
        )
        parser.add_argument("--job", metavar="ID", help="with --rejected: only this job's")
        parser.add_argument("--output", type=Path, metavar="PATH", help="default: standard output")

    def handle(
        self, *args: Any, rejected: bool, job: str | None, output: Path | None, **options: Any
    ) -> None:
        # Every check comes before the output is opened: bad input writes nothing.
        try:
            lines = _rejected_lines(job, options) if rejected else _stored_lines(job, options)
        except InvalidInput as exc:
            raise CommandError(str(exc)) from None
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


def _rejected_lines(job: str | None, options: dict[str, Any]) -> Iterator[str]:
    """The quarantine's lines, of one job or all; the quarantine has no scope or dates."""
    for name in SCOPES:
        if options[name] is not None:
            raise InvalidInput(f"--{name} cannot be used with --rejected (use --job)")
    for name in ("from_date", "to_date"):
        if options[name] is not None:
            raise InvalidInput(f"--{name.replace('_', '-')} cannot be used with --rejected")
    return iter_rejected_lines(parse_job_id(job))


def _stored_lines(job: str | None, options: dict[str, Any]) -> Iterator[str]:
    """The stored killmails of the options' scope and days, one JSON line each."""
    if job is not None:
        raise InvalidInput("--job needs --rejected")
    killmails = Killmail.objects.all()
    for name, involving in SCOPES.items():
        if options[name] is not None:
            killmails = involving(killmails, parse_positive_id(options[name], f"--{name}"))
    killmails = killmails.between(*_dates(options["from_date"], options["to_date"]))
    return (json.dumps(record, separators=(",", ":")) for record in iter_records(killmails))


def _dates(from_text: str | None, to_text: str | None) -> tuple[date | None, date | None]:
    """--from-date and --to-date, parsed, the first not after the second."""
    from_date = parse_date(from_text, "--from-date")
    to_date = parse_date(to_text, "--to-date")
    if from_date and to_date and from_date > to_date:
        raise InvalidInput(f"--from-date {from_date} is after --to-date {to_date}")
    return from_date, to_date
