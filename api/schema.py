"""The GraphQL schema: start backfills, follow jobs, read killmails with resolved names.

`startKillmailBackfill` keeps the shape of the original system:
`startKillmailBackfill(input: {characterId, options: {fromDate, maxPages, limit,
skipExisting}}) { success message queuedAt job { id status } }`. `startBackfill(input:
{targetType, targetId, options})` starts a backfill of any target zKillboard lists, with the
same options (and `toDate`, and `update`: only what arrived since the last complete run) and
the same payload. Invalid input answers `success: false` with the same one-line message as
the CLI, and queues nothing.

`killmails` filters by character, by the victim's ship type (`shipTypeId`), class
(`shipGroupId`) or category (`shipCategoryId`), by constellation and by region, combined,
from the stored entities (no upstream call); item types name their group and category, solar
systems their constellation and region, each loaded only when the query asks for it.

Limits: operation depth, tokens and aliases per document, page sizes (the killmails' attackers
and items are paged too, with their counts), and the cost estimate of `api.limits`, so one
request cannot ask for the whole database. Every EVE id, quantity and damage is a `BigInt`
(`api.scalars`).

Why one long module: the types, the queries and the mutation of one small schema, read
together with the limits that guard them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date, datetime
from enum import Enum
from typing import Any

import strawberry
from django.core.exceptions import ObjectDoesNotExist
from django.db.models import Count, Model, Prefetch, Q, QuerySet
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.permission import BasePermission
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info
from strawberry.types.nodes import SelectedField, Selection

from api.limits import RequestLimits, paged
from api.scalars import BIG_INT, BigInt
from backfill import lifecycle, planning, tasks, updates
from backfill.models import BackfillJob
from backfill.paging import ZKB_PAGE_SIZE
from backfill.planner import Plan
from killboard.inputs import positive_id
from killboard.models import (
    Constellation,
    Entity,
    Item,
    ItemGroup,
    ItemType,
    Killmail,
    KillmailQuerySet,
    Participant,
    SolarSystem,
)

# Deepest selection: killmails { items { victim { shipType { group { category { name } } } } } }
# is depth 6.
MAX_QUERY_DEPTH = 6
MAX_TOKENS = 2000  # tokens in one document: bounds its size whatever its shape
MAX_ALIASES = 15  # aliases repeat a field, and with it its cost
MAX_KILLMAILS_PAGE = 50  # killmails of a page (a big one carries ~1,000 attackers)
MAX_JOBS_PAGE = 100
DEFAULT_PAGE = 20
# Attackers or items of one killmail in a page (a titan's killmail has ~1,000 attackers); the
# default page is the whole page, so most killmails answer whole.
MAX_NESTED_PAGE = 100


class HasPermission(BasePermission):
    """The user (the session's, or the token's) holds `permission`."""

    permission = ""

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        return info.context.request.user.has_perm(self.permission)


class CanStartBackfill(HasPermission):
    permission = "backfill.start_backfill"
    message = "You do not have permission to start backfills (backfill.start_backfill)."


class CanViewJobs(HasPermission):
    permission = "backfill.view_backfilljob"
    message = "You do not have permission to view backfill jobs."


class CanViewKillmails(HasPermission):
    permission = "killboard.view_killmail"
    message = "You do not have permission to view killmails."


def _page_size(limit: int, most: int) -> int:
    if not 1 <= limit <= most:
        raise ValueError(f"limit must be from 1 to {most}, got {limit}")
    return limit


def _offset(offset: int) -> int:
    if offset < 0:
        raise ValueError(f"offset must be 0 or more, got {offset}")
    return offset


# -- backfill jobs ---------------------------------------------------------------------------


@strawberry.type(name="BackfillJob")
class BackfillJobType:
    """A backfill job: options, where it stands, and its counters."""

    id: strawberry.ID
    target_type: str
    target_id: BigInt
    status: str = strawberry.field(
        description="queued, running, succeeded, partial (finished, but some killmails "
        "failed or were rejected), failed or cancelled."
    )
    from_date: date | None
    to_date: date | None
    max_pages: int | None
    limit: int
    skip_existing: bool
    update_since: datetime | None = strawberry.field(
        description="An update: it read back to this (the last complete run's start less the "
        "late-arrival overlap); null for a whole backfill."
    )
    plan: list[str] = strawberry.field(
        description="The plan in words, as `backfill --estimate` prints it; empty until planned."
    )
    pages_fetched: int
    dumps_fetched: int = strawberry.field(description="R2Z2 day-dump downloads.")
    killmails_listed: int
    already_stored: int
    bodies_from_page: int
    bodies_from_dump: int
    bodies_from_esi: int
    stored: int
    failed: int = strawberry.field(description="Killmails that never got a body.")
    rejected: int = strawberry.field(
        description="Killmails whose body arrived but could not be stored."
    )
    skipped_older: int
    skipped_newer: int
    pending: int
    summary: str = strawberry.field(description="The one line `backfill_character` prints.")
    progress: float | None = strawberry.field(description="0..1 when the size is known.")
    duration_seconds: float | None
    eta_seconds: float | None
    last_error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_model(cls, job: BackfillJob) -> BackfillJobType:
        duration, eta = job.duration, job.eta
        plan = Plan.from_dict(job.plan)
        return cls(
            id=strawberry.ID(str(job.pk)),
            target_type=job.target_type,
            target_id=job.target_id,
            status=job.status,
            from_date=job.from_date,
            to_date=job.to_date,
            max_pages=job.max_pages,
            limit=job.limit,
            skip_existing=job.skip_existing,
            update_since=job.update_since,
            plan=[*updates.plan_lines(job, plan), *plan.lines(planning.rates())] if plan else [],
            **job.counts(),
            summary=updates.summary_line(job),
            progress=job.progress,
            duration_seconds=duration.total_seconds() if duration else None,
            eta_seconds=eta.total_seconds() if eta else None,
            last_error=job.last_error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


@strawberry.type
class BackfillJobPage:
    items: list[BackfillJobType]
    total_count: int
    offset: int
    has_next_page: bool


# -- killmails -------------------------------------------------------------------------------


@strawberry.type(name="Entity")
class EntityRef:
    """Something a killmail references; `name` is null until ESI resolved it."""

    id: BigInt
    name: str | None


def _name(entity: Entity | None) -> str | None:
    return (entity.name or None) if entity is not None else None


def _stored(row: Model, relation: str) -> Any:
    """The entity `row` references, None when it is not stored (yet): references have no
    database constraint. Loaded with `row` (see `_related_paths`), so this costs no query."""
    try:
        return getattr(row, relation)
    except ObjectDoesNotExist:
        return None


def _ref(entity: Entity | None, entity_id: int | None) -> EntityRef | None:
    if entity_id is None:
        return None
    return EntityRef(id=entity_id, name=_name(entity))


@strawberry.type(name="ItemGroup")
class ItemGroupRef:
    """An inventory group; a ship's group is its class (Frigate, Battleship...)."""

    id: BigInt
    name: str | None
    _row: strawberry.Private[ItemGroup | None]

    @strawberry.field(description="Ship, Module, Structure...; null until the group is known.")
    def category(self) -> EntityRef | None:
        row = self._row
        return None if row is None else _ref(_stored(row, "category"), row.category_id)


