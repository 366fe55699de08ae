"""`make demo`: a whole backfill, offline, on the embedded default (SQLite, no broker).

Starts the project's fake zKillboard and ESI on loopback, backfills a character with a few
thousand killmails through `manage.py backfill_character` (zKillboard at the real 1 request a
second; half the bodies come from ESI, whose killmail bucket the fake scales up so the demo
takes about a minute), resolves every name, exports the killmails and checks the export
against what the upstream served, then prints what the fake counted.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHARACTER = 2117325769
KILLMAILS = 3000
# The fake's ESI killmail bucket, 20 times the real 3600 tokens per 15 minutes.
ESI_BUCKET = (72_000, 900.0)


def main() -> None:
    """Run the demo in a fresh var/demo.sqlite3."""
    sys.path.insert(0, str(ROOT))
    from fakeupstream.server import FakeUpstream
    from fakeupstream.world import World

    world = World(seed=7)
    ids = world.add_character(
        CHARACTER, KILLMAILS, newest=datetime(2026, 11, 1, tzinfo=UTC), days=240
    )
    # Brand-new characters that ESI cannot name yet, as happens for hours after creation.
    others = {
        attacker["character_id"]
        for killmail_id in ids[:20]
        for attacker in world.body(killmail_id)["attackers"]
        if attacker.get("character_id", CHARACTER) != CHARACTER
    }
    unresolvable = sorted(others)[:2]
    world.add_unresolvable(unresolvable)

    with FakeUpstream(
        world, zkb_rate=1.0, esi_killmail_bucket=ESI_BUCKET, item_shape="mixed"
    ) as up:
        var = ROOT / "var"
        var.mkdir(exist_ok=True)
        database = var / "demo.sqlite3"
        for stale in var.glob("demo.sqlite3*"):
            stale.unlink()
        os.environ.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DATABASE_URL=f"sqlite:///{database}",
            CELERY_BROKER_URL="",
            ZKILLBOARD_API_URL=up.zkb_url,
            ESI_URL=up.esi_url,
            ZKILLBOARD_REQUESTS_PER_SECOND="1",
            EVE_CONTACT="demo@example.com",
        )
        import django

        django.setup()
        from django.core.management import call_command

        print(f"Fake zKillboard and ESI at {up.url}; character {CHARACTER} has {KILLMAILS}")
        print("killmails, bodies on the page since 2026-06-27 and from ESI before.")
        call_command("migrate", verbosity=0)
        call_command("backfill_character", str(CHARACTER))
        export = var / "demo-export.jsonl"
        call_command("export_killmails", "--character", str(CHARACTER), "--output", str(export))
        exported = {r["killmail_id"]: r for r in map(json.loads, export.read_text().splitlines())}
        same = sum(exported.get(i) == {**world.body(i), "zkb": world.zkb(i)} for i in ids)
        print(f"Export identical to what the upstream served: {same}/{len(ids)} killmails.")
        print(f"Unresolvable on purpose: {', '.join(map(str, unresolvable))}.")
        stats = up.stats()
        print(
            f"Upstream saw {stats['zkb_pages']} zKillboard pages, {stats['esi_killmails']} ESI "
            f"killmails, {stats['esi_names']} names calls; rule violations: "
            f"{stats['violation_count']}."
        )
        if same != len(ids) or stats["violation_count"]:
            sys.exit(1)


if __name__ == "__main__":
    main()
