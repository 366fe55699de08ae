"""Name, affiliation and detail resolution for the entities killmails reference.

Tasks and the `enrich` command call these plain functions; tests call them directly. No
function here calls ESI inside a transaction: the shared limiter must commit its slot
reservations for other processes to see them, so rows are written in short transactions
between calls (and, for details, once a batch's concurrent calls are answered).

Where each field comes from:
- names: POST /universe/names/, a thousand ids a call, for every kind whose registry entry
  is `named`; inventory groups and categories are named by their detail routes;
- a pilot's corporation, alliance and faction: POST /characters/affiliation/, a thousand
  pilots a call (`resolve_affiliations`);
- details: the kind's detail route, up to ESI_CONCURRENCY at once (`enrich_details`): after
  naming for every kind but characters, whose details (security status, birthday) are
  fetched only where something shows them (`ensure_details`) and refreshed once fetched.

Every kind is served by the same code: what differs (table, detail route, kept fields, the
entities a detail references) is read from its entry in `killboard.entities.ENTITY_KINDS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from enrichment.models import QueuedRun
from killboard import ratelimit
from killboard.entities import BY_KIND, ENTITY_KINDS, NAMED, EntityKind, as_text
from killboard.models import Character, Entity
from upstream import clients
from upstream.esi import (
    AFFILIATION_MAX_IDS,
    NAMES_MAX_IDS,
    Detail,
    DetailCall,
    EsiClient,
    EsiNotFound,
)

logger = logging.getLogger(__name__)

# A queued run older than this is taken as lost (a purged queue) and may be queued again.
QUEUED_RUN_STALE_AFTER = timedelta(minutes=15)
WRITE_BATCH = 500  # rows per statement of `_write`

NAME_FIELDS = ["name", "name_retry_at"]
DETAIL_STATE_FIELDS = (
    "name",
    "name_retry_at",
    "not_found",
    "details_updated_at",
    "etag",
    "expires_at",
)
# An affiliation's fields -> the kind of entity each names (stored as they appear).
AFFILIATION_REFERENCES = {
    "corporation_id": "corporation",
    "alliance_id": "alliance",
    "faction_id": "faction",
}
AFFILIATION_FIELDS = [*AFFILIATION_REFERENCES, "affiliation_updated_at"]
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
class AffiliationResult:
    """What one affiliation scan did."""

    updated: int = 0  # pilots whose corporation, alliance and faction were written
    calls: int = 0
    unknown: list[int] = field(default_factory=list)  # ids ESI says are no pilot (yet)
    # Corporations, alliances and factions the answers named that were not stored, by kind.
    created: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for humans."""
        created = sum(len(ids) for ids in self.created.values())
        return (
            f"{self.updated} pilots affiliated in {self.calls} calls, {len(self.unknown)} "
            f"unknown, {created} new corporations, alliances and factions"
        )