@strawberry.type(name="ItemType")
class ItemTypeRef:
    """A ship, module or other item type; `name` is null until ESI resolved it."""

    id: BigInt
    name: str | None
    _row: strawberry.Private[ItemType | None]

    @strawberry.field(description="Its group (a ship's class); null until the type is known.")
    def group(self) -> ItemGroupRef | None:
        row = self._row
        if row is None or row.group_id is None:
            return None
        group = _stored(row, "group")
        return ItemGroupRef(id=row.group_id, name=_name(group), _row=group)


def _item_type(row: ItemType | None, type_id: int | None) -> ItemTypeRef | None:
    return None if type_id is None else ItemTypeRef(id=type_id, name=_name(row), _row=row)


@strawberry.type(name="Constellation")
class ConstellationRef:
    """A constellation of solar systems, in one region."""

    id: BigInt
    name: str | None
    _row: strawberry.Private[Constellation | None]

    @strawberry.field(description="Null until the constellation is known.")
    def region(self) -> EntityRef | None:
        row = self._row
        return None if row is None else _ref(_stored(row, "region"), row.region_id)


@strawberry.type(name="SolarSystem")
class SolarSystemRef:
    """A solar system; `name` is null until ESI resolved it."""

    id: BigInt
    name: str | None
    _row: strawberry.Private[SolarSystem | None]

    @strawberry.field(description="Null until the system is known.")
    def constellation(self) -> ConstellationRef | None:
        row = self._row
        if row is None or row.constellation_id is None:
            return None
        constellation = _stored(row, "constellation")
        return ConstellationRef(
            id=row.constellation_id, name=_name(constellation), _row=constellation
        )

    @strawberry.field(description="-1.0 to 1.0; null until the system is known.")
    def security_status(self) -> float | None:
        return None if self._row is None else self._row.security_status


