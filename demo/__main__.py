"""`make demo`: whole backfills, offline, on the embedded default (SQLite, no broker).

Starts the project's fake zKillboard, ESI and R2Z2 on loopback, then
- backfills a character with a few thousand killmails through `manage.py backfill_character`
  (zKillboard at the real 1 request a second; half the bodies come from ESI, whose killmail
  bucket the fake scales up so the demo takes about a minute) and resolves every name;
- enriches what those killmails reference (`manage.py enrich`): pilots' affiliations in bulk,
  then the details of every kind in parallel, and prints the ESI calls by route group;
- prints the plan of a corporation's backfill (`backfill corporation ID --estimate`), runs it;
- prints the plan of a two-day `backfill_history`, runs it: one day's bodies from its raw
  dump, the other's (a day R2Z2 has no raw dump of) from ESI;
exports each and checks the exports against what the upstream served; then follows R2Z2's live
feed for a few seconds (`follow_live`), prints the coverage of the days it touched (`coverage`)
and what the fake counted.
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
CORPORATION = 98_500_001
HISTORY_DAYS = ("2026-10-30", "2026-10-31")
# The live feed's rate (killmails a second) and how long the demo follows it.
LIVE_RATE, LIVE_SECONDS = 10.0, 8
# The fake's ESI killmail bucket, 20 times the real 3600 tokens per 15 minutes.
ESI_BUCKET = (72_000, 900.0)


def main() -> None:
    """Run the demo in a fresh var/demo.sqlite3."""
    sys.path.insert(0, str(ROOT))
    from datetime import date

    from fakeupstream.server import FakeUpstream
    from fakeupstream.world import World, killmail_time

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
    # A corporation of two pilots, and a day R2Z2 has no raw dump of.
    corporation_ids = world.add_character(
        CHARACTER + 1, 300, corporation_id=CORPORATION, alliance_id=None
    ) + world.add_character(CHARACTER + 2, 150, corporation_id=CORPORATION, alliance_id=None)
    first_day, last_day = map(date.fromisoformat, HISTORY_DAYS)
    # The rest of the game on those two days, and one of them without a raw dump on R2Z2.
    world.add_character(CHARACTER + 3, 400, newest=datetime(2026, 10, 31, 23, tzinfo=UTC), days=2)
    world.days_without_raw.add(first_day)
    day_ids = world.killmail_ids_on(first_day) + world.killmail_ids_on(last_day)

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
            DJANGO_DEBUG="true",  # development mode: the development secret key
            DATABASE_URL=f"sqlite:///{database}",
            CELERY_BROKER_URL="",
            ZKILLBOARD_API_URL=up.zkb_url,
            ESI_URL=up.esi_url,
            R2Z2_URL=up.r2z2_url,
            ZKILLBOARD_REQUESTS_PER_SECOND="1",
            EVE_CONTACT="demo@example.com",
        )
        import django

        django.setup()
        from django.core.management import call_command

        print(f"Fake zKillboard, ESI and R2Z2 at {up.url}; character {CHARACTER} has {KILLMAILS}")
        print("killmails, bodies on the page since 2026-06-27 and from ESI before.")
        call_command("migrate", verbosity=0)
        call_command("backfill_character", str(CHARACTER))

        def hash_only(killmail_id: int) -> dict[str, str]:
            """The zkb of a killmail stored from a day dump: its hash, nothing more."""
            return {"hash": world.killmail_hash(killmail_id)}

        def exported_as_served(name: str, wanted: list[int], *scope: str, zkb: bool) -> bool:
            """Export the scope, compare with what the upstream served, say how it went."""
            export = var / f"demo-{name}.jsonl"
            call_command("export_killmails", *scope, "--output", str(export))
            records = {r["killmail_id"]: r for r in map(json.loads, export.read_text().split())}
            served = {
                i: {**world.body(i), "zkb": world.zkb(i) if zkb else hash_only(i)} for i in wanted
            }
            same = sum(records.get(i) == record for i, record in served.items())
            print(f"Export identical to what the upstream served: {same}/{len(wanted)} killmails.")
            return same == len(wanted)

        followed: set[int] = set()

        def followed_as_served(first: int) -> bool:
            """Compare the store with the packages the follower passed: each killmail stored
            once, with the zkb of the last package of it that the follower read."""
            from killboard.export import iter_records
            from killboard.models import Killmail
            from live.models import FollowerState

            position = FollowerState.objects.get().sequence
            served = {}
            for sequence in range(first, position):
                text = up.feed.package(sequence)  # None for a hole
                if text is not None:
                    package = json.loads(text)
                    served[package["killmail_id"]] = {**package["esi"], "zkb": package["zkb"]}
            followed.update(served)
            stored = iter_records(Killmail.objects.filter(killmail_id__in=served))
            same = sum(record == served[record["killmail_id"]] for record in stored)
            print(
                f"Live feed: sequences {first}..{position - 1}, {len(served)} killmails, "
                f"{same} stored as last served."
            )
            return same == len(served)

        ok = exported_as_served("character", ids, "--character", str(CHARACTER), zkb=True)
        print(f"Unresolvable on purpose: {', '.join(map(str, unresolvable))}.")
        print("\nEnrichment: affiliations in bulk, then every kind's details in parallel.")
        call_command("enrich")

        print(f"\nCorporation {CORPORATION}: two pilots, {len(corporation_ids)} killmails.")
        call_command("backfill", "corporation", str(CORPORATION), "--estimate")
        call_command("backfill", "corporation", str(CORPORATION))
        ok &= exported_as_served(
            "corporation", corporation_ids, "--corporation", str(CORPORATION), zkb=True
        )

        print(f"\nEvery killmail of {first_day} and {last_day} from R2Z2's day dumps:")
        days = ("--from-date", HISTORY_DAYS[0], "--to-date", HISTORY_DAYS[1])
        call_command("backfill_history", *days, "--estimate")
        call_command("backfill_history", *days)
        # Killmails stored by the backfills above are skipped; the export shows the zkb of
        # their pages, the others the day dumps' hash only.
        fresh = sorted(set(day_ids) - set(ids) - set(corporation_ids))
        ok &= exported_as_served("history", fresh, *days, zkb=False)

        print(
            f"\nR2Z2's live feed, {LIVE_RATE:.0f} killmails a second, for {LIVE_SECONDS} seconds:"
        )
        # A feed that has been running for a while: the follower starts at its head.
        up.configure(live_late_rate=0.2, live_reprocess_rate=0.05)
        up.feed_append(100)
        up.configure(live_rate=LIVE_RATE)
        first = up.feed_report()["published"]
        call_command("follow_live", "--seconds", str(LIVE_SECONDS))
        ok &= followed_as_served(first)
        # The days of the late arrivals among them: the ledger against zKillboard's counts,
        # the repair of what the follower started too late to see, and the ledger again.
        touched = sorted({killmail_time(i).date() for i in followed})
        days = ("--from-date", str(touched[0]), "--to-date", str(touched[-1]))
        call_command("coverage", *days, "--repair")
        call_command("coverage", *days)

        stats = up.stats()
        print(
            f"\nUpstream saw {stats['zkb_pages']} zKillboard pages, {stats['zkb_stats']} "
            f"statistics, {stats['r2z2_days'] + stats['r2z2_raw'] + stats['r2z2_totals']} R2Z2 "
            f"downloads, {stats['esi_killmails']} ESI killmails, {stats['esi_names']} names "
            f"calls; rule violations: {stats['violation_count']}."
        )
        if not ok or stats["violation_count"]:
            sys.exit(1)


if __name__ == "__main__":
    main()
