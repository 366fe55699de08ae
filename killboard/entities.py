"""The entity kinds killmails reference, described once: one `EntityKind` per kind.

Enrichment reads everything it does per kind from `ENTITY_KINDS`: the table, whether
/universe/names/ names it, the ESI detail route and its rate-limit group, which fields of a
detail body are kept and how, which of them point at other entities (stored as they appear,
so a type brings its group and a group its category), whether details are fetched for every
entity or only where something shows them, and the queue its detail task runs on. Adding a
kind is its model (and migration), one entry here and its queue in `config/queues.py`;
`tests/test_entities.py` checks an entry is all enrichment needs.

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
    Constellation,
    Corporation,
    Entity,
    Faction,
    ItemCategory,
    ItemGroup,
    ItemType,
    Region,
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


def as_bool(value: Any) -> bool | None:
    """A JSON boolean, else None."""
    return value if isinstance(value, bool) else None


@dataclass(frozen=True)
class EntityKind:
    """One kind of entity: its table and, when ESI has a detail route for it, how to use it."""

    # The name enrichment, its counts and the admin use; ESI's /universe/names/ category,
    # but for "type" (ESI says "inventory_type").
    kind: str
    model: type[Entity]
    # Whether POST /universe/names/ names it; else its detail route is where its name comes
    # from (ESI's names route knows no inventory groups or categories).
    named: bool = True
    # ESI's detail route, relative to the ESI base URL, with `{id}`; None: a name only.
    detail_path: str | None = None
    detail_group: str | None = None  # the client's rate-limit group of that route
    # Model field (attname) -> converter of the detail body's key of the same name.
    detail_fields: Mapping[str, Converter] = field(default_factory=dict)
    # Detail field -> kind of the entity it references: an id not stored yet gets its row
    # when the detail arrives, and with it its name and details in turn.
    references: Mapping[str, str] = field(default_factory=dict)
    # Details only where something shows them (a backfill target, an admin page) and their
    # refresh once fetched, not after every naming: a pilot's corporation and alliance come
    # a thousand a call from /characters/affiliation/ instead.
    details_on_demand: bool = False
    queue: str | None = None  # the Celery queue of the kind's detail tasks

    @property
    def has_details(self) -> bool:
        """Whether the kind has a detail route (else /universe/names/ is all there is)."""
        return self.detail_path is not None

    @property
    def details_follow_names(self) -> bool:
        """Whether every entity of the kind gets its details once it is named."""
        return self.has_details and self.named and not self.details_on_demand

    def path(self, entity_id: int) -> str:
        """The detail route of one entity."""
        if self.detail_path is None:
            raise ValueError(f"{self.kind} has no detail route")
        return self.detail_path.format(id=entity_id)

    def detail_values(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The model fields a detail body fills, converted (None or "" for what it lacks)."""
        return {name: convert(body.get(name)) for name, convert in self.detail_fields.items()}


# Detail routes of the static universe: one rate-limit group, one queue.
UNIVERSE_GROUP = "universe"
UNIVERSE_QUEUE = "esi_type_info_queue"

# In cascade order: a kind's references point at kinds after it, so one pass over the
# registry in this order follows type -> group -> category and system -> constellation.
ENTITY_KINDS: tuple[EntityKind, ...] = (
    EntityKind(
        kind="character",
        model=Character,
        detail_path="characters/{id}/",
        detail_group="character",
        detail_fields={"security_status": as_float, "birthday": as_time},
        details_on_demand=True,
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
        detail_group=UNIVERSE_GROUP,
        detail_fields={"group_id": as_int},
        references={"group_id": "group"},
        queue=UNIVERSE_QUEUE,
    ),
    EntityKind(
        kind="group",
        model=ItemGroup,
        named=False,
        detail_path="universe/groups/{id}/",
        detail_group=UNIVERSE_GROUP,
        detail_fields={"category_id": as_int, "published": as_bool},
        references={"category_id": "category"},
        queue=UNIVERSE_QUEUE,
    ),
    EntityKind(
        kind="category",
        model=ItemCategory,
        named=False,
        detail_path="universe/categories/{id}/",
        detail_group=UNIVERSE_GROUP,
        detail_fields={"published": as_bool},
        queue=UNIVERSE_QUEUE,
    ),
    EntityKind(
        kind="solar_system",
        model=SolarSystem,
        detail_path="universe/systems/{id}/",
        detail_group=UNIVERSE_GROUP,
        detail_fields={"constellation_id": as_int, "security_status": as_float},
        references={"constellation_id": "constellation"},
        queue=UNIVERSE_QUEUE,
    ),
    EntityKind(
        kind="constellation",
        model=Constellation,
        detail_path="universe/constellations/{id}/",
        detail_group=UNIVERSE_GROUP,
        detail_fields={"region_id": as_int},
        references={"region_id": "region"},
        queue=UNIVERSE_QUEUE,
    ),
    EntityKind(kind="region", model=Region),
    EntityKind(kind="faction", model=Faction),
)

BY_KIND: dict[str, EntityKind] = {entry.kind: entry for entry in ENTITY_KINDS}
BY_MODEL: dict[type[Entity], EntityKind] = {entry.model: entry for entry in ENTITY_KINDS}
# The kinds with a detail route, in registry (cascade) order.
DETAILED: tuple[EntityKind, ...] = tuple(entry for entry in ENTITY_KINDS if entry.has_details)
# The kinds /universe/names/ names.
NAMED: tuple[EntityKind, ...] = tuple(entry for entry in ENTITY_KINDS if entry.named)