@strawberry.type(name="Participant")
class ParticipantType:
    """The victim or an attacker."""

    _row: strawberry.Private[Participant]

    @strawberry.field
    def character(self) -> EntityRef | None:
        return _ref(self._row.character, self._row.character_id)

    @strawberry.field
    def corporation(self) -> EntityRef | None:
        return _ref(self._row.corporation, self._row.corporation_id)

    @strawberry.field
    def alliance(self) -> EntityRef | None:
        return _ref(self._row.alliance, self._row.alliance_id)

    @strawberry.field
    def faction(self) -> EntityRef | None:
        return _ref(self._row.faction, self._row.faction_id)

    @strawberry.field
    def ship_type(self) -> ItemTypeRef | None:
        return _item_type(self._row.ship_type, self._row.ship_type_id)

    @strawberry.field
    def weapon_type(self) -> ItemTypeRef | None:
        return _item_type(self._row.weapon_type, self._row.weapon_type_id)

    @strawberry.field(description="Damage taken (victim) or done (attacker).")
    def damage(self) -> BigInt:
        return self._row.damage

    @strawberry.field
    def final_blow(self) -> bool | None:
        return self._row.final_blow

    @strawberry.field
    def security_status(self) -> float | None:
        return self._row.security_status


@strawberry.type(name="Item")
class ItemNode:
    """An item of the victim; container contents name their container's ordinal."""

    _row: strawberry.Private[Item]

    @strawberry.field
    def item_type(self) -> ItemTypeRef | None:
        return _item_type(self._row.item_type, self._row.item_type_id)

    @strawberry.field(description="Position among the killmail's items (containers first).")
    def ordinal(self) -> int:
        return self._row.ordinal

    @strawberry.field
    def container_ordinal(self) -> int | None:
        return self._row.container_ordinal

    @strawberry.field
    def flag(self) -> BigInt:
        return self._row.flag

    @strawberry.field
    def singleton(self) -> BigInt:
        return self._row.singleton

    @strawberry.field
    def quantity_destroyed(self) -> BigInt | None:
        return self._row.quantity_destroyed

    @strawberry.field
    def quantity_dropped(self) -> BigInt | None:
        return self._row.quantity_dropped


def _in_page(rows: Iterable[Any], offset: int, limit: int) -> list[Any]:
    """The rows of one nested page: attackers and items are numbered from 0 (`ordinal`)."""
    start, size = _offset(offset), _page_size(limit, MAX_NESTED_PAGE)
    return [row for row in rows if start <= row.ordinal < start + size]


