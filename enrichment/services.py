"""Name and detail resolution for the entities killmails reference, as plain functions.

Tasks and the `enrich` command call these; tests call them directly. No function here calls
ESI inside a transaction: the shared limiter must commit its slot reservations for other
processes to see them, so rows are written in short transactions between calls.

Every kind is served by the same code: what differs (table, detail route, kept fields) is
read from its entry in `killboard.entities.ENTITY_KINDS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from enrichment.models import QueuedRun
from killboard import ratelimit
from killboard.entities import BY_KIND, ENTITY_KINDS, EntityKind, as_text
from killboard.models import EnrichmentStatus, Entity
from upstream import clients
from upstream.esi import NAMES_MAX_IDS, Detail, EsiClient, EsiNotFound

logger = logging.getLogger(__name__)

# A queued run older than this is taken as lost (a purged queue) and may be queued again.
QUEUED_RUN_STALE_AFTER = timedelta(minutes=15)
WRITE_BATCH = 500  # rows per UPDATE statement of bulk_update

NAME_FIELDS = ["name", "name_retry_at"]
DETAIL_STATE_FIELDS = (
    "name",
    "name_retry_at",
    "not_found",
    "details_updated_at",
    "etag",
    "expires_at",
)
_name = as_text(255)


@dataclass
class NameResult:
    """What one name resolution did."""

    resolved: int = 0
    calls: int = 0
    unresolvable: list[int] = field(default_factory=list)
    # Ids named by this run, by kind: their details are due next.
    named: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for humans."""
        return (
            f"{self.resolved} names resolved in {self.calls} calls, "
            f"{len(self.unresolvable)} unresolvable"
        )


@dataclass
class DetailResult:
    """What one detail batch did."""

    updated: int = 0  # 200: fields written
    unchanged: int = 0  # 304: the stored ETag still holds
    not_found: int = 0  # 404: marked not_found
    fresh: int = 0  # skipped: still within Expires
    unknown: int = 0  # skipped: no such row, or already not_found

    def summary(self) -> str:
        """One line for humans."""
        return (
            f"{self.updated} updated, {self.unchanged} unchanged, {self.not_found} not found, "
            f"{self.fresh} fresh, {self.unknown} skipped"
        )


# -- names -----------------------------------------------------------------------------------


def pending_names(limit: int | None = None) -> dict[int, list[str]]:
    """Ids whose name is due (never tried, or retry time past), with the kinds holding them."""
    due = Q(name_retry_at__isnull=True) | Q(name_retry_at__lte=timezone.now())
    owners: dict[int, list[str]] = {}
    for entry in ENTITY_KINDS:
        kind, model = entry.kind, entry.model
        rows = model.objects.filter(due, name="", not_found=False).values_list("id", flat=True)
        for entity_id in rows:
            owners.setdefault(entity_id, []).append(kind)
    if limit is not None and len(owners) > limit:
        owners = {entity_id: owners[entity_id] for entity_id in sorted(owners)[:limit]}
    return owners


NamedCallback = Callable[[str, list[int]], None]


def resolve_names(
    limit: int | None = None,
    client: EsiClient | None = None,
    on_named: NamedCallback | None = None,
) -> NameResult:
    """Name every entity whose name is due, with POST /universe/names/ in chunks of 1000.

    A chunk answering 404 holds at least one id ESI cannot resolve (yet): it is halved until
    each such id stands alone, and that id gets a retry time while the others get names.
    Names are committed after every call, so an interrupted run keeps what it learned, and
    `on_named(kind, ids)` is told of each committed write (to queue the details next).
    """
    client = client or clients.esi_client(ratelimit)
    owners = pending_names(limit)
    ids = sorted(owners)
    result = NameResult()
    for start in range(0, len(ids), NAMES_MAX_IDS):
        _resolve_chunk(client, ids[start : start + NAMES_MAX_IDS], owners, result, on_named)
    if ids:
        logger.info("Names: %s", result.summary())
    return result


