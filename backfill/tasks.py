"""Backfill tasks: a plan task per job, then a chain of page tasks, body tasks fanned out
from each page, and day tasks for the day dumps (a history job's days, a scoped job's dense
months). Celery beat runs the watchdog of stalled jobs and the coverage ledger's check.

Without a broker the tasks run in-process: in the foreground for the commands, and on the
process's background runner (config.background) for web requests, which only hand off
(`start_job(..., background=True)`): one job at a time, shared with enrichment's background
work. The runner runs the watchdog too, at beat's cadence: a job left behind by a process
that died (a restarted web server) stands still, and once it has for
BACKFILL_STALLED_AFTER_SECONDS the runner takes it up again.

Tasks are thin: they take ids, call a service, and queue the next step after the commit.
Every task is idempotent (leases and claims in the database decide who does what), so they
ack late and are redelivered when a worker dies. Errors follow the one retry policy
(config.retries); what it will not retry is recorded on the job.
"""

from __future__ import annotations

import logging
import random
from datetime import date, timedelta
from functools import partial
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backfill import coverage, days, lifecycle, planning, services
from backfill.models import BackfillJob
from config import retries
from config.background import runner
from config.retries import RetryingTask
from killboard import ratelimit
from upstream import clients
from upstream.errors import Unavailable

logger = logging.getLogger(__name__)

# Task ids kept on a job for the admin's link to Flower.
TASK_IDS_KEPT = 20
# Seconds between two runs of the watchdog on the background runner: beat's schedule of it.
WATCHDOG_SECONDS = settings.CELERY_BEAT_SCHEDULE["backfill-resume-stalled-jobs"][
    "schedule"
].total_seconds()

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


def _before_retry(
    job_id: int, exc: Exception, *, page_claimed: bool = False, day: date | None = None
) -> None:
    """Give the page or the day back, so the retry need not wait for the lease, and note the
    retry. A hook, so a lost connection is dropped first and this runs on a fresh one."""
    if page_claimed:
        lifecycle.release_page(job_id)
    if day is not None:
        days.release_day(job_id, day)
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
        retries.handle(
            self,
            exc,
            before_retry=partial(_before_retry, job_id, exc, day=the_day if claimed else None),
            record=partial(lifecycle.fail_job, job_id),
        )


@shared_task(**TASK_OPTIONS)
def fetch_bodies(
    self: RetryingTask,
    job_id: int,
    killmail_ids: list[int],
    failures: int = 0,
    claims: list[str] | None = None,
) -> None:
    """Fetch pending killmail bodies from ESI and store them. `claims`: the claim tokens the
    attempt before this one may have left on them, which this one takes over."""
    claim = services.Claim.after(claims)
    try:
        _fetch_bodies(job_id, killmail_ids, claim)
    except retries.ERRORS as exc:
        retries.handle(
            self,
            exc,
            before_retry=partial(_before_retry, job_id, exc),
            record=partial(_give_up_bodies, job_id, killmail_ids, exc),
            carry={"claims": claim.tokens},
        )


def _fetch_bodies(job_id: int, killmail_ids: list[int], claim: services.Claim) -> None:
    try:
        outcome = services.fetch_bodies(job_id, killmail_ids, clients.esi_client(ratelimit), claim)
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
    return len(resume_stalled())


def resume_stalled(*, include_queued: bool = False) -> list[int]:
    """Restart the steps of running jobs (and queued ones, with `include_queued`) that made
    no progress for BACKFILL_STALLED_AFTER_SECONDS and hold no live lease; their ids.

    Beat's watchdog leaves queued jobs to their message in the broker; without a broker
    nothing else would ever start a queued job whose process died.
    """
    statuses = [BackfillJob.Status.RUNNING]
    if include_queued:
        statuses.append(BackfillJob.Status.QUEUED)
    now = timezone.now()
    candidates = (
        BackfillJob.objects.lease_free(now)
        .filter(status__in=statuses, updated_at__lt=_stalled_since(now))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    resumed = []
    for job_id in candidates:
        if _take_stalled(job_id):
            logger.warning("Job %s made no progress for a while; resuming it", job_id)
            queue_job_steps(job_id)
            resumed.append(job_id)
    return resumed


def _stalled_since(now: Any) -> Any:
    return now - timedelta(seconds=settings.BACKFILL_STALLED_AFTER_SECONDS)


def _take_stalled(job_id: int) -> bool:
    """Note progress on an active job that stood still with no live lease, if it still does:
    the row count decides who resumes it, so two watchdogs (or a watchdog and Resume) never
    both do."""
    now = timezone.now()
    return bool(
        BackfillJob.objects.active()
        .lease_free(now)
        .filter(pk=job_id, updated_at__lt=_stalled_since(now))
        .update(updated_at=now)
    )


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


def start_job(job_id: int, *, background: bool = False) -> None:
    """Start (or resume) a queued job on the workers; without a broker, in this process: now,
    or with `background` (a web request, which must answer at once) on the background
    runner's thread once the current transaction commits."""
    if background and settings.CELERY_TASK_ALWAYS_EAGER:
        runner.submit(partial(_run_in_background, job_id), f"job {job_id}")
        return
    queue_job_steps(job_id)


def resume_job(job_id: int, *, retry_failed: bool = False, background: bool = False) -> bool:
    """Put a job back to work (the admin's Resume and Retry failed); False if there is
    nothing to do. An ended job is reopened at its cursor (`lifecycle.reopen_job`); an active
    one is restarted only if it stopped moving (the watchdog's criterion), since its steps
    are already queued or running otherwise."""
    if lifecycle.reopen_job(job_id, retry_failed=retry_failed) or (
        not retry_failed and _take_stalled(job_id)
    ):
        start_job(job_id, background=background)
        return True
    return False


def _run_in_background(job_id: int) -> None:
    """The background runner's work: the job's steps to their end; a bug ends the job visibly."""
    try:
        queue_job_steps(job_id)
    except Exception as exc:
        lifecycle.fail_job(job_id, f"{type(exc).__name__}: {exc}")
        raise


def _watch_in_background() -> None:
    resume_stalled(include_queued=True)


# At import, so before anything starts the runner: Django's start imports this module
# (backfill's admin does), and config.wsgi starts the runner through it.
runner.set_periodic(_watch_in_background, "the watchdog", WATCHDOG_SECONDS)


def start_embedded_runner() -> None:
    """Without a broker, start this process's background runner now (a web server at its
    start), so its watchdog takes up the jobs a restarted process left behind before anyone
    asks."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        runner.start()