@strawberry.type(name="Killmail")
class KillmailType:
    """A stored killmail with its victim, attackers and items (both paged: `limit` at most
    100, `offset` from 0; `attackerCount` and `itemCount` say how many there are)."""

    _row: strawberry.Private[Killmail]
    _counts: strawberry.Private[dict[str, int]]

    @strawberry.field
    def killmail_id(self) -> BigInt:
        return self._row.killmail_id

    @strawberry.field
    def killmail_time(self) -> datetime:
        return self._row.killmail_time

    @strawberry.field
    def solar_system(self) -> SolarSystemRef | None:
        system = _stored(self._row, "solar_system")
        return SolarSystemRef(id=self._row.solar_system_id, name=_name(system), _row=system)

    @strawberry.field(description="ISK, as zKillboard estimates it.")
    def total_value(self) -> float | None:
        return self._row.total_value

    @strawberry.field
    def points(self) -> BigInt | None:
        return self._row.points

    @strawberry.field
    def npc(self) -> bool | None:
        return self._row.npc

    @strawberry.field
    def solo(self) -> bool | None:
        return self._row.solo

    @strawberry.field
    def victim(self) -> ParticipantType | None:
        victims = [p for p in self._row.participants.all() if p.is_victim]
        return ParticipantType(_row=victims[0]) if victims else None

    @strawberry.field(metadata=paged(MAX_NESTED_PAGE))
    def attackers(self, offset: int = 0, limit: int = MAX_NESTED_PAGE) -> list[ParticipantType]:
        """Attackers in ESI's order, one page of them."""
        rows = [p for p in self._row.participants.all() if not p.is_victim]
        return [ParticipantType(_row=p) for p in _in_page(rows, offset, limit)]

    @strawberry.field(description="How many attackers the killmail has.")
    def attacker_count(self) -> int:
        return self._counts.get("attackers", 0)

    @strawberry.field(metadata=paged(MAX_NESTED_PAGE))
    def items(self, offset: int = 0, limit: int = MAX_NESTED_PAGE) -> list[ItemNode]:
        """The victim's items, containers before their contents, one page of them."""
        return [ItemNode(_row=item) for item in _in_page(self._row.items.all(), offset, limit)]

    @strawberry.field(description="How many items (contents of containers included).")
    def item_count(self) -> int:
        return self._counts.get("items", 0)


@strawberry.type
class KillmailPage:
    items: list[KillmailType]
    offset: int
    has_next_page: bool


def _fields(selections: Iterable[Selection]) -> Iterator[SelectedField]:
    """The fields of a selection, those of its fragments included."""
    for selection in selections:
        if isinstance(selection, SelectedField):
            yield selection
        else:
            yield from _fields(selection.selections)


def _argument(field: SelectedField, name: str, default: int) -> int:
    """An Int argument as strawberry hands it over: a literal's text, or a variable's value
    (None when the request left it out, which means the default)."""
    value = field.arguments.get(name)
    return default if value is None else int(value)


def _ranges(fields: list[SelectedField], name: str) -> Q | None:
    """The `ordinal` ranges the selections of nested list `name` ask for (aliases included),
    checked here so a bad page fails the query before it reads anything."""
    ranges = Q()
    asked = False
    for field in fields:
        if field.name == name:
            start = _offset(_argument(field, "offset", 0))
            size = _page_size(_argument(field, "limit", MAX_NESTED_PAGE), MAX_NESTED_PAGE)
            ranges |= Q(ordinal__gte=start, ordinal__lt=start + size)
            asked = True
    return ranges if asked else None


# Entity fields that lead to another entity, named alike in GraphQL and in the models.
NESTED_ENTITIES = frozenset({"group", "category", "constellation", "region"})


def _children(fields: Iterable[SelectedField], *names: str) -> list[SelectedField]:
    """The fields selected under the fields named `names`."""
    return [child for field in fields if field.name in names for child in _fields(field.selections)]


def _related_paths(fields: list[SelectedField], name: str, relation: str) -> list[str]:
    """The entities below field `name` (the model's `relation`) that its selections ask for,
    as `select_related` paths: `shipType { group { category { name } } }` asks for
    `ship_type__group` and `ship_type__group__category`."""
    paths = [relation]
    for child in _children(fields, name):
        if child.name in NESTED_ENTITIES:
            paths += _related_paths([child], child.name, f"{relation}__{child.name}")
    return paths


def _killmail_queryset(fields: list[SelectedField]) -> QuerySet:
    """Killmails with the victim and the pages of attackers and items that `fields` (the
    selection of one killmail) ask for, with the entities they name (groups, regions...
    only when asked for), in a few queries, never one per row."""
    queryset = Killmail.objects.select_related(
        *_related_paths(fields, "solarSystem", "solar_system")
    )
    attackers = _ranges(fields, "attackers")
    if attackers is not None or any(field.name == "victim" for field in fields):
        wanted = Q(is_victim=True)
        if attackers is not None:
            wanted |= Q(is_victim=False) & attackers
        selected = _children(fields, "victim", "attackers")
        participants = Participant.objects.select_related(
            "character",
            "corporation",
            "alliance",
            "faction",
            *_related_paths(selected, "shipType", "ship_type"),
            *_related_paths(selected, "weaponType", "weapon_type"),
        ).filter(wanted)
        queryset = queryset.prefetch_related(Prefetch("participants", queryset=participants))
    items = _ranges(fields, "items")
    item_types = _related_paths(_children(fields, "items"), "itemType", "item_type")
    # Never all of a killmail's rows: unprefetched, a resolver reads an empty list.
    queryset = queryset.prefetch_related(
        Prefetch("items", queryset=Item.objects.select_related(*item_types).filter(items))
        if items is not None
        else Prefetch("items", queryset=Item.objects.none())
    )
    return queryset


