"""The entity kinds killmails reference, described once: one `EntityKind` per kind.

Enrichment reads everything it does per kind from `ENTITY_KINDS`: the table, the ESI detail
route and its rate-limit group, which fields of a detail body are kept and how, and the queue
its detail task runs on. Adding a kind is its model (and migration), one entry here and its
queue in `config/queues.py`; `tests/test_entities.py` checks an entry is all enrichment needs.

killboard imports no other app, so this module holds data only: route paths are templates
(`{id}`), queues are names, and a body's fields are read by small converters of one value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils.dateparse import parse_datetime

from killboard.models import (
    Alliance,
    Character,
    Corporation,
    Entity,
    Faction,
    ItemType,
    SolarSystem,
)

Converter = Callable[[Any], Any]


def as_int(value: Any) -> int | None:
    """A JSON integer, else None (booleans are not integers here)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_float(value: Any) -> float | None:
    """A JSON number as a float, else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def as_time(value: Any) -> datetime | None:
    """An ISO 8601 time, else None."""
    return parse_datetime(value) if isinstance(value, str) else None


def as_text(length: int) -> Converter:
    """A converter to a string cut to `length` characters ("" for anything not a string)."""
    return lambda value: value[:length] if isinstance(value, str) else ""


@dataclass(frozen=True)
class EntityKind:
    """One kind of entity: its table and, when ESI has a detail route for it, how to use it."""

    # The name enrichment, its counts and the admin use; ESI's /universe/names/ category,
    # but for "type" (ESI says "inventory_type").
    kind: str
    model: type[Entity]
    # ESI's detail route, relative to the ESI base URL, with `{id}`; None: a name only.
    detail_path: str | None = None
    detail_group: str | None = None  # the client's rate-limit group of that route
    # Model field -> converter of the detail body's key of the same name.
    detail_fields: Mapping[str, Converter] = field(default_factory=dict)
    queue: str | None = None  # the Celery queue of the kind's detail tasks

    @property
    def has_details(self) -> bool:
        """Whether the kind has a detail route (else /universe/names/ is all there is)."""
        return self.detail_path is not None

    def path(self, entity_id: int) -> str:
        """The detail route of one entity."""
        if self.detail_path is None:
            raise ValueError(f"{self.kind} has no detail route")
        return self.detail_path.format(id=entity_id)

    def detail_values(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The model fields a detail body fills, converted (None or "" for what it lacks)."""
        return {name: convert(body.get(name)) for name, convert in self.detail_fields.items()}


ENTITY_KINDS: tuple[EntityKind, ...] = (
    EntityKind(
        kind="character",
        model=Character,
        detail_path="characters/{id}/",
        detail_group="character",
        detail_fields={
            "corporation_id": as_int,
            "alliance_id": as_int,
            "security_status": as_float,
            "birthday": as_time,
        },
        queue="esi_character_info_queue",
    ),
    EntityKind(
        kind="corporation",
        model=Corporation,
        detail_path="corporations/{id}/",
        detail_group="corporation",
        detail_fields={
            "ticker": as_text(16),
            "ceo_id": as_int,
            "alliance_id": as_int,
            "member_count": as_int,
            "date_founded": as_time,
        },
        queue="esi_corporation_info_queue",
    ),
    EntityKind(
        kind="alliance",
        model=Alliance,
        detail_path="alliances/{id}/",
        detail_group="alliance",
        detail_fields={
            "ticker": as_text(16),
            "executor_corporation_id": as_int,
            "date_founded": as_time,
        },
        queue="esi_alliance_info_queue",
    ),
    EntityKind(
        kind="type",
        model=ItemType,
        detail_path="universe/types/{id}/",
        detail_group="universe",
        detail_fields={"group_id": as_int},
        queue="esi_type_info_queue",
    ),
    EntityKind(kind="solar_system", model=SolarSystem),
    EntityKind(kind="faction", model=Faction),
)

BY_KIND: dict[str, EntityKind] = {entry.kind: entry for entry in ENTITY_KINDS}
BY_MODEL: dict[type[Entity], EntityKind] = {entry.model: entry for entry in ENTITY_KINDS}
# The kinds with a detail route, in registry order.
DETAILED: tuple[EntityKind, ...] = tuple(entry for entry in ENTITY_KINDS if entry.has_details)