@dataclass
class DetailResult:
    """What one detail batch did."""

    updated: int = 0  # 200: fields written
    unchanged: int = 0  # 304: the stored ETag still holds
    not_found: int = 0  # 404: marked not_found
    fresh: int = 0  # skipped: still within Expires
    unknown: int = 0  # skipped: no such row, or already not_found
    # Entities the details referenced that were not stored, by kind: their rows were made
    # here, and their names (named kinds) or details (the others) are due next.
    created: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for humans."""
        created = sum(len(ids) for ids in self.created.values())
        return (
            f"{self.updated} updated, {self.unchanged} unchanged, {self.not_found} not found, "
            f"{self.fresh} fresh, {self.unknown} skipped, {created} new referenced"
        )


def create_entities(kind: str, ids: Iterable[int]) -> list[int]:
    """Store nameless rows of `kind` for the ids not stored yet; the ids that were new.

    Two processes racing may both count an id as new: the worst that does is one more
    scan, which finds it done.
    """
    wanted = set(ids)
    if not wanted:
        return []
    model = BY_KIND[kind].model
    known = set(model.objects.filter(id__in=wanted).values_list("id", flat=True))
    new = sorted(wanted - known)
    model.objects.bulk_create(
        [model(id=entity_id) for entity_id in new], batch_size=WRITE_BATCH, ignore_conflicts=True
    )
    return new


# -- names -----------------------------------------------------------------------------------


def pending_names(limit: int | None = None) -> dict[int, list[str]]:
    """Ids whose name is due (never tried, or retry time past), with the kinds holding them."""
    due = Q(name_retry_at__isnull=True) | Q(name_retry_at__lte=timezone.now())
    owners: dict[int, list[str]] = {}
    for entry in NAMED:
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
            _write(model, rows, NAME_FIELDS)
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


# -- affiliations ----------------------------------------------------------------------------


def affiliation_due(limit: int | None = None, refresh: bool = False) -> list[int]:
    """Pilots whose affiliation is due, never asked first, then oldest first.

    Due: never fetched; ESI knew no such pilot and NAME_RETRY_HOURS have passed (brand-new
    pilots can be unknown for hours); with `refresh`, also older than ENRICHMENT_MAX_AGE.
    """
    now = timezone.now()
    due = Q(affiliation_updated_at__isnull=True) | Q(
        corporation_id__isnull=True,
        affiliation_updated_at__lte=now - timedelta(hours=settings.NAME_RETRY_HOURS),
    )
    if refresh:
        due |= Q(affiliation_updated_at__lt=now - settings.ENRICHMENT_MAX_AGE)
    rows = (
        Character.objects.filter(due, not_found=False)
        .order_by(F("affiliation_updated_at").asc(nulls_first=True), "id")
        .values_list("id", flat=True)
    )
    return list(rows if limit is None else rows[:limit])


def resolve_affiliations(
    limit: int | None = None, client: EsiClient | None = None, refresh: bool = False
) -> AffiliationResult:
    """Corporation, alliance and faction of every pilot whose affiliation is due.

    POST /characters/affiliation/ takes a thousand pilots a call. A chunk answering 404
    holds an id ESI knows as no pilot: it is halved until that id stands alone, which is
    marked as asked (`affiliation_updated_at` set; with no corporation known, it counts as
    failed and is asked again after NAME_RETRY_HOURS). Rows are committed after every
    call; corporations, alliances and factions the answers name that are not stored get
    rows, so the name scan and their details take them next.
    """
    client = client or clients.esi_client(ratelimit)
    ids = affiliation_due(limit, refresh)
    result = AffiliationResult()
    for start in range(0, len(ids), AFFILIATION_MAX_IDS):
        _affiliate_chunk(client, ids[start : start + AFFILIATION_MAX_IDS], result)
    if ids:
        logger.info("Affiliations: %s", result.summary())
    return result


def _affiliate_chunk(client: EsiClient, ids: list[int], result: AffiliationResult) -> None:
    result.calls += 1
    try:
        answers = client.affiliation(ids)
    except EsiNotFound:
        if len(ids) == 1:
            _save_affiliations(ids, {}, result)
            result.unknown.extend(ids)
            logger.info("ESI knows no pilot %s; its affiliation is asked again later", ids[0])
            return
        middle = len(ids) // 2
        _affiliate_chunk(client, ids[:middle], result)
        _affiliate_chunk(client, ids[middle:], result)
        return
    asked = set(ids)
    known = {answer.character_id: answer for answer in answers if answer.character_id in asked}
    rows = {
        character_id: {
            "corporation_id": answer.corporation_id,
            "alliance_id": answer.alliance_id,
            "faction_id": answer.faction_id,
        }
        for character_id, answer in known.items()
    }
    _save_affiliations(ids, rows, result)
    missing = [character_id for character_id in ids if character_id not in known]
    result.unknown.extend(missing)  # a 200 that left them out: failed like a lone 404


def _save_affiliations(
    ids: list[int], rows: Mapping[int, Mapping[str, int | None]], result: AffiliationResult
) -> None:
    """Write the chunk's answers; the ids without one are only marked as asked now (a pilot
    known before keeps what was known of it)."""
    now = timezone.now()
    characters = [
        Character(id=character_id, affiliation_updated_at=now, **values)
        for character_id, values in rows.items()
    ]
    unanswered = [character_id for character_id in ids if character_id not in rows]
    referenced: dict[str, set[int]] = {}
    for values in rows.values():
        for name, kind in AFFILIATION_REFERENCES.items():
            if values[name] is not None:
                referenced.setdefault(kind, set()).add(values[name])
    with transaction.atomic():
        _write(Character, characters, AFFILIATION_FIELDS)
        if unanswered:
            Character.objects.filter(id__in=unanswered).update(affiliation_updated_at=now)
        for kind, kind_ids in referenced.items():
            created = create_entities(kind, kind_ids)
            if created:
                result.created.setdefault(kind, []).extend(created)
    result.updated += len(rows)


# -- details ---------------------------------------------------------------------------------


def _is_fresh(entity: Entity, now: datetime) -> bool:
    """Whether ESI would still answer from the same cache: within Expires, or the max age."""
    if entity.details_updated_at is None:
        return False
    if entity.expires_at is not None:
        return entity.expires_at > now
    return entity.details_updated_at > now - settings.ENRICHMENT_MAX_AGE


def details_due(entity: Entity) -> bool:
    """Whether an entity shown on demand needs its details: never fetched, or older than
    ENRICHMENT_MAX_AGE (and ESI has not said it knows no such id)."""
    if entity.not_found:
        return False
    cutoff = timezone.now() - settings.ENRICHMENT_MAX_AGE
    return entity.details_updated_at is None or entity.details_updated_at < cutoff


def ensure_details(kind: str, ids: Sequence[int], client: EsiClient | None = None) -> DetailResult:
    """Details of entities something is about to show (a backfill target, an admin page).

    Rows not stored yet are made first (a backfill's target may have no killmail here
    yet); only details never fetched or older than ENRICHMENT_MAX_AGE are asked for.
    """
    entry = BY_KIND[kind]
    with transaction.atomic():
        create_entities(kind, ids)
    due = [entity.id for entity in entry.model.objects.filter(id__in=ids) if details_due(entity)]
    if not due:
        return DetailResult(fresh=len(set(ids)))
    return enrich_details(kind, due, client)


def enrich_details(kind: str, ids: Sequence[int], client: EsiClient | None = None) -> DetailResult:
    """Fetch the details of stored entities of one kind, concurrently, with If-None-Match.

    Entities still within their Expires are skipped; a 304 only moves the freshness window;
    a 404 marks the entity not_found. The calls run up to ESI_CONCURRENCY at once
    (`EsiClient.details`), while every database write stays in this thread: rows are written
    once at the end of the batch, and also when a call fails midway, so a retry does not
    fetch again what this run learned. Entities the details reference that are not stored
    (a type's group, a group's category, a system's constellation) get rows, returned in
    `created` for the caller to queue their names or details.
    """
    entry = BY_KIND[kind]
    if not entry.has_details:
        raise ValueError(f"{kind} has no detail route")
    client = client or clients.esi_client(ratelimit)
    wanted = set(ids)
    entities = list(entry.model.objects.filter(id__in=wanted, not_found=False).order_by("id"))
    result = DetailResult(unknown=len(wanted) - len(entities))
    now = timezone.now()
    due: dict[str, Entity] = {}
    for entity in entities:
        if _is_fresh(entity, now):
            result.fresh += 1
        else:
            due[entry.path(entity.id)] = entity
    calls = [
        DetailCall(path, entry.detail_group or "", etag=entity.etag or None)
        for path, entity in due.items()
    ]
    changed: list[Entity] = []
    try:
        for call, answer in client.details(calls):
            entity = due[call.path]
            if isinstance(answer, EsiNotFound):
                logger.info("ESI knows no %s %s; marked not found", kind, entity.id)
                entity.not_found = True
                entity.details_updated_at = timezone.now()
                result.not_found += 1
            else:
                _apply(entity, answer, entry, timezone.now())
                if answer.status == 304:
                    result.unchanged += 1
                else:
                    result.updated += 1
            changed.append(entity)
    finally:
        if changed:
            result.created = _save_details(entry, changed)
    logger.info(
        "Details of %s %s..%s: %s",
        kind,
        min(wanted, default=None),
        max(wanted, default=None),
        result.summary(),
    )
    return result


def _save_details(entry: EntityKind, changed: list[Entity]) -> dict[str, list[int]]:
    """Write a batch's details and the rows of the entities they reference; the new ones."""
    referenced: dict[str, set[int]] = {}
    for entity in changed:
        for attname, kind in entry.references.items():
            value = getattr(entity, attname)
            if value is not None:
                referenced.setdefault(kind, set()).add(value)
    created: dict[str, list[int]] = {}
    field_names = [*DETAIL_STATE_FIELDS, *entry.detail_fields]
    with transaction.atomic():
        _write(entry.model, changed, field_names)
        for kind, kind_ids in referenced.items():
            new = create_entities(kind, kind_ids)
            if new:
                created[kind] = new
    return created


def _write(model: type[Entity], rows: list[Entity], fields: Sequence[str]) -> None:
    """Write `fields` of stored rows: one INSERT ... ON CONFLICT (id) DO UPDATE of those
    fields per batch, far cheaper to build than bulk_update's CASE per field and row."""
    model.objects.bulk_create(
        rows,
        batch_size=WRITE_BATCH,
        update_conflicts=True,
        unique_fields=["id"],
        update_fields=list(fields),
    )


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


def _detail_queryset(kind: str, cutoff: datetime | None) -> QuerySet:
    """Entities of one kind whose details are due, oldest first.

    Never detailed (but for kinds detailed on demand) or, with a cutoff, detailed before
    it; of named kinds only those named already (the name scan comes first, and an id it
    cannot name would only answer 404 here too).
    """
    entry = BY_KIND[kind]
    never = Q(details_updated_at__isnull=True)
    older = Q(details_updated_at__lt=cutoff) if cutoff is not None else None
    if entry.details_on_demand:
        if older is None:
            return entry.model.objects.none()
        due = older
    else:
        due = never if older is None else never | older
    rows = entry.model.objects.filter(due, not_found=False)
    if entry.named:
        rows = rows.exclude(name="")
    return rows.order_by(F("details_updated_at").asc(nulls_first=True), "id")


def stale_entities(kind: str, older_than: timedelta, limit: int) -> list[int]:
    """Ids of one kind whose details are missing or older than `older_than`, oldest first.

    For a kind detailed on demand (characters): only those fetched before and now older.
    """
    rows = _detail_queryset(kind, timezone.now() - older_than).values_list("id", flat=True)
    return list(rows[:limit])


def undetailed_entities(kind: str, limit: int | None) -> list[int]:
    """Ids of entities of one kind whose details were never fetched and are due after naming
    (none for a kind detailed on demand); all of them for a limit of None."""
    rows = _detail_queryset(kind, None).values_list("id", flat=True)
    return list(rows if limit is None else rows[:limit])


def count_due_details(kind: str, refresh: bool = False) -> int:
    """How many entities of one kind `undetailed_entities` (with `refresh`, `stale_entities`
    at ENRICHMENT_MAX_AGE) would give: the total of a progress bar."""
    cutoff = timezone.now() - settings.ENRICHMENT_MAX_AGE if refresh else None
    return _detail_queryset(kind, cutoff).count()


# -- visibility ------------------------------------------------------------------------------


def _failed(entry: EntityKind) -> Q:
    """Rows ESI could not answer for: no name (yet), a 404 on the detail route, and for
    pilots an affiliation ESI did not give."""
    failed = Q(not_found=True) | Q(name="", name_retry_at__isnull=False)
    if entry.model is Character:
        failed |= Q(affiliation_updated_at__isnull=False, corporation_id__isnull=True)
    return failed


def _resolved(entry: EntityKind) -> Q:
    """Rows with nothing left to fetch: a name, the details that follow it, and for pilots
    their affiliation (their details are fetched on demand, and do not count)."""
    resolved = ~Q(name="")
    if entry.details_follow_names:
        resolved &= Q(details_updated_at__isnull=False)
    if entry.model is Character:
        resolved &= Q(affiliation_updated_at__isnull=False)
    return resolved


def enrichment_counts() -> dict[str, dict[str, int]]:
    """Per kind, in one query each: entities resolved, pending and failed.

    Resolved: named, with the details that follow naming (every detailed kind but pilots)
    and, for pilots, the affiliation. Failed: ESI could not answer for them: a name it
    cannot resolve yet (retried after NAME_RETRY_HOURS), a detail route answering 404, a
    pilot it knows no affiliation of (retried likewise). Pending: the rest, still due.
    """
    counts = {}
    for entry in ENTITY_KINDS:
        failed = _failed(entry)
        row = entry.model.objects.aggregate(
            total=Count("id"),
            resolved=Count("id", filter=_resolved(entry) & ~failed),
            failed=Count("id", filter=failed),
        )
        counts[entry.kind] = {
            "resolved": row["resolved"],
            "pending": row["total"] - row["resolved"] - row["failed"],
            "failed": row["failed"],
        }
    return counts


def format_counts(counts: Mapping[str, Mapping[str, int]]) -> str:
    """One line: `character 120/3/1` per kind (resolved/pending/failed)."""
    parts = [f"{kind} {c['resolved']}/{c['pending']}/{c['failed']}" for kind, c in counts.items()]
    return "enrichment resolved/pending/failed: " + ", ".join(parts)


def calls_by_group(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """ESI calls between two readings of `killboard.ratelimit.calls()`, by route group."""
    return {
        name.removeprefix("esi:"): after[name] - before.get(name, 0)
        for name in sorted(after)
        if after[name] > before.get(name, 0)
    }


def format_calls(calls: Mapping[str, int]) -> str:
    """One line: `calls by group: names 3, universe 120` (`none` for no call)."""
    parts = [f"{group} {count}" for group, count in calls.items()]
    return f"calls by group: {', '.join(parts) or 'none'} ({sum(calls.values())} in all)"


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