def _counts(fields: list[SelectedField], ids: list[int]) -> dict[int, dict[str, int]]:
    """Attackers and items of each killmail, when the selection asks for them."""
    names = {field.name for field in fields}
    counts: dict[int, dict[str, int]] = {killmail_id: {} for killmail_id in ids}
    wanted = (
        ("attackers", "attackerCount", Participant.objects.filter(is_victim=False)),
        ("items", "itemCount", Item.objects.all()),
    )
    for key, field_name, rows in wanted:
        if field_name in names:
            per_killmail = rows.filter(killmail_id__in=ids).values("killmail_id")
            for row in per_killmail.annotate(n=Count("*")):
                counts[row["killmail_id"]][key] = row["n"]
    return counts


def _killmail_types(fields: list[SelectedField], rows: list[Killmail]) -> list[KillmailType]:
    counts = _counts(fields, [row.killmail_id for row in rows])
    return [KillmailType(_row=row, _counts=counts[row.killmail_id]) for row in rows]


def _selection_of(info: Info, *path: str) -> list[SelectedField]:
    """The fields selected under the current field, down `path` (`items` of a page)."""
    fields = [child for field in info.selected_fields for child in _fields(field.selections)]
    for name in path:
        fields = [
            child for field in fields if field.name == name for child in _fields(field.selections)
        ]
    return fields


# -- the mutation ----------------------------------------------------------------------------


# The targets zKillboard lists, as GraphQL names them: CHARACTER, ..., SHIP_TYPE, REGION.
BackfillTargetType = strawberry.enum(
    Enum("BackfillTargetType", {t.name: t.value for t in lifecycle.TARGET_TYPES}),
    description="What a backfill covers: the killmails zKillboard lists for this target.",
)


@strawberry.input
class BackfillOptionsInput:
    from_date: str | None = strawberry.field(default=None, description="YYYY-MM-DD")
    to_date: str | None = strawberry.field(
        default=None, description="YYYY-MM-DD: only killmails on or before this day."
    )
    max_pages: int | None = None
    limit: int | None = strawberry.field(default=None, description="Killmails a page, 1..200.")
    skip_existing: bool = True
    update: bool = strawberry.field(
        default=False,
        description="Read only what arrived since the target's last complete backfill (late "
        "arrivals included) and the months it left short; takes no fromDate or toDate.",
    )


@strawberry.input
class StartKillmailBackfillInput:
    character_id: BigInt
    options: BackfillOptionsInput | None = None


@strawberry.input
class StartBackfillInput:
    target_type: BackfillTargetType
    target_id: BigInt
    options: BackfillOptionsInput | None = None


