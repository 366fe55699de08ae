"""Celery tasks of enrichment: thin wrappers that call `enrichment.services` and queue on.

Queues: names on `esi_character_info_queue` (config/settings.py CELERY_TASK_ROUTES); one
detail task, `enrich_details(kind, ids)`, for every kind, sent to the queue of the kind's
entry in `killboard.entities` (`send_details`; a retry stays on that queue). Every task is
idempotent (it works from what the database says is due), so all run with acks_late. Errors
follow the one retry policy (config.retries): transient ESI failures and a lost database
connection retry with backoff and jitter, a rate limit when ESI says; permanent errors are
written on the entity (retry time, not_found) by the services, never retried. The `failures`
argument of the tasks that call ESI is the policy's count of transient failures in a row:
callers leave it out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any, TypeVar

from celery import shared_task
from celery.result import AsyncResult
from django.conf import settings
from django.db import transaction

from config import retries
from config.retries import RetryingTask
from enrichment import services
from killboard.entities import BY_KIND, DETAILED

logger = logging.getLogger(__name__)

TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    # In-process, someone waits at a terminal: give up after a few short tries (names and
    # details stay due, and `manage.py enrich` takes them later).
    "max_retries_in_process": 2,
}
DETAIL_BATCH = 25  # ids per detail task: short tasks leave worker slots to the backfill
MAX_IDS_PER_TASK = 200  # a detail task given more queues the rest as further tasks
REFRESH_BATCH = 1000  # ids per kind queued by one refresh run (it runs hourly)
RESOLVE_NAMES_RUN = "enrichment.resolve_names"

T = TypeVar("T")


def _call(task: RetryingTask, service: Callable[[], T]) -> T:
    """Run a service; after an error the policy retries the task, or the error ends it."""
    try:
        return service()
    except retries.ERRORS as exc:
        retries.handle(task, exc)  # nothing to record here: the services did
        raise


@shared_task(**TASK_OPTIONS)
def resolve_names(self: RetryingTask, details: bool = True, failures: int = 0) -> dict[str, int]:
    """Name every entity whose name is due; then queue the details of those just named."""
    services.release_queued_run(RESOLVE_NAMES_RUN)
    on_named = _queue_detail_batches if details else None
    result = _call(self, partial(services.resolve_names, on_named=on_named))
    return {
        "resolved": result.resolved,
        "calls": result.calls,
        "unresolvable": len(result.unresolvable),
    }


@shared_task(**TASK_OPTIONS)
def enrich_details(
    self: RetryingTask, kind: str, ids: list[int], failures: int = 0
) -> dict[str, int]:
    """Fetch the details of entities of one kind (the fields its registry entry keeps)."""
    if len(ids) > MAX_IDS_PER_TASK:
        # Bound the work of one run: the rest goes out as tasks of its own, side by side.
        _queue_detail_batches(kind, ids[MAX_IDS_PER_TASK:])
        ids = ids[:MAX_IDS_PER_TASK]
    return asdict(_call(self, partial(services.enrich_details, kind, ids)))


def send_details(kind: str, ids: list[int]) -> AsyncResult:
    """Send one detail task now, on its kind's queue."""
    return enrich_details.apply_async((kind, ids), queue=BY_KIND[kind].queue)


@shared_task(**TASK_OPTIONS)
def refresh_stale(self: RetryingTask) -> dict[str, int]:
    """Periodic: queue details older than ENRICHMENT_MAX_AGE (oldest first) and due names."""
    queued = {}
    for entry in DETAILED:
        ids = services.stale_entities(entry.kind, settings.ENRICHMENT_MAX_AGE, REFRESH_BATCH)
        queue_details({entry.kind: ids})
        queued[entry.kind] = len(ids)
    enqueue_enrichment()
    return queued


def _queue_detail_batches(kind: str, ids: Sequence[int]) -> None:
    if not BY_KIND[kind].has_details:  # solar systems and factions have a name only
        return
    for start in range(0, len(ids), DETAIL_BATCH):
        batch = list(ids[start : start + DETAIL_BATCH])
        transaction.on_commit(partial(send_details, kind, batch))


def queue_details(ids_by_kind: Mapping[str, Sequence[int]]) -> None:
    """Queue detail tasks of up to DETAIL_BATCH ids each, once the current transaction commits."""
    for kind, ids in ids_by_kind.items():
        _queue_detail_batches(kind, ids)


def enqueue_enrichment(details: bool | None = None) -> bool:
    """Queue a name scan unless one is queued and not started yet; True if this call queued it.

    Called after killmails are stored. `details` (queue the details of what gets named)
    defaults to on with a broker and off in-process, where the scan runs inline in the caller
    and thousands of detail calls would hold up a backfill; `manage.py enrich` fetches them.
    """
    if details is None:
        details = not settings.CELERY_TASK_ALWAYS_EAGER
    if not services.claim_queued_run(RESOLVE_NAMES_RUN):
        return False

    def send() -> None:
        try:
            resolve_names.delay(details=details)
        except BaseException:
            services.release_queued_run(RESOLVE_NAMES_RUN)
            raise

    transaction.on_commit(send)
    return True


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
