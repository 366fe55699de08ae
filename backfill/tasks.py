"""Backfill tasks: a chain of page tasks per job, and body tasks fanned out from each page.

Tasks are thin: they take ids, call a service, and queue the next step after the commit.
Every task is idempotent (leases and claims in the database decide who does what), so they
ack late and are redelivered when a worker dies.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import deque
from typing import Any, NoReturn

from celery import Task, shared_task
from celery.exceptions import Retry
from django.conf import settings
from django.db import transaction

from backfill import services
from backfill.models import BackfillJob
from killboard import ratelimit
from killboard.db import DATABASE_ERRORS, drop_lost_connection
from upstream import clients
from upstream.errors import Blocked, RateLimited, Rejected, Unavailable

logger = logging.getLogger(__name__)

# Backoff of transient errors: BASE * 2**retries seconds, at most CAP, with +-50% jitter.
BACKOFF_BASE = 2.0
BACKOFF_CAP = 300.0
# Task ids kept on a job for the admin's link to Flower.
TASK_IDS_KEPT = 20

# Waits a rate limit asks for cost the upstream nothing and always end: a task may wait this
# many times (429/420 in a row from a busy upstream) before the job fails.
RATE_LIMITED_MAX_RETRIES = 30

TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "max_retries": 12,
}


_local = threading.local()


def enqueue(task: Task, *args: Any) -> None:
    """Queue `task` once the current transaction commits.

    In-process (no broker), queued tasks run one after another from the outermost call
    instead of nested, so a chain of hundreds of pages never deepens the stack.
    """
    transaction.on_commit(lambda: _send(task, args))


def _send(task: Task, args: tuple[Any, ...]) -> None:
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        result = task.apply_async(args)
        if task is fetch_page:
            services.record_task_id(args[0], result.id, TASK_IDS_KEPT)
        return
    queue = getattr(_local, "queue", None)
    if queue is not None:
        queue.append((task, args, {}, 0))
        return
    _local.queue = deque([(task, args, {}, 0)])
    try:
        while _local.queue:
            queued, queued_args, kwargs, retries = _local.queue.popleft()
            try:
                queued.apply(queued_args, kwargs, retries=retries, throw=True)
            except Retry as retry:
                # In-process, `_retry` has already waited; run it again, counting the retry.
                _local.queue.append((queued, queued_args, retry.sig.kwargs, retries + 1))
    finally:
        _local.queue = None


def _retry(task: Task, job_id: int, exc: Exception, countdown: float | None = None) -> None:
    """Retry the task; fail the job once the retries run out.

    With a `countdown` (a rate limit, a lease: the wait is known) after that long, at most
    RATE_LIMITED_MAX_RETRIES times. Without one (a transient error) with exponential backoff
    and jitter over the failures in a row, counted apart so that waits do not inflate it.
    """
    failures = _failures(task)
    if countdown is None:
        if failures >= task.max_retries:
            services.fail_job(job_id, f"gave up after {failures} failures: {exc}")
            return
        countdown = _backoff(failures)
        failures += 1
    elif task.request.retries >= RATE_LIMITED_MAX_RETRIES + task.max_retries:
        services.fail_job(job_id, f"gave up after {task.request.retries} retries: {exc}")
        return
    services.touch(job_id)
    _raise_retry(task, exc, countdown, failures)


def _failures(task: Task) -> int:
    return (task.request.kwargs or {}).get("failures", 0)


def _raise_retry(task: Task, exc: Exception, countdown: float, failures: int) -> NoReturn:
    """Retry the task in `countdown` seconds (in-process: after sleeping them), always raising."""
    if task.request.is_eager:
        time.sleep(countdown)
    raise task.retry(
        exc=exc,
        countdown=countdown,
        max_retries=RATE_LIMITED_MAX_RETRIES + task.max_retries,
        kwargs={**(task.request.kwargs or {}), "failures": failures},
    )


def _backoff(retries: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_BASE * 2**retries) * random.uniform(0.5, 1.5)


def _retry_database(task: Task, job_id: int, exc: Exception, *, page_claimed: bool) -> None:
    """Retry a step that lost its database connection, on a fresh one, with backoff.

    Nothing here may need the database to succeed: it may still be away. Then the page's
    lease simply runs out; and once retries are exhausted the error ends the task, and the
    watchdog resumes the job.
    """
    logger.warning("Job %s: %s lost the database (%s); retrying", job_id, task.name, exc)
    drop_lost_connection()
    if page_claimed:
        with contextlib.suppress(*DATABASE_ERRORS):  # still away: the lease runs out instead
            services.release_page(job_id)
    failures = _failures(task)
    if failures >= task.max_retries:
        raise exc
    _raise_retry(task, exc, _backoff(failures), failures + 1)


@shared_task(**TASK_OPTIONS)
def fetch_page(self: Task, job_id: int, cursor: str, failures: int = 0) -> None:
    """Fetch and store the job's page at `cursor`, then queue its bodies and the next page."""
    claimed = False
    try:
        claimed = services.claim_page(job_id, cursor)
        _fetch_page(self, job_id, cursor, claimed)
    except DATABASE_ERRORS as exc:
        _retry_database(self, job_id, exc, page_claimed=claimed)