@strawberry.type
class StartKillmailBackfillPayload:
    success: bool
    message: str
    queued_at: datetime | None = None
    job: BackfillJobType | None = None


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[CanViewJobs], metadata=paged(MAX_JOBS_PAGE))
    def backfill_jobs(
        self, status: str | None = None, offset: int = 0, limit: int = DEFAULT_PAGE
    ) -> BackfillJobPage:
        """Backfill jobs, newest first, optionally of one status."""
        size, start = _page_size(limit, MAX_JOBS_PAGE), _offset(offset)
        jobs = BackfillJob.objects.order_by("-created_at", "-pk")
        if status:
            jobs = jobs.filter(status=status)
        rows = list(jobs[start : start + size + 1])
        return BackfillJobPage(
            items=[BackfillJobType.from_model(job) for job in rows[:size]],
            total_count=jobs.count(),
            offset=start,
            has_next_page=len(rows) > size,
        )

    @strawberry.field(permission_classes=[CanViewJobs])
    def backfill_job(self, id: strawberry.ID) -> BackfillJobType | None:
        """One job by id."""
        job_id = positive_id(str(id))
        job = BackfillJob.objects.filter(pk=job_id).first() if job_id else None
        return BackfillJobType.from_model(job) if job else None

    @strawberry.field(permission_classes=[CanViewKillmails], metadata=paged(MAX_KILLMAILS_PAGE))
    def killmails(
        self,
        info: Info,
        character_id: BigInt | None = None,
        ship_type_id: BigInt | None = None,
        ship_group_id: BigInt | None = None,
        ship_category_id: BigInt | None = None,
        constellation_id: BigInt | None = None,
        region_id: BigInt | None = None,
        offset: int = 0,
        limit: int = DEFAULT_PAGE,
    ) -> KillmailPage:
        """Killmails newest first; with characterId, those the character took part in; with
        shipTypeId, those whose victim flew that ship; with shipGroupId or shipCategoryId,
        those whose victim flew a ship of that group ("ship class") or category; with
        constellationId or regionId, those that happened there. The filters combine, and go
        by the stored entities: an id not stored matches nothing."""
        size, start = _page_size(limit, MAX_KILLMAILS_PAGE), _offset(offset)
        fields = _selection_of(info, "items")
        queryset = _killmail_queryset(fields)
        for entity_id, scope in (
            (character_id, KillmailQuerySet.involving_character),
            (ship_type_id, KillmailQuerySet.of_ship_type),
            (ship_group_id, KillmailQuerySet.of_ship_group),
            (ship_category_id, KillmailQuerySet.of_ship_category),
            (constellation_id, KillmailQuerySet.in_constellation),
            (region_id, KillmailQuerySet.in_region),
        ):
            if entity_id is not None:
                queryset = scope(queryset, entity_id)
        rows = list(queryset.order_by("-killmail_time", "-killmail_id")[start : start + size + 1])
        return KillmailPage(
            items=_killmail_types(fields, rows[:size]),
            offset=start,
            has_next_page=len(rows) > size,
        )

    @strawberry.field(permission_classes=[CanViewKillmails])
    def killmail(self, info: Info, killmail_id: BigInt) -> KillmailType | None:
        """One killmail by id."""
        fields = _selection_of(info)
        row = _killmail_queryset(fields).filter(killmail_id=killmail_id).first()
        return _killmail_types(fields, [row])[0] if row else None


def _start_backfill(
    target_type: str, target_id: int, options: BackfillOptionsInput | None
) -> StartKillmailBackfillPayload:
    """Create a backfill job and queue it; bad input answers success false and creates none."""
    options = options or BackfillOptionsInput()
    try:
        job = lifecycle.create_job(
            target_id,
            target_type=target_type,
            from_date=options.from_date,
            to_date=options.to_date,
            max_pages=options.max_pages,
            limit=ZKB_PAGE_SIZE if options.limit is None else options.limit,
            skip_existing=options.skip_existing,
            update=options.update,
        )
    except lifecycle.InvalidBackfill as exc:
        return StartKillmailBackfillPayload(success=False, message=str(exc))
    tasks.start_job(job.pk, background=True)
    job.refresh_from_db()
    return StartKillmailBackfillPayload(
        success=True,
        message=f"Backfill #{job.pk} of {job.target} queued.",
        queued_at=job.created_at,
        job=BackfillJobType.from_model(job),
    )


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[CanStartBackfill])
    def start_killmail_backfill(
        self, input: StartKillmailBackfillInput
    ) -> StartKillmailBackfillPayload:
        """Create a backfill job for a character and queue it (the original system's shape)."""
        return _start_backfill(BackfillJob.TargetType.CHARACTER, input.character_id, input.options)

    @strawberry.mutation(permission_classes=[CanStartBackfill])
    def start_backfill(self, input: StartBackfillInput) -> StartKillmailBackfillPayload:
        """Create a backfill job for a character, corporation, alliance, ship type, solar
        system or region, and queue it."""
        return _start_backfill(input.target_type.value, input.target_id, input.options)


schema = strawberry.Schema(
    query=Query,
    mutation=Mutation,
    extensions=[
        RequestLimits,
        lambda: QueryDepthLimiter(max_depth=MAX_QUERY_DEPTH),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
    ],
    config=StrawberryConfig(scalar_map={BigInt: BIG_INT}),
)
