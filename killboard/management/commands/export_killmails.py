"""Export stored killmails as JSON Lines: ESI bodies as ESI gave them, plus zkb."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from killboard.export import iter_records
from killboard.models import Killmail


class Command(BaseCommand):
    help = "Write stored killmails as JSON Lines, one killmail (ESI body plus zkb) a line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--character", type=int, metavar="ID", help="only this character's")
        parser.add_argument("--output", type=Path, metavar="PATH", help="default: standard output")

    def handle(
        self, *args: Any, character: int | None, output: Path | None, **options: Any
    ) -> None:
        if character is not None and character <= 0:
            raise CommandError(f"--character must be a positive id, got {character}")
        killmails = Killmail.objects.all()
        if character is not None:
            killmails = killmails.involving_character(character)
        stream = output.open("w", encoding="utf-8") if output else self.stdout
        count = 0
        try:
            for record in iter_records(killmails):
                stream.write(json.dumps(record, separators=(",", ":")) + "\n")
                count += 1
        finally:
            if output:
                stream.close()
        if output:
            self.stdout.write(f"Exported {count} killmail(s) to {output}.")
