"""Celery tasks of enrichment: thin wrappers that call `enrichment.services` and queue on.

The chain after killmails are stored: the name scan (`resolve_names`) queues the details of
what it named (every kind whose details follow naming) and the affiliation scan
(`resolve_affiliations`), which gives pilots their corporation, alliance and faction and
stores those it meets for the first time, for the next name scan. A detail batch stores
the entities its answers reference (a type's group, a group's category, a system's
constellation, a constellation's region) and queues their details (kinds ESI's names route
does not know) or a name scan (the others). Pilots' own details are fetched only where
something shows them (`on_details_wanted`, `fetch_details_soon`) and refreshed once fetched.

Queues: the name and affiliation scans on `esi_character_info_queue` (config/settings.py
CELERY_TASK_ROUTES); one detail task, `enrich_details(kind, ids)`, for every kind, sent to
the queue of the kind's entry in `killboard.entities` (`send_details`; a retry stays on that
queue). Every task is idempotent (it works from what the database says is due), so all run
with acks_late. Errors follow the one retry policy (config.retries): transient ESI failures
and a lost database connection retry with backoff and jitter, a rate limit when ESI says;
permanent errors are written on the entity (retry time, not_found) by the services, never
retried. The `failures` argument of the tasks that call ESI is the policy's count of
transient failures in a row: callers leave it out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

from celery import shared_task
from celery.result import AsyncResult
from django.conf import settings
from django.db import transaction

from config import retries
from config.background import runner
from config.retries import RetryingTask
from enrichment import services
from killboard.entities import BY_KIND, DETAILED
from upstream.errors import UpstreamError

logger = logging.getLogger(__name__)

TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    # In-process, someone waits at a terminal: give up after a few short tries (names and
    # details stay due, and `manage.py enrich` takes them later).
    "max_retries_in_process": 2,
}
# Ids per detail task: the calls of one task run ESI_CONCURRENCY at once, and a task still
# ends in seconds, leaving worker slots to the backfill.
DETAIL_BATCH = 100
MAX_IDS_PER_TASK = 500  # a detail task given more queues the rest as further tasks
REFRESH_BATCH = 1000  # ids per kind queued by one refresh run (it runs hourly)
RESOLVE_NAMES_RUN = "enrichment.resolve_names"
RESOLVE_AFFILIATIONS_RUN = "enrichment.resolve_affiliations"

T = TypeVar("T")


def _call(task: RetryingTask, service: Callable[[], T]) -> T:
    """Run a service; after an error the policy retries the task, or the error ends it."""
    try:
        return service()
    except retries.ERRORS as exc:
        retries.handle(task, exc)  # nothing to record here: the services did
        raise


@shared_task(**TASK_OPTIONS)
def resolve_names(
    self: RetryingTask, details: bool = True, limit: int | None = None, failures: int = 0
) -> dict[str, int]:
    """Name every entity whose name is due (at most `limit`); with `details`, then queue the
    details of those just named and the affiliation scan."""
    services.release_queued_run(RESOLVE_NAMES_RUN)
    on_named = _queue_details_after_naming if details else None
    result = _call(self, partial(services.resolve_names, limit=limit, on_named=on_named))
    if details:
        enqueue_affiliations()
    return {
        "resolved": result.resolved,
        "calls": result.calls,
        "unresolvable": len(result.unresolvable),
    }


@shared_task(**TASK_OPTIONS)
def resolve_affiliations(
    self: RetryingTask,
    refresh: bool = False,
    limit: int | None = None,
    follow: bool = True,
    failures: int = 0,
) -> dict[str, int]:
    """Corporation, alliance and faction of the pilots whose affiliation is due (with
    `refresh`, also those older than ENRICHMENT_MAX_AGE); with `follow`, a name scan for the
    corporations, alliances and factions met for the first time."""
    services.release_queued_run(RESOLVE_AFFILIATIONS_RUN)
    result = _call(self, partial(services.resolve_affiliations, limit=limit, refresh=refresh))
    created = sum(len(ids) for ids in result.created.values())
    if follow and created:
        enqueue_enrichment(details=True)
    return {
        "updated": result.updated,
        "calls": result.calls,
        "unknown": len(result.unknown),
        "created": created,
    }


@shared_task(**TASK_OPTIONS)
def enrich_details(
    self: RetryingTask, kind: str, ids: list[int], follow: bool = True, failures: int = 0
) -> dict[str, Any]:
    """Fetch the details of entities of one kind (the fields its registry entry keeps); with
    `follow`, queue the names or details of the entities they brought."""
    if len(ids) > MAX_IDS_PER_TASK:
        # Bound the work of one run: the rest goes out as tasks of its own, side by side.
        _queue_detail_batches(kind, ids[MAX_IDS_PER_TASK:], follow=follow)
        ids = ids[:MAX_IDS_PER_TASK]
    result = _call(self, partial(services.enrich_details, kind, ids))
    if follow:
        follow_created(result.created)
    return {
        "updated": result.updated,
        "unchanged": result.unchanged,
        "not_found": result.not_found,
        "fresh": result.fresh,
        "unknown": result.unknown,
        "created": {created: len(new) for created, new in result.created.items()},
    }


def send_details(kind: str, ids: list[int], follow: bool = True) -> AsyncResult:
    """Send one detail task now, on its kind's queue."""
    return enrich_details.apply_async((kind, ids), {"follow": follow}, queue=BY_KIND[kind].queue)


