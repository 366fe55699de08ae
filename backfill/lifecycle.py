"""The life of a backfill job: created queued, run page by page, ended once, reopened on demand.

Options are validated once, here, by `create_job` (on killboard's input parsers), so the CLI,
the admin and GraphQL refuse the same input with the same one-line `InvalidBackfill`.

Every change of a job's state that workers can race on is one conditional UPDATE whose row
count decides, never a read then a write: a worker owns the page at the job's cursor through
a lease on the job row (`claim_page`; a killed worker's lease simply runs out), the cursor
moves only from the page that was claimed (`move_cursor`, compare-and-set), and a job ends
only while active (`finish_if_done`, `fail_job`, `cancel_job`). So redelivered or duplicated
messages do no work twice, and a job cannot end twice or come back from an end by accident.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Exists, OuterRef, Q, Value, When
from django.utils import timezone

from backfill import coverage, days, updates
from backfill.models import BackfillDay, BackfillJob, PendingKillmail
from backfill.paging import ZKB_PAGE_SIZE
from killboard.inputs import InvalidInput, parse_date, parse_positive_id

logger = logging.getLogger(__name__)

# The most max_pages a job can hold (BackfillJob.max_pages is a 32-bit column).
MAX_PAGES = 2**31 - 1


class InvalidBackfill(InvalidInput):
    """Options a backfill cannot run with; `str()` is one clear line for the user."""


# The targets zKillboard lists (a history job has none: its days come from the day dumps).
TARGET_TYPES = [t for t in BackfillJob.TargetType if t != BackfillJob.TargetType.HISTORY]


def parse_dates(from_date: Any, to_date: Any) -> tuple[date | None, date | None]:
    """The job's from and to dates (YYYY-MM-DD, inclusive); `InvalidBackfill` if bad."""
    try:
        start = parse_date(from_date, "from date")
        end = parse_date(to_date, "to date")
    except InvalidInput as exc:
        raise InvalidBackfill(str(exc)) from None
    today = timezone.now().date()
    if start and start > today:
        raise InvalidBackfill(f"from date {start} is in the future")
    if start and end and end < start:
        raise InvalidBackfill(f"to date {end} is before from date {start}")
    return start, end


def create_job(target_id: Any, **options: Any) -> BackfillJob:
    """Validate the options and create a queued job (not started); `InvalidBackfill` if bad."""
    job = build_job(target_id, **options)
    job.save()
    return job


def build_job(
    target_id: Any,
    *,
    target_type: str = BackfillJob.TargetType.CHARACTER,
    from_date: Any = None,
    to_date: Any = None,
    max_pages: int | None = None,
    limit: int = ZKB_PAGE_SIZE,
    skip_existing: bool = True,
    update: bool = False,
) -> BackfillJob:
    """A queued job with these options, not saved (an estimate needs no row); `InvalidBackfill`
    if an option is bad. `update`: read only what arrived since the target's last complete
    run (`backfill.updates`)."""
    if target_type not in TARGET_TYPES:
        raise InvalidBackfill(f"target type must be one of {', '.join(TARGET_TYPES)}")
    try:
        target = parse_positive_id(target_id, f"{target_type.replace('_', ' ')} id")
    except InvalidInput as exc:
        raise InvalidBackfill(str(exc)) from None
    start, end = parse_dates(from_date, to_date)
    if max_pages is not None and (type(max_pages) is not int or max_pages < 1):
        raise InvalidBackfill(f"max pages must be a whole number of at least 1, got {max_pages!r}")
    if max_pages is not None and max_pages > MAX_PAGES:
        raise InvalidBackfill(f"max pages must be at most {MAX_PAGES}, got {max_pages!r}")
    if type(limit) is not int or not 1 <= limit <= ZKB_PAGE_SIZE:
        raise InvalidBackfill(f"limit must be a whole number from 1 to 200, got {limit!r}")
    return BackfillJob(
        target_type=target_type,
        target_id=target,
        from_date=start,
        to_date=end,
        max_pages=max_pages,
        limit=limit,
        skip_existing=skip_existing,
        update_since=_update_since(target_type, target, start, end) if update else None,
    )


