"""Ingest: killmails per second from a JSON Lines file into PostgreSQL, against its anchors.

The figure is what `import_killmails` runs (`read_records` into `ingest_stream`), timed from
opening the file to the last commit. Its anchors come from the same run, the same database
and the same file (see `benchmarks.anchors`): the raw COPY limit (the same rows streamed
into the same tables with binary COPY, nothing else), JSON parsing alone, and a naive
baseline that stores a sample one ORM `create()` per killmail, participant and item, one
transaction per killmail (it registers no entities, so it does less work than ingest).
COPY and ingest alternate, ROUNDS times each on emptied tables; the faster of each counts.
"""

from __future__ import annotations

import gc
import itertools
from pathlib import Path
from typing import Any

from benchmarks import anchors
from benchmarks.data import killmails_file
from benchmarks.environment import Row, reset_data, timer

KILLMAILS = 20_000
BASELINE_SAMPLE = 1_000
ROUNDS = 2
TARGET_COPY_SHARE = 0.8  # ingest's killmails/s over the raw COPY limit's
TARGET_SPEEDUP = 30.0  # ingest's killmails/s over the naive ORM's


def _naive_store(body: dict[str, Any], zkb: dict[str, Any]) -> None:
    from django.db import transaction

    from killboard.models import Item, Killmail, Participant
    from killboard.shapes import parse_time

    victim = body["victim"]
    position = victim.get("position", {})
    time = parse_time(body["killmail_time"])
    with transaction.atomic():
        killmail = Killmail.objects.create(
            killmail_id=body["killmail_id"],
            killmail_time=time,
            solar_system_id=body["solar_system_id"],
            moon_id=body.get("moon_id"),
            war_id=body.get("war_id"),
            position_x=position.get("x"),
            position_y=position.get("y"),
            position_z=position.get("z"),
            killmail_hash=zkb["hash"],
            location_id=zkb.get("locationID"),
            fitted_value=zkb.get("fittedValue"),
            dropped_value=zkb.get("droppedValue"),
            destroyed_value=zkb.get("destroyedValue"),
            total_value=zkb.get("totalValue"),
            total_droppable_value=zkb.get("totalDroppableValue"),
            points=zkb.get("points"),
            npc=zkb.get("npc"),
            solo=zkb.get("solo"),
            awox=zkb.get("awox"),
            labels=zkb.get("labels"),
        )
        Participant.objects.create(
            killmail=killmail,
            killmail_time=time,
            is_victim=True,
            ordinal=0,
            character_id=victim.get("character_id"),
            corporation_id=victim.get("corporation_id"),
            alliance_id=victim.get("alliance_id"),
            faction_id=victim.get("faction_id"),
            ship_type_id=victim["ship_type_id"],
            damage=victim["damage_taken"],
        )
        for ordinal, attacker in enumerate(body["attackers"]):
            Participant.objects.create(
                killmail=killmail,
                killmail_time=time,
                is_victim=False,
                ordinal=ordinal,
                character_id=attacker.get("character_id"),
                corporation_id=attacker.get("corporation_id"),
                alliance_id=attacker.get("alliance_id"),
                faction_id=attacker.get("faction_id"),
                ship_type_id=attacker.get("ship_type_id"),
                weapon_type_id=attacker.get("weapon_type_id"),
                damage=attacker["damage_done"],
                final_blow=attacker["final_blow"],
                security_status=attacker["security_status"],
            )
        ordinal = 0
        for item in victim.get("items", ()):
            container = ordinal
            for entry, parent in [(item, None), *((c, container) for c in item.get("items", ()))]:
                Item.objects.create(
                    killmail=killmail,
                    ordinal=ordinal,
                    container_ordinal=parent,
                    item_type_id=entry["item_type_id"],
                    flag=entry["flag"],
                    singleton=entry["singleton"],
                    quantity_destroyed=entry.get("quantity_destroyed"),
                    quantity_dropped=entry.get("quantity_dropped"),
                )
                ordinal += 1


