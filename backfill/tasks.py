"""Backfill tasks: a plan task per job, then a chain of page tasks, body tasks fanned out
from each page, and day tasks for the day dumps (a history job's days, a scoped job's dense
months). Celery beat runs the watchdog of stalled jobs and the coverage ledger's check.

Tasks are thin: they take ids, call a service, and queue the next step after the commit.
Every task is idempotent (leases and claims in the database decide who does what), so they
ack late and are redelivered when a worker dies. Errors follow the one retry policy
(config.retries); what it will not retry is recorded on the job.
"""

from __future__ import annotations

import logging
import random
from datetime import date
from functools import partial
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import transaction

from backfill import coverage, days, lifecycle, planning, services
from backfill.models import BackfillJob
from config import retries
from config.retries import RetryingTask
from killboard import ratelimit
from upstream import clients
from upstream.errors import Unavailable

logger = logging.getLogger(__name__)

# Task ids kept on a job for the admin's link to Flower.
TASK_IDS_KEPT = 20

TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
}


def enqueue(task: Task, *args: Any) -> None:
    """Queue `task` once the current transaction commits (in-process: after the running task)."""
    transaction.on_commit(partial(_send, task, args))


def _send(task: Task, args: tuple[Any, ...]) -> None:
    result = task.apply_async(args)
    if task is fetch_page and not settings.CELERY_TASK_ALWAYS_EAGER:
        lifecycle.record_task_id(args[0], result.id, TASK_IDS_KEPT)


def _before_retry(job_id: int, exc: Exception, *, page_claimed: bool = False) -> None:
    """Give the page back, so the retry need not wait for the lease, and note the retry."""
    if page_claimed:
        lifecycle.release_page(job_id)
    if isinstance(exc, Unavailable):
        lifecycle.note_error(job_id, str(exc))
    lifecycle.touch(job_id)  # progress of a kind: the watchdog leaves the job alone


@shared_task(**TASK_OPTIONS)
def fetch_page(self: RetryingTask, job_id: int, cursor: str, failures: int = 0) -> None:
    """Fetch and store the job's page at `cursor`, then queue its bodies and the next page."""
    claimed = False
    try:
        claimed = lifecycle.claim_page(job_id, cursor)
        _fetch_page(job_id, cursor, claimed)
    except retries.ERRORS as exc:
        retries.handle(
            self,
            exc,
            before_retry=partial(_before_retry, job_id, exc, page_claimed=claimed),
            record=partial(lifecycle.fail_job, job_id),
        )


def _fetch_page(job_id: int, cursor: str, claimed: bool) -> None:
    if not claimed:
        lease_left = lifecycle.page_lease_left(job_id, cursor)
        if lease_left is not None:
            # Another worker holds the page; if it died, its lease runs out and we take over.
            raise retries.Busy(lease_left + random.uniform(1, 5), "page leased")
        return
    outcome = services.process_page(
        job_id, cursor, clients.zkillboard_client(ratelimit), clients.esi_client(ratelimit)
    )
    for chunk in services.chunked(outcome.pending_ids):
        enqueue(fetch_bodies, job_id, chunk)
    for day in outcome.days:
        enqueue(fetch_day, job_id, day.isoformat())
    if outcome.next_cursor:
        enqueue(fetch_page, job_id, outcome.next_cursor)
    else:
        lifecycle.finish_if_done(job_id)


@shared_task(**TASK_OPTIONS)
def plan_job(self: RetryingTask, job_id: int, failures: int = 0) -> None:
    """Make the job's plan (one zKillboard or R2Z2 request), then queue its first steps."""
    try:
        job = planning.plan_job(
            job_id, clients.zkillboard_client(ratelimit), clients.r2z2_client(ratelimit)
        )
        lifecycle.mark_started(job)
        queue_job_steps(job_id)
    except retries.ERRORS as exc:
        retries.handle(
            self,
            exc,
            before_retry=partial(_before_retry, job_id, exc),
            record=partial(lifecycle.fail_job, job_id),
        )