def _resolve_chunk(
    client: EsiClient,
    ids: list[int],
    owners: Mapping[int, list[str]],
    result: NameResult,
    on_named: NamedCallback | None,
) -> None:
    result.calls += 1
    try:
        answers = client.names(ids)
    except EsiNotFound:
        if len(ids) == 1:
            _mark_unresolvable(ids, owners, result)
            return
        middle = len(ids) // 2
        _resolve_chunk(client, ids[:middle], owners, result, on_named)
        _resolve_chunk(client, ids[middle:], owners, result, on_named)
        return
    asked = set(ids)
    names = {answer.id: answer.name for answer in answers if answer.id in asked and answer.name}
    for kind, kind_ids in _save_names(names, owners, result).items():
        if on_named is not None:
            on_named(kind, kind_ids)
    missing = [entity_id for entity_id in ids if entity_id not in names]
    if missing:
        _mark_unresolvable(missing, owners, result)


def _by_kind(ids: Iterable[int], owners: Mapping[int, list[str]]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for entity_id in ids:
        for kind in owners[entity_id]:
            grouped.setdefault(kind, []).append(entity_id)
    return grouped


def _save_names(
    names: dict[int, str], owners: Mapping[int, list[str]], result: NameResult
) -> dict[str, list[int]]:
    grouped = _by_kind(sorted(names), owners)
    with transaction.atomic():
        for kind, ids in grouped.items():
            model = BY_KIND[kind].model
            rows = [model(id=entity_id, name=names[entity_id][:255]) for entity_id in ids]
            model.objects.bulk_update(rows, NAME_FIELDS, batch_size=WRITE_BATCH)
    for kind, ids in grouped.items():
        result.named.setdefault(kind, []).extend(ids)
    result.resolved += len(names)
    return grouped


def _mark_unresolvable(ids: list[int], owners: Mapping[int, list[str]], result: NameResult) -> None:
    retry_at = timezone.now() + timedelta(hours=settings.NAME_RETRY_HOURS)
    with transaction.atomic():
        for kind, kind_ids in _by_kind(ids, owners).items():
            BY_KIND[kind].model.objects.filter(id__in=kind_ids).update(name_retry_at=retry_at)
    result.unresolvable.extend(ids)
    logger.info("ESI cannot name ids %s yet; retrying after %s", ids, retry_at)


# -- details ---------------------------------------------------------------------------------


def _is_fresh(entity: Entity, now: datetime) -> bool:
    """Whether ESI would still answer from the same cache: within Expires, or the max age."""
    if entity.details_updated_at is None:
        return False
    if entity.expires_at is not None:
        return entity.expires_at > now
    return entity.details_updated_at > now - settings.ENRICHMENT_MAX_AGE


def enrich_details(kind: str, ids: Sequence[int], client: EsiClient | None = None) -> DetailResult:
    """Fetch the details of stored entities of one kind, with If-None-Match when known.

    Entities still within their Expires are skipped; a 304 only moves the freshness window;
    a 404 marks the entity not_found. Rows are written once at the end of the batch, and also
    when a call fails midway, so a retry does not fetch again what this run learned.
    """
    entry = BY_KIND[kind]
    if not entry.has_details:
        raise ValueError(f"{kind} has no detail route")
    model = entry.model
    client = client or clients.esi_client(ratelimit)
    wanted = set(ids)
    entities = list(model.objects.filter(id__in=wanted, not_found=False).order_by("id"))
    result = DetailResult(unknown=len(wanted) - len(entities))
    changed: list[Entity] = []
    try:
        for entity in entities:
            now = timezone.now()
            if _is_fresh(entity, now):
                result.fresh += 1
                continue
            try:
                detail = client.detail(
                    entry.path(entity.id), entry.detail_group, etag=entity.etag or None
                )
            except EsiNotFound:
                logger.info("ESI knows no %s %s; marked not found", kind, entity.id)
                entity.not_found = True
                entity.details_updated_at = now
                result.not_found += 1
                changed.append(entity)
                continue
            _apply(entity, detail, entry, now)
            if detail.status == 304:
                result.unchanged += 1
            else:
                result.updated += 1
            changed.append(entity)
    finally:
        if changed:
            field_names = [*DETAIL_STATE_FIELDS, *entry.detail_fields]
            with transaction.atomic():
                model.objects.bulk_update(changed, field_names, batch_size=WRITE_BATCH)
    logger.info(
        "Details of %s %s..%s: %s",
        kind,
        min(wanted, default=None),
        max(wanted, default=None),
        result.summary(),
    )
    return result


def _apply(entity: Entity, detail: Detail, entry: EntityKind, now: datetime) -> None:
    entity.details_updated_at = now
    entity.expires_at = detail.expires
    entity.etag = (detail.etag or "")[:128]
    if detail.body is None:
        return
    name = _name(detail.body.get("name"))
    if name:
        entity.name = name
        entity.name_retry_at = None
    for key, value in entry.detail_values(detail.body).items():
        setattr(entity, key, value)


def _detail_candidates(kind: str, cutoff: datetime | None, limit: int) -> list[int]:
    """Named entities never detailed, or (with a cutoff) detailed before it; oldest first."""
    model = BY_KIND[kind].model
    due = Q(details_updated_at__isnull=True)
    if cutoff is not None:
        due |= Q(details_updated_at__lt=cutoff)
    rows = (
        model.objects.filter(due, not_found=False)
        .exclude(name="")
        .order_by(F("details_updated_at").asc(nulls_first=True), "id")
        .values_list("id", flat=True)
    )
    return list(rows[:limit])


def stale_entities(kind: str, older_than: timedelta, limit: int) -> list[int]:
    """Ids of one kind whose details are missing or older than `older_than`, oldest first."""
    return _detail_candidates(kind, timezone.now() - older_than, limit)


def undetailed_entities(kind: str, limit: int) -> list[int]:
    """Ids of named entities of one kind whose details were never fetched."""
    return _detail_candidates(kind, None, limit)


# -- visibility ------------------------------------------------------------------------------


def enrichment_counts() -> dict[str, dict[str, int]]:
    """Per kind: entities with a name, waiting for one, and that ESI could not name.

    Unresolvable means ESI answered 404 for the id (names or details): the statuses not
    found and unresolvable of `killboard.models.EnrichmentStatus` together; those with a
    retry time are tried again once it has passed.
    """
    counts = {}
    for entry in ENTITY_KINDS:
        by_status = entry.model.objects.count_by_enrichment_status()
        counts[entry.kind] = {
            "resolved": by_status[EnrichmentStatus.RESOLVED],
            "pending": by_status[EnrichmentStatus.PENDING],
            "unresolvable": (
                by_status[EnrichmentStatus.UNRESOLVABLE] + by_status[EnrichmentStatus.NOT_FOUND]
            ),
        }
    return counts


def format_counts(counts: Mapping[str, Mapping[str, int]]) -> str:
    """One line: `character 120/3/1` per kind (resolved/pending/unresolvable)."""
    parts = [
        f"{kind} {c['resolved']}/{c['pending']}/{c['unresolvable']}" for kind, c in counts.items()
    ]
    return "names resolved/pending/unresolvable: " + ", ".join(parts)


# -- queueing once ---------------------------------------------------------------------------


def claim_queued_run(name: str) -> bool:
    """Mark a run of `name` as queued; False if one is queued already and not started.

    One conditional UPDATE, so of many processes racing exactly one wins.
    """
    now = timezone.now()
    QueuedRun.objects.bulk_create([QueuedRun(name=name)], ignore_conflicts=True)
    free = Q(queued_at__isnull=True) | Q(queued_at__lt=now - QUEUED_RUN_STALE_AFTER)
    return QueuedRun.objects.filter(free, name=name).update(queued_at=now) == 1


def release_queued_run(name: str) -> None:
    """The queued run of `name` has started (or could not be queued): the next may queue."""
    QueuedRun.objects.filter(name=name).update(queued_at=None)