def naive_rate(path: Path) -> float:
    """Killmails per second of the naive baseline on the file's first BASELINE_SAMPLE."""
    from killboard.readers import read_records

    reset_data()
    sample = list(itertools.islice(read_records(path), BASELINE_SAMPLE))
    with timer() as naive:
        for record in sample:
            body = {key: value for key, value in record.items() if key != "zkb"}
            _naive_store(body, record["zkb"])
    return len(sample) / naive["seconds"]


def copy_rate(path: Path) -> float:
    """Killmails per second of the raw COPY loader into emptied tables (rows built before)."""
    from killboard.readers import read_records

    rows = anchors.build_rows(read_records(path))
    reset_data()
    rate = anchors.copy_rate(rows)
    # The rows are millions of objects: gone before ingest runs, so its collections do not
    # walk them.
    del rows
    gc.collect()
    return rate


def ingest_rate(path: Path) -> tuple[float, float]:
    """(killmails per second, seconds) of ingest into emptied tables."""
    from killboard.ingest import ingest_stream
    from killboard.models import Killmail
    from killboard.readers import read_records

    reset_data()
    with timer() as took:
        result = ingest_stream(read_records(path))
    assert result.new == Killmail.objects.count() == KILLMAILS, result.summary()
    return result.new / took["seconds"], took["seconds"]


def run() -> list[Row]:
    """The anchors and ingest, alternating; one row per figure against its anchor."""
    from killboard import readers
    from killboard.models import Item, Participant

    path = killmails_file(KILLMAILS)
    parse, parse_stdlib = anchors.parse_rates(path)
    naive = naive_rate(path)
    copies, ingests = [], []
    for _ in range(ROUNDS):
        copies.append(copy_rate(path))
        ingests.append(ingest_rate(path))
    copy = max(copies)
    rate, seconds = max(ingests)
    participants, items = Participant.objects.count(), Item.objects.count()
    parser = "msgspec" if readers.msgspec is not None else "the standard library's json"
    share, speedup = rate / copy, rate / naive
    rounds = (
        f"faster of {ROUNDS} alternating runs each: COPY "
        + ", ".join(f"{r:,.0f}" for r in copies)
        + "/s, ingest "
        + ", ".join(f"{r:,.0f}" for r, _ in ingests)
        + "/s"
    )
    return [
        Row(
            "raw COPY limit (anchor)",
            f"{copy:,.0f} killmails/s",
            "-",
            None,
            True,
            f"the rows ingest writes for the {KILLMAILS:,} killmails, built beforehand, one "
            "binary COPY per table (entities, killmails, participants, items), one transaction",
        ),
        Row(
            "JSON parsing alone (anchor)",
            f"{parse:,.0f} killmails/s ({parser})",
            "-",
            None,
            True,
            f"each line decoded, nothing else; the standard library's json: {parse_stdlib:,.0f}/s",
        ),
        Row(
            "naive per-row ORM (anchor)",
            f"{naive:,.0f} killmails/s",
            "-",
            None,
            True,
            f"the first {BASELINE_SAMPLE} killmails, one create() a row, one transaction each",
        ),
        Row(
            "ingest vs raw COPY",
            f"{rate:,.0f} killmails/s",
            f">= {TARGET_COPY_SHARE:g}",
            share,
            share >= TARGET_COPY_SHARE,
            f"{KILLMAILS} killmails, {participants} participants, {items} items in "
            f"{seconds:.1f}s (file read, validation and entities included); {rounds}",
            f"{copy:,.0f}/s raw COPY",
        ),
        Row(
            "ingest vs naive per-row ORM",
            f"{rate:,.0f} killmails/s",
            f">= {TARGET_SPEEDUP:g}",
            speedup,
            speedup >= TARGET_SPEEDUP,
            anchor=f"{naive:,.0f}/s naive",
        ),
        Row(
            "ingest vs JSON parsing alone (information)",
            f"{rate:,.0f} killmails/s",
            "-",
            rate / parse,
            True,
            anchor=f"{parse:,.0f}/s parsing",
        ),
    ]