def _fetch_page(self: Task, job_id: int, cursor: str, claimed: bool) -> None:
    if not claimed:
        lease_left = services.page_lease_left(job_id, cursor)
        if lease_left is not None:
            # Another worker holds the page; if it died, its lease runs out and we take over.
            _retry(self, job_id, RuntimeError("page leased"), lease_left + random.uniform(1, 5))
        return
    try:
        outcome = services.process_page(
            job_id, cursor, clients.zkillboard_client(ratelimit), clients.esi_client(ratelimit)
        )
    except (Rejected, Blocked) as exc:
        services.fail_job(job_id, str(exc))
        return
    except RateLimited as exc:
        services.release_page(job_id)
        _retry(self, job_id, exc, exc.retry_after + random.uniform(0, 1))
        return
    except Unavailable as exc:
        services.release_page(job_id)
        services.note_error(job_id, str(exc))
        _retry(self, job_id, exc)
        return
    for start in range(0, len(outcome.pending_ids), services.BODY_CHUNK):
        enqueue(fetch_bodies, job_id, outcome.pending_ids[start : start + services.BODY_CHUNK])
    if outcome.next_cursor:
        enqueue(fetch_page, job_id, outcome.next_cursor)
    else:
        services.finish_if_done(job_id)


def _requeue(task: Task, job_id: int, killmail_ids: list[int]) -> None:
    """Queue the rest of a chunk as a new task after the first backoff step."""
    countdown = _backoff(0)
    services.touch(job_id)
    if task.request.is_eager:
        time.sleep(countdown)
        enqueue(fetch_bodies, job_id, killmail_ids)
    else:
        fetch_bodies.apply_async((job_id, killmail_ids), countdown=countdown)


@shared_task(**TASK_OPTIONS)
def fetch_bodies(self: Task, job_id: int, killmail_ids: list[int], failures: int = 0) -> None:
    """Fetch pending killmail bodies from ESI and store them."""
    try:
        _fetch_bodies(self, job_id, killmail_ids)
    except DATABASE_ERRORS as exc:
        _retry_database(self, job_id, exc, page_claimed=False)


def _fetch_bodies(self: Task, job_id: int, killmail_ids: list[int]) -> None:
    try:
        outcome = services.fetch_bodies(job_id, killmail_ids, clients.esi_client(ratelimit))
    except RateLimited as exc:
        _retry(self, job_id, exc, exc.retry_after + random.uniform(0, 1))
        return
    except Unavailable as exc:
        left = services.pending_among(job_id, killmail_ids)
        if left and len(left) < len(killmail_ids):
            # Bodies were stored before the error: the rest go on as a fresh task, so the
            # backoff grows with failures in a row, not with every attempt of a long chunk.
            services.note_error(job_id, str(exc))
            _requeue(self, job_id, left)
            return
        if _failures(self) < self.max_retries:
            services.note_error(job_id, str(exc))
            _retry(self, job_id, exc)
            return
        services.give_up_bodies(job_id, killmail_ids, f"ESI kept failing: {exc}")
        services.finish_if_done(job_id)
        return
    if outcome.come_back_in:
        # Another worker claimed some of these; if it died, its claim runs out and we go on.
        countdown = outcome.come_back_in + random.uniform(1, 5)
        _retry(self, job_id, RuntimeError("bodies claimed"), countdown)
        return
    services.finish_if_done(job_id)


@shared_task(bind=True, acks_late=True)
def resume_stalled_jobs(self: Task) -> int:
    """Watchdog (Celery beat): restart the steps of running jobs that stopped moving."""
    jobs = services.stalled_jobs()
    for job in jobs:
        logger.warning("Job %s made no progress for a while; resuming it", job.pk)
        services.touch(job.pk)
        queue_job_steps(job.pk)
    return len(jobs)


def queue_job_steps(job_id: int) -> None:
    """Queue what a job needs next: its page at the cursor and its pending bodies."""
    job = BackfillJob.objects.get(pk=job_id)
    if not job.paging_done:
        enqueue(fetch_page, job.pk, job.cursor)
    for chunk in services.pending_chunks(job.pk):
        enqueue(fetch_bodies, job.pk, chunk)
    if job.paging_done:
        transaction.on_commit(lambda: services.finish_if_done(job_id))


def start_job(job_id: int) -> None:
    """Start (or resume) a queued job: runs in-process without a broker, else on workers."""
    queue_job_steps(job_id)