def _update_since(
    target_type: str, target_id: int, start: date | None, end: date | None
) -> datetime:
    """Where an update of the target reads back to; `InvalidBackfill` when it cannot run."""
    if start or end:
        raise InvalidBackfill(
            "--update reads what arrived since the last complete run: "
            "it takes no --from-date or --to-date"
        )
    run = updates.last_complete_run(target_type, target_id)
    if run is None:
        what = f"{target_type.replace('_', ' ')} {target_id}"
        raise InvalidBackfill(f"no complete backfill of {what} yet: run it without --update")
    return updates.since(run)


def create_history_job(from_date: Any, to_date: Any = None) -> BackfillJob:
    """Validate the dates and create a queued history job (not started)."""
    job = build_history_job(from_date, to_date)
    job.save()
    return job


def build_history_job(from_date: Any, to_date: Any = None) -> BackfillJob:
    """A queued, unsaved job for every killmail of the UTC days from_date..to_date (yesterday
    at the latest: the current day is not dumped yet); `InvalidBackfill` if a date is bad."""
    start, end = parse_dates(from_date, to_date)
    if start is None:
        raise InvalidBackfill("a history backfill needs a from date")
    last_dumped = days.yesterday()
    if start > last_dumped:
        raise InvalidBackfill(f"from date {start}: R2Z2 has dumped days up to {last_dumped}")
    return BackfillJob(
        target_type=BackfillJob.TargetType.HISTORY, target_id=0, from_date=start, to_date=end
    )


def claim_page(job_id: int, cursor: str) -> bool:
    """Take the lease on the job's page at `cursor`; False if the page is not ours to do."""
    now = timezone.now()
    return bool(
        BackfillJob.objects.active()
        .lease_free(now)
        .filter(pk=job_id, cursor=cursor, paging_done=False)
        .update(
            lease_until=now + timedelta(seconds=settings.BACKFILL_LEASE_SECONDS),
            status=BackfillJob.Status.RUNNING,
            updated_at=now,
        )
    )


def page_lease_left(job_id: int, cursor: str) -> float | None:
    """Seconds left on another worker's lease of this page; None if the page is not pending."""
    job = BackfillJob.objects.active().filter(pk=job_id, cursor=cursor, paging_done=False).first()
    if job is None:
        return None
    if job.lease_until is None:
        return 0.0
    return max(0.0, (job.lease_until - timezone.now()).total_seconds())


def release_page(job_id: int) -> None:
    """Give the page back, e.g. before a retry, so the retry need not wait for the lease."""
    BackfillJob.objects.filter(pk=job_id).update(lease_until=None)


def mark_started(job: BackfillJob) -> None:
    """Note when the job's first page was taken up (once, whoever comes first)."""
    if job.started_at is None:
        BackfillJob.objects.filter(pk=job.pk, started_at=None).update(started_at=timezone.now())


def move_cursor(
    job_id: int,
    cursor: str,
    next_cursor: str | None,
    boundary_id: int | None,
    walk_start_guessed: bool = False,
) -> bool:
    """Move the job from the page at `cursor` to `next_cursor` (None: paging is done) and
    give the lease back; False if the job is no longer active or no longer at `cursor`."""
    return bool(
        BackfillJob.objects.active()
        .filter(pk=job_id, cursor=cursor)
        .update(
            cursor=next_cursor or cursor,
            paging_done=next_cursor is None,
            boundary_id=boundary_id,
            walk_start_guessed=walk_start_guessed,
            lease_until=None,
            updated_at=timezone.now(),
        )
    )


def confirm_walk_start(job_id: int) -> None:
    """The month walk's first month is not older than page 100's last killmail: go on."""
    BackfillJob.objects.filter(pk=job_id).update(walk_start_guessed=False)


def touch(job_id: int) -> None:
    """Note progress (a retry scheduled), so the watchdog leaves the job alone."""
    BackfillJob.objects.filter(pk=job_id).update(updated_at=timezone.now())


