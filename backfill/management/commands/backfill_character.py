"""Backfill a character's killmail history: the same as `backfill character ID`."""

from __future__ import annotations

from backfill.management.commands import backfill


class Command(backfill.Command):
    help = (
        "Backfill a character's killmails, newest first (the same as `backfill character "
        "ID`). Without a broker the backfill runs here with a progress bar; with one it is "
        "queued (--wait follows it to the end)."
    )
    target_type = "character"
