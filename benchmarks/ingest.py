"""Ingest: killmails per second from a JSON Lines file into PostgreSQL, against a naive baseline.

The bulk path is what `import_killmails` runs (`read_records` into `ingest_stream`), timed
from opening the file to the last commit. The baseline stores a sample the naive way, one
ORM `create()` per killmail, participant and item, one transaction per killmail, and is
scaled per killmail. It registers no entities, so it does less work than the bulk path.
"""

from __future__ import annotations

import itertools
from typing import Any

from benchmarks.data import killmails_file
from benchmarks.environment import Row, reset_data, timer

KILLMAILS = 20_000
BASELINE_SAMPLE = 1_000
TARGET_RATE = 2_500.0  # killmails per second
TARGET_SPEEDUP = 10.0


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


def run() -> list[Row]:
    """Time the naive baseline on a sample, then the bulk path on the whole file."""
    from killboard.ingest import ingest_stream
    from killboard.models import Item, Killmail, Participant
    from killboard.readers import read_records

    path = killmails_file(KILLMAILS)

    reset_data()
    sample = list(itertools.islice(read_records(path), BASELINE_SAMPLE))
    with timer() as naive:
        for record in sample:
            body = {key: value for key, value in record.items() if key != "zkb"}
            _naive_store(body, record["zkb"])
    naive_rate = len(sample) / naive["seconds"]

    reset_data()
    with timer() as bulk:
        result = ingest_stream(read_records(path))
    rate = result.new / bulk["seconds"]
    participants, items = Participant.objects.count(), Item.objects.count()
    assert result.new == Killmail.objects.count() == KILLMAILS, result.summary()

    speedup = rate / naive_rate
    note = (
        f"{KILLMAILS} killmails, {participants} participants, {items} items in "
        f"{bulk['seconds']:.1f}s (file read and validation included)"
    )
    return [
        Row(
            "ingest into PostgreSQL",
            f"{rate:,.0f} killmails/s",
            f">= {TARGET_RATE:,.0f}/s",
            rate / TARGET_RATE,
            rate >= TARGET_RATE,
            note,
        ),
        Row(
            "ingest vs naive per-row ORM",
            f"{speedup:.1f}x ({naive_rate:,.0f} killmails/s naive)",
            f">= {TARGET_SPEEDUP:.0f}x",
            speedup / TARGET_SPEEDUP,
            speedup >= TARGET_SPEEDUP,
            f"naive on the first {len(sample)} killmails, one transaction each",
        ),
    ]