def note_error(job_id: int, error: str) -> None:
    """Record a transient error on the job, which goes on."""
    BackfillJob.objects.filter(pk=job_id).update(last_error=error, updated_at=timezone.now())


def record_task_id(job_id: int, task_id: str, kept: int) -> None:
    """Remember a queued page task's id on the job (the latest `kept` of them)."""
    with transaction.atomic():
        job = BackfillJob.objects.select_for_update().only("task_ids").get(pk=job_id)
        BackfillJob.objects.filter(pk=job_id).update(task_ids=[*job.task_ids, task_id][-kept:])


def finish_if_done(job_id: int) -> bool:
    """End the job once paging is done and no day or body is pending; True if this call
    ended it.

    It ends succeeded only when no killmail failed or was rejected, else partial. One
    conditional UPDATE decides both, on the counters as the row holds them, so workers
    finishing at once cannot end it twice or report a success that is not one.
    """
    outcome = Case(
        When(Q(failed__gt=0) | Q(rejected__gt=0), then=Value(BackfillJob.Status.PARTIAL)),
        default=Value(BackfillJob.Status.SUCCEEDED),
    )
    ended = bool(
        BackfillJob.objects.active()
        .filter(
            ~Exists(PendingKillmail.objects.filter(job_id=OuterRef("pk"))),
            ~Exists(BackfillDay.objects.filter(job_id=OuterRef("pk"), done_at=None)),
            pk=job_id,
            paging_done=True,
        )
        .update(status=outcome, finished_at=timezone.now(), lease_until=None)
    )
    if ended:
        # A history job's days are measured again now that ESI has given what it could.
        coverage.record_coverage(
            list(
                BackfillDay.objects.filter(
                    job_id=job_id, job__target_type=BackfillJob.TargetType.HISTORY
                ).values_list("day", "count")
            )
        )
        coverage.record_target_months(BackfillJob.objects.get(pk=job_id))
    return ended


def fail_job(job_id: int, error: str) -> None:
    """Stop the job with a clear error (permanent upstream error, retries exhausted)."""
    logger.error("Job %s failed: %s", job_id, error, extra={"job_id": job_id})
    BackfillJob.objects.active().filter(pk=job_id).update(
        status=BackfillJob.Status.FAILED,
        last_error=error,
        finished_at=timezone.now(),
        lease_until=None,
    )


def cancel_job(job_id: int) -> bool:
    """Cancel a queued or running job; its tasks stop at their next step."""
    return bool(
        BackfillJob.objects.active()
        .filter(pk=job_id)
        .update(status=BackfillJob.Status.CANCELLED, finished_at=timezone.now(), lease_until=None)
    )


def reopen_job(job_id: int, *, retry_failed: bool = False) -> bool:
    """Queue a job again from where it stands; False if there is nothing to do.

    A cancelled or failed job resumes at its cursor with its pending bodies. With
    `retry_failed`, the killmails it could not store become pending again (any status). A
    finished job (succeeded or partial) is reopened only when there are failures to retry.
    """
    with transaction.atomic():
        job = BackfillJob.objects.select_for_update().get(pk=job_id)
        retried = _failures_to_pending(job) if retry_failed else 0
        if job.is_active:
            return retried > 0
        if job.status in BackfillJob.FINISHED and not retried:
            return False
        BackfillJob.objects.filter(pk=job_id).update(
            status=BackfillJob.Status.QUEUED, finished_at=None, last_error="", lease_until=None
        )
    return True


def _failures_to_pending(job: BackfillJob) -> int:
    """Make the job's failed killmails (those with a hash) pending again; return how many."""
    failures = list(job.failures.exclude(killmail_hash=""))
    PendingKillmail.objects.bulk_create(
        [
            PendingKillmail(
                job=job,
                killmail_id=f.killmail_id,
                killmail_hash=f.killmail_hash,
                # A failure may have no zkb; a pending body needs one: its hash at least.
                zkb=f.zkb or {"hash": f.killmail_hash},
            )
            for f in failures
        ],
        ignore_conflicts=True,
    )
    job.failures.filter(pk__in=[f.pk for f in failures]).delete()
    job.add_counts(failed=-len(failures))
    return len(failures)
