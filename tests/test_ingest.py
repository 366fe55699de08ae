"""Ingest: validation, idempotency, lossless round trip through the normalized tables."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings

from killboard.export import iter_records
from killboard.ingest import ingest_killmails
from killboard.models import (
    Character,
    Item,
    ItemType,
    Killmail,
    Participant,
    RejectedKillmail,
    SolarSystem,
)
from killboard.shapes import ZKB
from tests import strategies
from tests.conftest import load
from tests.factories import AttackerFactory, ItemFactory, KillmailFactory

pytestmark = pytest.mark.django_db


def table_counts() -> dict[str, int]:
    models = (Killmail, Participant, Item, Character, ItemType, SolarSystem)
    return {model.__name__: model.objects.count() for model in models}


def exported(killmail_ids: list[int]) -> list[dict[str, Any]]:
    return list(iter_records(Killmail.objects.filter(killmail_id__in=killmail_ids)))


def test_real_samples_round_trip_exactly(sample_bodies):
    result = ingest_killmails(sample_bodies)

    assert result.new == 3
    assert exported(result.new_ids) == sorted(sample_bodies, key=lambda body: body["killmail_id"])


def test_redisq_package_round_trips_with_its_zkb():
    package = load("zkb_redisq_package_119455394.json")["package"]

    ingest_killmails([package])

    [record] = exported([package["killID"]])
    assert record == {**package["killmail"], "zkb": package["zkb"]}
    assert Killmail.objects.get().labels == package["zkb"]["labels"]


def test_r2z2_package_round_trips_with_its_zkb_extras():
    package = load("r2z2_package_134265477.json")

    ingest_killmails([package])

    [record] = exported([package["killmail_id"]])
    assert record == {**package["esi"], "zkb": package["zkb"]}
    assert Killmail.objects.get().zkb_extra == {
        "attackerCount": package["zkb"]["attackerCount"],
        "href": package["zkb"]["href"],
    }


def test_structure_victim_without_character_is_stored():
    body = load("esi_killmail_107220741.json")

    ingest_killmails([body])

    victim = Participant.objects.get(killmail_id=body["killmail_id"], is_victim=True)
    assert victim.character_id is None
    assert Killmail.objects.get().war_id == body["war_id"]
    assert Item.objects.filter(killmail_id=body["killmail_id"]).count() == 131


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(killmail=strategies.killmails)
def test_generated_killmails_round_trip_exactly(killmail):
    with transaction.atomic():
        result = ingest_killmails([killmail])
        assert result.new_ids == [killmail["killmail_id"]], result.rejected
        assert exported(result.new_ids) == [killmail]
        transaction.set_rollback(True)


def test_rerun_stores_nothing_new(sample_bodies):
    ingest_killmails(sample_bodies)
    before = table_counts()

    result = ingest_killmails(sample_bodies)

    assert (result.new, result.existing) == (0, 3)
    assert table_counts() == before


def test_same_killmail_twice_in_one_batch_is_stored_once():
    body = KillmailFactory()

    result = ingest_killmails([body, copy.deepcopy(body)])

    assert (result.new, result.existing) == (1, 1)
    assert Participant.objects.count() == 2


def test_every_referenced_entity_is_registered_nameless():
    container = ItemFactory(item_type_id=3467, items=[ItemFactory(item_type_id=34)])
    body = KillmailFactory(
        attackers=[AttackerFactory(character_id=None, faction_id=500010, weapon_type_id=2488)],
        victim__items=[container],
    )
    del body["attackers"][0]["character_id"]

    ingest_killmails([body])

    assert set(ItemType.objects.values_list("id", flat=True)) == {587, 11198, 2488, 3467, 34}
    assert Character.objects.get(id=body["victim"]["character_id"]).name == ""
    assert SolarSystem.objects.filter(id=30_000_142).exists()


def _without(path: str) -> dict[str, Any]:
    body = KillmailFactory()
    *parents, key = path.split(".")
    target = body
    for parent in parents:
        target = target[int(parent)] if parent.isdigit() else target[parent]
    del target[key]
    return body


def _with(path: str, value: Any) -> dict[str, Any]:
    body = KillmailFactory()
    *parents, key = path.split(".")
    target = body
    for parent in parents:
        target = target[int(parent)] if parent.isdigit() else target[parent]
    target[key] = value
    return body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_without("victim"), "victim: required field is missing"),
        (_without("killmail_time"), "killmail_time: required field is missing"),
        (_without("victim.ship_type_id"), "victim.ship_type_id: required field is missing"),
        (_without("attackers.0.final_blow"), "attackers[0].final_blow: required field is missing"),
        (_with("victim.damage_taken", "12"), "victim.damage_taken: expected an integer, got '12'"),
        (_with("solar_system_id", -5), "solar_system_id: -5 is out of range"),
        (_with("killmail_time", "2024-07-14 15:49"), "killmail_time: expected a time"),
        (_with("attackers", {}), "attackers: expected a list"),
        (_with("victim.items", None), "victim.items: expected a list"),
        (_with("war_id", 2**63), "war_id: 9223372036854775808 is out of range"),
        (_with("attackers.0.security_status", float("nan")), "expected a number"),
        (_with("victim.items.0.flag", 2**31), "victim.items[0].flag: 2147483648 is out of range"),
        (_with("victim.items.0.singleton", -(2**31) - 1), "singleton: -2147483649 is out of"),
        (_with("victim.items.0.quantity_destroyed", 2**63), "quantity_destroyed: 9223372036854"),
        (_with("zkb", ["not", "an", "object"]), "zkb: expected an object"),
    ],
)
def test_malformed_killmail_is_rejected_with_a_clear_reason_and_the_rest_stored(body, reason):
    good = KillmailFactory()

    result = ingest_killmails([body, good])

    [rejection] = result.rejected
    assert reason in rejection.reason
    assert result.new_ids == [good["killmail_id"]]
    assert Killmail.objects.count() == 1


def test_rejected_killmail_changes_nothing():
    body = _with("attackers.0.damage_done", None)

    result = ingest_killmails([body])

    assert len(result.rejected) == 1
    assert all(count == 0 for count in table_counts().values())


def test_zkb_only_item_is_rejected_as_bodiless():
    result = ingest_killmails([load("zkb_redisq_package_zkbonly_130678514.json")])

    assert result.rejected[0].killmail_id == 130678514
    assert "no killmail body" in result.rejected[0].reason


def test_killmails_of_a_character_come_newest_first():
    older = KillmailFactory(killmail_time="2024-01-01T00:00:00Z")
    newer = KillmailFactory(killmail_time="2025-01-01T00:00:00Z")
    newer["attackers"][0]["character_id"] = older["victim"]["character_id"]
    ingest_killmails([older, newer])

    killmails = Killmail.objects.involving_character(older["victim"]["character_id"])

    assert list(killmails.values_list("killmail_id", flat=True)) == [
        newer["killmail_id"],
        older["killmail_id"],
    ]


def _nested(path: str, value: Any) -> dict[str, Any]:
    """A body with a container item holding one item, and `value` set at `path`."""
    body = KillmailFactory()
    body["victim"]["items"] = [ItemFactory(flag=5, items=[ItemFactory(flag=5)])]
    body["victim"]["position"] = {"x": 1.5, "y": -2.0, "z": 3e12}
    *parents, key = path.split(".")
    target = body
    for parent in parents:
        target = target[int(parent)] if parent.isdigit() else target[parent]
    target[key] = value
    return body


# Everything ESI's schema allows (and zkb as zKillboard may send it), kept exactly.
LEGAL_EDGES = {
    "field unknown today on the killmail": _nested("killmarks", [{"mark": 1}]),
    "field unknown today on the victim": _nested("victim.colour", "red"),
    "field unknown today on the position": _nested("victim.position.w", 4.0),
    "field unknown today on an attacker": _nested("attackers.0.tag", {"a": [1, None]}),
    "item_id on an item": _nested("victim.items.0.item_id", 1_234_567_890_123),
    "item_id on a contained item": _nested("victim.items.0.items.0.item_id", 7),
    "items deeper than ESI nests": _nested("victim.items.0.items.0.items", [ItemFactory()]),
    "no items at all": _nested("victim.items", []),
    "an empty container": _nested("victim.items.0.items", []),
    "no attackers": _nested("attackers", []),
    "time with fractional seconds": _nested("killmail_time", "2025-03-01T12:00:00.250Z"),
    "time with an offset": _nested("killmail_time", "2025-03-01T14:00:00+02:00"),
    "integer beyond a float's precision": _nested("victim.position.x", 2**60 + 1),
    "whole number as security status": _nested("attackers.0.security_status", 5),
    "negative quantity": _nested("victim.items.0.quantity_dropped", -3),
    "unknown zkb key": _nested("zkb.attackerCount", 12),
    "zkb null where a number goes": _nested("zkb.points", None),
    "zkb points beyond 32 bits": _nested("zkb.points", 2**62),
    "zkb hash that is not hex": _nested("zkb.hash", "not-hex"),
    "zkb label with a NUL": _nested("zkb.labels", ["pvp\x00"]),
    "zkb label with a lone surrogate": _nested("zkb.labels", ["\ud800"]),
    "NUL in an unknown field": _nested("victim.note", "a\x00b"),
    "text with a lone surrogate": _nested("note", "\udfff"),
}


@pytest.mark.parametrize("record", LEGAL_EDGES.values(), ids=LEGAL_EDGES.keys())
def test_every_legal_shape_is_stored_and_exported_exactly(record):
    result = ingest_killmails([record])

    assert result.new_ids == [record["killmail_id"]], result.rejected
    assert exported(result.new_ids) == [record]


def test_unknown_fields_keep_their_place_and_known_ones_their_columns():
    record = _nested("victim.items.0.item_id", 99)

    ingest_killmails([record])

    item = Item.objects.get(killmail_id=record["killmail_id"], ordinal=0)
    assert (item.item_type_id, item.extra) == (
        record["victim"]["items"][0]["item_type_id"],
        {"item_id": 99},
    )
    assert Killmail.objects.get().extra is None


def test_a_value_the_database_refuses_rejects_its_killmail_alone(monkeypatch):
    good, bad = KillmailFactory(), KillmailFactory()
    bad["zkb"]["points"] = 2**40
    # As if a column's check were missing: the database is the last line.
    monkeypatch.setitem(ZKB.keys, "points", replace(ZKB.keys["points"], high=2**62))

    result = ingest_killmails([good, bad])

    if Killmail.objects.filter(killmail_id=bad["killmail_id"]).exists():
        pytest.skip("this database stores any 64-bit integer in an integer column")
    assert result.new_ids == [good["killmail_id"]]
    [rejection] = result.rejected
    assert rejection.killmail_id == bad["killmail_id"]
    assert RejectedKillmail.objects.get().record == bad


def test_rejected_killmail_is_quarantined_whole():
    body = _with("victim.damage_taken", "12")

    result = ingest_killmails([body], source="a test", job_id=7)

    quarantined = RejectedKillmail.objects.get()
    assert (
        quarantined.killmail_id,
        quarantined.record,
        quarantined.source,
        quarantined.job_id,
    ) == (
        body["killmail_id"],
        body,
        "a test",
        7,
    )
    assert quarantined.reason == result.rejected[0].reason


def test_the_same_rejected_record_twice_is_one_quarantined_row():
    body = _without("victim")

    ingest_killmails([body])
    ingest_killmails([body, copy.deepcopy(body)])

    assert RejectedKillmail.objects.count() == 1
