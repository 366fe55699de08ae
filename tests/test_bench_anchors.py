"""The benchmark's raw COPY anchor loads exactly the rows ingest stores (PostgreSQL only).

If the anchor loaded less (or other) data than ingest, "ingest at 0.8 of raw COPY" would
compare different work.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.models import Model

from benchmarks import anchors
from killboard.ingest import ingest_killmails
from killboard.models import (
    Alliance,
    Character,
    Corporation,
    Faction,
    Item,
    ItemType,
    Killmail,
    Participant,
    SolarSystem,
)

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="the anchor is a PostgreSQL COPY loader; SQLite has no COPY",
    ),
]

ENTITY_MODELS = (Character, Corporation, Alliance, Faction, ItemType, SolarSystem)


def _records(world: Any) -> list[dict[str, Any]]:
    ids = world.add_character(2117325769, 12)
    return [{**world.body(killmail_id), "zkb": world.zkb(killmail_id)} for killmail_id in ids]


def _stored() -> dict[str, list[tuple]]:
    """Every stored value of the killmail tables and the entity ids, but creation times."""
    tables: dict[str, list[tuple]] = {}
    models: list[type[Model]] = [Killmail, Participant, Item]
    for model in models:
        columns = [
            f.attname for f in model._meta.concrete_fields if f.attname not in ("created_at", "id")
        ]
        tables[model.__name__] = list(model.objects.order_by("pk").values_list(*columns))
    for entity in ENTITY_MODELS:
        tables[entity.__name__] = list(entity.objects.order_by("id").values_list("id", "name"))
    return tables


def _empty() -> None:
    for model in (Item, Participant, Killmail, *ENTITY_MODELS):
        model.objects.all().delete()


def test_copy_anchor_stores_what_ingest_stores(world: Any) -> None:
    records = _records(world)
    ingested = ingest_killmails(records)
    assert ingested.new == len(records)
    assert not ingested.rejected
    by_ingest = _stored()
    _empty()

    rows = anchors.build_rows(records)
    anchors.copy_rows(rows)
    by_copy = _stored()

    assert by_copy == by_ingest
    assert len(by_copy["Participant"]) == sum(1 + len(r["attackers"]) for r in records)
    assert by_copy["Item"], "the sample has items"
    assert rows.count == len(records)