def follow_created(created: Mapping[str, Sequence[int]]) -> None:
    """Queue what entities new to the store need: a name scan for the kinds ESI's names route
    names (it queues their details), the details of the others (their name comes with them)."""
    scan = False
    for kind, ids in created.items():
        if not ids:
            continue
        if BY_KIND[kind].named:
            scan = True
        else:
            _queue_detail_batches(kind, ids)
    if scan:
        enqueue_enrichment(details=True)


@shared_task(**TASK_OPTIONS)
def refresh_stale(self: RetryingTask) -> dict[str, int]:
    """Periodic: queue details older than ENRICHMENT_MAX_AGE (oldest first; pilots' only if
    fetched before), stale affiliations, and due names."""
    queued = {}
    for entry in DETAILED:
        ids = services.stale_entities(entry.kind, settings.ENRICHMENT_MAX_AGE, REFRESH_BATCH)
        queue_details({entry.kind: ids})
        queued[entry.kind] = len(ids)
    if services.affiliation_due(limit=1, refresh=True):
        transaction.on_commit(partial(resolve_affiliations.delay, refresh=True))
    enqueue_enrichment()
    return queued


def _queue_details_after_naming(kind: str, ids: list[int]) -> None:
    if BY_KIND[kind].details_follow_names:  # pilots' details wait for someone to show them
        _queue_detail_batches(kind, ids)


def _queue_detail_batches(kind: str, ids: Sequence[int], follow: bool = True) -> None:
    if not BY_KIND[kind].has_details:  # regions and factions have a name only
        return
    for start in range(0, len(ids), DETAIL_BATCH):
        batch = list(ids[start : start + DETAIL_BATCH])
        transaction.on_commit(partial(send_details, kind, batch, follow))


def queue_details(ids_by_kind: Mapping[str, Sequence[int]]) -> None:
    """Queue detail tasks of up to DETAIL_BATCH ids each, once the current transaction commits."""
    for kind, ids in ids_by_kind.items():
        _queue_detail_batches(kind, ids)


def _enqueue_once(run: str, task: Any, **kwargs: Any) -> bool:
    """Queue `task` on commit unless a run of it is queued and not started yet."""
    if not services.claim_queued_run(run):
        return False

    def send() -> None:
        try:
            task.delay(**kwargs)
        except BaseException:
            services.release_queued_run(run)
            raise

    transaction.on_commit(send)
    return True


def enqueue_enrichment(details: bool | None = None) -> bool:
    """Queue a name scan unless one is queued and not started yet; True if this call queued it.

    Called after killmails are stored. `details` (queue the details of what gets named, and
    the affiliation scan) defaults to on with a broker and off in-process, where the scan
    runs inline in the caller and thousands of calls would hold up a backfill; `manage.py
    enrich` fetches them.
    """
    if details is None:
        details = not settings.CELERY_TASK_ALWAYS_EAGER
    return _enqueue_once(RESOLVE_NAMES_RUN, resolve_names, details=details)


def enqueue_affiliations() -> bool:
    """Queue the affiliation scan if any pilot's affiliation is due and none is queued."""
    if not services.affiliation_due(limit=1):
        return False
    return _enqueue_once(RESOLVE_AFFILIATIONS_RUN, resolve_affiliations)


def fetch_details_soon(kind: str, ids: Sequence[int]) -> None:
    """Fetch these entities' details in the background, once the current transaction commits.

    For a web request, which must answer at once: with a broker a detail task on the kind's
    queue; without one (the embedded default) a piece of work for this process's background
    runner (config.background), the one thread of all its background work: SQLite has one
    writer. Nobody waits for it: if it fails, the runner logs it, the entities stay due and
    the next view asks again.
    """
    ids = list(ids)
    if settings.CELERY_TASK_ALWAYS_EAGER:
        runner.submit(partial(services.ensure_details, kind, ids), f"details of {kind} {ids}")
    else:
        transaction.on_commit(partial(send_details, kind, ids))


def on_details_wanted(sender: Any, kind: str, ids: Sequence[int], **kwargs: Any) -> None:
    """Receiver of `killboard.signals.entity_details_wanted`: fetch the details now.

    Sent by whoever is about to read them (a backfill plans its walk from the target's
    birthday or founding date). Best effort: with ESI unavailable the caller goes on
    without them.
    """
    try:
        services.ensure_details(kind, ids)
    except UpstreamError as exc:
        logger.warning("Details of %s %s not fetched: %s", kind, list(ids), exc)


def on_killmails_stored(sender: Any, killmail_ids: Sequence[int] = (), **kwargs: Any) -> None:
    """Receiver of `killboard.signals.killmails_stored`: name what the new killmails brought.

    In-process (no broker) it does nothing: there a scan after every batch would hold up
    the import or backfill that stored it, so `backfill_character` resolves names once at
    its end and `manage.py enrich` does it on demand.
    """
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return
    try:
        enqueue_enrichment()
    except Exception:
        # The batch is committed already; failing its sender (a backfill task) would only
        # redo it. Names stay due, and the next batch, refresh_stale or `enrich` take them.
        logger.exception("Could not start enrichment after killmails %s", killmail_ids[:5])