@shared_task(**TASK_OPTIONS)
def fetch_day(self: RetryingTask, job_id: int, day: str, failures: int = 0) -> None:
    """Do one UTC day of the job from R2Z2's day dumps; queue what it leaves to ESI."""
    the_day = date.fromisoformat(day)
    claimed = False
    try:
        claimed = days.claim_day(job_id, the_day)
        if not claimed:
            claim_left = days.claim_left(job_id, the_day)
            if claim_left is not None:
                # Another worker has the day; if it died, its claim runs out and we take over.
                raise retries.Busy(claim_left + random.uniform(1, 5), "day claimed")
            return
        outcome = days.process_day(job_id, the_day, clients.r2z2_client(ratelimit))
        for chunk in services.chunked(outcome.pending_ids):
            enqueue(fetch_bodies, job_id, chunk)
        if outcome.next_day:
            enqueue(fetch_day, job_id, outcome.next_day.isoformat())
        transaction.on_commit(lambda: lifecycle.finish_if_done(job_id))
    except retries.ERRORS as exc:
        if claimed:
            days.release_day(job_id, the_day)
        retries.handle(
            self,
            exc,
            before_retry=partial(_before_retry, job_id, exc),
            record=partial(lifecycle.fail_job, job_id),
        )


@shared_task(**TASK_OPTIONS)
def fetch_bodies(
    self: RetryingTask, job_id: int, killmail_ids: list[int], failures: int = 0
) -> None:
    """Fetch pending killmail bodies from ESI and store them."""
    try:
        _fetch_bodies(job_id, killmail_ids)
    except retries.ERRORS as exc:
        retries.handle(
            self,
            exc,
            before_retry=partial(_before_retry, job_id, exc),
            record=partial(_give_up_bodies, job_id, killmail_ids, exc),
        )


def _fetch_bodies(job_id: int, killmail_ids: list[int]) -> None:
    try:
        outcome = services.fetch_bodies(job_id, killmail_ids, clients.esi_client(ratelimit))
    except Unavailable as exc:
        left = services.pending_among(job_id, killmail_ids)
        if not left or len(left) == len(killmail_ids):
            raise
        # Bodies were stored before the error: the rest go on as a fresh task, so the
        # backoff grows with failures in a row, not with every attempt of a long chunk.
        lifecycle.note_error(job_id, str(exc))
        lifecycle.touch(job_id)
        fetch_bodies.apply_async((job_id, left), countdown=retries.backoff(0))
        return
    if outcome.come_back_in:
        # Another worker claimed some of these; if it died, its claim runs out and we go on.
        raise retries.Busy(outcome.come_back_in + random.uniform(1, 5), "bodies claimed")
    lifecycle.finish_if_done(job_id)


def _give_up_bodies(job_id: int, killmail_ids: list[int], exc: Exception, reason: str) -> None:
    """ESI kept failing: the bodies become the job's failures, so it can end; else fail it."""
    if isinstance(exc, Unavailable):
        services.give_up_bodies(job_id, killmail_ids, f"ESI kept failing: {exc}")
        lifecycle.finish_if_done(job_id)
    else:
        lifecycle.fail_job(job_id, reason)


@shared_task(**TASK_OPTIONS)
def resume_stalled_jobs(self: RetryingTask) -> int:
    """Watchdog (Celery beat): restart the steps of running jobs that stopped moving."""
    jobs = lifecycle.stalled_jobs()
    for job in jobs:
        logger.warning("Job %s made no progress for a while; resuming it", job.pk)
        lifecycle.touch(job.pk)
        queue_job_steps(job.pk)
    return len(jobs)


@shared_task(**TASK_OPTIONS)
def check_coverage(self: RetryingTask, failures: int = 0) -> int:
    """Beat: compare the coverage ledger with totals.json, start the repairs of live gaps."""
    try:
        outcome = coverage.recheck(clients.r2z2_client(ratelimit))
    except retries.ERRORS as exc:
        retries.handle(self, exc, record=partial(logger.error, "Coverage check gave up: %s"))
        return 0
    for job_id in outcome.repair_jobs:
        start_job(job_id)
    return len(outcome.checked)


def queue_job_steps(job_id: int) -> None:
    """Queue what a job needs next: its plan, its page at the cursor, its days and its
    pending bodies."""
    job = BackfillJob.objects.get(pk=job_id)
    if not job.is_active:
        return  # cancelled or ended meanwhile: nothing more to do
    if job.needs_plan:
        enqueue(plan_job, job.pk)
        return
    if not job.paging_done:
        enqueue(fetch_page, job.pk, job.cursor)
    for day in days.days_to_queue(job):
        enqueue(fetch_day, job.pk, day.isoformat())
    if job.paging_done and not days.undone_days(job.pk):
        days.release_held(job.pk)  # a crash between the last day and the release
    for chunk in services.pending_chunks(job.pk):
        enqueue(fetch_bodies, job.pk, chunk)
    if job.paging_done:
        transaction.on_commit(lambda: lifecycle.finish_if_done(job_id))


def start_job(job_id: int) -> None:
    """Start (or resume) a queued job: runs in-process without a broker, else on workers."""
    queue_job_steps(job_id)
