"""Backfill services: create a job, walk its zKillboard pages, complete bodies from ESI.

Paging (zKillboard rules): pages 1..100 of the target's whole history, newest first, 200
killmails a page; when page 100 is full, the rest is walked month by month (`year/Y/month/M/`,
newest month first) listing only killmails older than the last one of page 100. A page with
fewer than 200 killmails ends its listing. `from_date` ends the walk at the first killmail
before it; `max_pages x limit` bounds the killmails listed.

Each page is processed in one transaction that also moves the job's cursor, so a crash costs
a retry of that page, never a killmail. Pages are owned through a lease on the job row and
pending bodies through claims on their rows (a conditional UPDATE whose row count decides),
so redelivered or duplicated messages do no work twice.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Exists, OuterRef, Q, Value, When
from django.utils import timezone

from backfill.models import (
    ZKB_MAX_PAGE,
    ZKB_PAGE_SIZE,
    BackfillJob,
    FailedKillmail,
    PendingKillmail,
)
from killboard.ingest import Rejection, ingest_killmails, quarantine, update_zkb
from killboard.models import Character, Killmail
from killboard.shapes import parse_time
from upstream.esi import EsiClient, EsiNotFound
from upstream.zkillboard import PageItem, ZkillboardClient

logger = logging.getLogger(__name__)

# Killmail bodies fetched from ESI by one task.
BODY_CHUNK = 50
# zKillboard's history starts here; a month walk never goes further back.
HISTORY_START = date(2007, 12, 1)
DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
# The most max_pages a job can hold (BackfillJob.max_pages is a 32-bit column).
MAX_PAGES = 2**31 - 1


class InvalidBackfill(ValueError):
    """Options a backfill cannot run with; `str()` is one clear line for the user."""


@dataclass(frozen=True)
class PageOutcome:
    """What processing a page did and what comes next."""

    next_cursor: str | None
    pending_ids: list[int]


@dataclass(frozen=True)
class BodiesOutcome:
    """What fetching a chunk of bodies left to do.

    `come_back_in`: seconds after which the caller must come back for bodies of the chunk
    still pending that it could not claim (another worker holds them, and may have died);
    0 when none is left.
    """

    come_back_in: float


def is_whole_number(text: str) -> bool:
    """Whether `text` is ASCII digits only (`str.isdigit()` also takes '١٢٣' and '²')."""
    return text.isascii() and text.isdigit()


def parse_positive_id(value: Any, what: str = "character id") -> int:
    """An EVE id from user input: a positive integer, or `InvalidBackfill`."""
    text = str(value).strip()
    if not is_whole_number(text) or not 0 < int(text) < 2**63:
        raise InvalidBackfill(f"{what} must be a positive whole number, got {value!r}")
    return int(text)


def parse_from_date(value: Any) -> date | None:
    """A YYYY-MM-DD date from user input (empty: none), or `InvalidBackfill`."""
    if value in (None, ""):
        return None
    if isinstance(value, date):
        return value
    text = str(value).strip()
    if DATE_PATTERN.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise InvalidBackfill(f"from date must be a real date like 2023-01-01, got {value!r}")


def create_job(
    target_id: Any,
    *,
    target_type: str = BackfillJob.TargetType.CHARACTER,
    from_date: Any = None,
    max_pages: int | None = None,
    limit: int = ZKB_PAGE_SIZE,
    skip_existing: bool = True,
) -> BackfillJob:
    """Validate the options and create a queued job (not started); `InvalidBackfill` if bad."""
    if target_type not in BackfillJob.TargetType.values:
        raise InvalidBackfill(f"target type must be one of {', '.join(BackfillJob.TargetType)}")
    target = parse_positive_id(target_id, f"{target_type} id")
    start = parse_from_date(from_date)
    if start and start > timezone.now().date():
        raise InvalidBackfill(f"from date {start} is in the future")
    if max_pages is not None and (type(max_pages) is not int or max_pages < 1):
        raise InvalidBackfill(f"max pages must be a whole number of at least 1, got {max_pages!r}")
    if max_pages is not None and max_pages > MAX_PAGES:
        raise InvalidBackfill(f"max pages must be at most {MAX_PAGES}, got {max_pages!r}")
    if type(limit) is not int or not 1 <= limit <= ZKB_PAGE_SIZE:
        raise InvalidBackfill(f"limit must be a whole number from 1 to 200, got {limit!r}")
    return BackfillJob.objects.create(
        target_type=target_type,
        target_id=target,
        from_date=start,
        max_pages=max_pages,
        limit=limit,
        skip_existing=skip_existing,
    )


def parse_cursor(cursor: str) -> tuple[int, int, int]:
    """(year, month, page) of a cursor; year and month are 0 for the whole history."""
    period, page = cursor.split("/")
    if period == "all":
        return 0, 0, int(page)
    year, month = period.split("-")
    return int(year), int(month), int(page)


def make_cursor(year: int, month: int, page: int) -> str:
    """The cursor of a page: `all/N` or `YYYY-MM/N`."""
    return f"all/{page}" if not year else f"{year:04d}-{month:02d}/{page}"


def _history_start(job: BackfillJob) -> date:
    """The first month the month walk must cover."""
    if job.from_date:
        return job.from_date.replace(day=1)
    if job.target_type == BackfillJob.TargetType.CHARACTER:
        birthday = (
            Character.objects.filter(id=job.target_id).values_list("birthday", flat=True).first()
        )
        if birthday:
            return birthday.date().replace(day=1)
    return HISTORY_START


def _next_cursor(
    job: BackfillJob, year: int, month: int, page: int, full: bool, oldest: datetime | None
) -> str | None:
    if full and page < ZKB_MAX_PAGE:
        return make_cursor(year, month, page + 1)
    if not year:
        if not full:
            return None
        # Page 100 is full: the rest of the history, month by month from the oldest seen.
        start = oldest or timezone.now()
        return make_cursor(start.year, start.month, 1)
    if full:
        logger.warning(
            "Job %s: month %s-%s has more than 20,000 killmails; zKillboard serves no more",
            job.pk,
            year,
            month,
        )
    previous = (date(year, month, 1) - timedelta(days=1)).replace(day=1)
    if previous < _history_start(job):
        return None
    return make_cursor(previous.year, previous.month, 1)


def claim_page(job_id: int, cursor: str) -> bool:
    """Take the lease on the job's page at `cursor`; False if the page is not ours to do."""
    now = timezone.now()
    return bool(
        BackfillJob.objects.filter(
            Q(lease_until__isnull=True) | Q(lease_until__lt=now),
            pk=job_id,
            cursor=cursor,
            paging_done=False,
            status__in=BackfillJob.ACTIVE,
        ).update(
            lease_until=now + timedelta(seconds=settings.BACKFILL_LEASE_SECONDS),
            status=BackfillJob.Status.RUNNING,
            updated_at=now,
        )
    )


def page_lease_left(job_id: int, cursor: str) -> float | None:
    """Seconds left on another worker's lease of this page; None if the page is not pending."""
    job = BackfillJob.objects.filter(
        pk=job_id, cursor=cursor, paging_done=False, status__in=BackfillJob.ACTIVE
    ).first()
    if job is None:
        return None
    if job.lease_until is None:
        return 0.0
    return max(0.0, (job.lease_until - timezone.now()).total_seconds())


def release_page(job_id: int) -> None:
    """Give the page back, e.g. before a retry, so the retry need not wait for the lease."""
    BackfillJob.objects.filter(pk=job_id).update(lease_until=None)


def _with_oldest_body(
    items: list[PageItem], esi: EsiClient
) -> tuple[list[PageItem], datetime | None]:
    """Make sure the page's oldest item has its body, to know where the page ends in time.

    Pages without bodies need one ESI call for it (the body is needed anyway); an item ESI
    does not know (422) passes the question to the item before it.
    """
    items = list(items)
    for index in range(len(items) - 1, -1, -1):
        item = items[index]
        if item.body is None:
            if not item.killmail_hash:
                continue
            try:
                body = esi.killmail(item.killmail_id, item.killmail_hash)
            except EsiNotFound:
                continue
            if _answered_for(body) != item.killmail_id:
                continue  # left pending: the body task rejects it with the reason
            items[index] = item = replace(item, body=body)
        time = _body_time(item.body)
        if time is not None:
            return items, time
    return items, None


def _answered_for(body: Any) -> Any:
    """The killmail id an ESI body says it is (compared with the id asked for)."""
    return body.get("killmail_id") if isinstance(body, dict) else None


def _body_time(body: Any) -> datetime | None:
    """A body's killmail_time, or None when it has none that parses (ingest rejects it)."""
    try:
        return parse_time(body["killmail_time"])
    except (KeyError, TypeError, ValueError):
        return None


def process_page(job_id: int, cursor: str, zkb: ZkillboardClient, esi: EsiClient) -> PageOutcome:
    """Fetch and store the page at `cursor` (the caller holds its lease); advance the cursor.

    Bodies on the page are stored now; killmails without one become pending rows for ESI.
    """
    job = BackfillJob.objects.get(pk=job_id)
    if job.started_at is None:
        BackfillJob.objects.filter(pk=job_id, started_at=None).update(started_at=timezone.now())
    year, month, page = parse_cursor(cursor)
    items = zkb.fetch_page(job.target_type, job.target_id, page, year, month)
    full = len(items) == ZKB_PAGE_SIZE
    if year and job.boundary_id:
        items = [item for item in items if item.killmail_id < job.boundary_id]

    done = False
    if job.max_killmails is not None and len(items) >= job.max_killmails - job.killmails_listed:
        items, done = items[: job.max_killmails - job.killmails_listed], True
    oldest = None
    boundary_id = job.boundary_id
    if items and (job.from_date or (not year and page == ZKB_MAX_PAGE and full)):
        items, oldest = _with_oldest_body(items, esi)
        if not year and page == ZKB_MAX_PAGE:
            boundary_id = items[-1].killmail_id
    if job.from_date and oldest and oldest.date() < job.from_date:
        done = True
    next_cursor = None if done else _next_cursor(job, year, month, page, full, oldest)

    with transaction.atomic():
        counts = _store_page(job, items, source=f"backfill #{job_id}, zKillboard page {cursor}")
        moved = BackfillJob.objects.filter(
            pk=job_id, cursor=cursor, status__in=BackfillJob.ACTIVE
        ).update(
            cursor=next_cursor or cursor,
            paging_done=next_cursor is None,
            boundary_id=boundary_id,
            lease_until=None,
            updated_at=timezone.now(),
        )
        if not moved:
            # Cancelled meanwhile, or someone else did this page: keep nothing of ours.
            transaction.set_rollback(True)
            return PageOutcome(None, [])
        job.add_counts(pages_fetched=1, killmails_listed=len(items), **counts)
    pending_ids = list(
        PendingKillmail.objects.filter(
            job_id=job_id, killmail_id__in=[i.killmail_id for i in items]
        )
        .order_by("-killmail_id")
        .values_list("killmail_id", flat=True)
    )
    logger.info("Job %s: page %s done, %s listed, next %s", job_id, cursor, len(items), next_cursor)
    return PageOutcome(next_cursor, pending_ids)


def _store_page(job: BackfillJob, items: list[PageItem], source: str) -> dict[str, int]:
    """Store a page's killmails (inside the page's transaction); return counter increments."""
    ids = [item.killmail_id for item in items]
    query = Killmail.objects.filter(killmail_id__in=ids)
    stored = dict(query.values_list("killmail_id", "killmail_hash"))  # id: hash, "" if no zkb
    # Bodies are immutable and never fetched twice; zkb values (prices) do change. All are
    # refreshed without skip-existing; with it, only killmails stored without a zkb (imported
    # from bodies alone) get the page's.
    refresh = {i for i, stored_hash in stored.items() if not (stored_hash and job.skip_existing)}
    if refresh:
        update_zkb({item.killmail_id: item.zkb for item in items if item.killmail_id in refresh})
    fresh = [item for item in items if item.killmail_id not in stored]
    with_body = [item for item in fresh if item.body is not None]
    older = _older_than_from_date(job, [(item.killmail_id, item.body) for item in with_body])
    with_body = [item for item in with_body if item.killmail_id not in older]
    result = ingest_killmails([item.record for item in with_body], source=source, job_id=job.pk)
    # Without a body and without a hash ESI would take, nothing can fetch it: a failure.
    unfetchable = [item for item in fresh if item.body is None and not item.killmail_hash]
    _record_failures(
        job,
        {
            item.killmail_id: f"zkb hash {item.zkb.get('hash')!r:.60} is not 40 hex digits"
            for item in unfetchable
        },
        {item.killmail_id: item for item in unfetchable},
    )
    PendingKillmail.objects.bulk_create(
        [
            PendingKillmail(
                job=job,
                killmail_id=item.killmail_id,
                killmail_hash=item.killmail_hash,
                zkb=item.zkb,
            )
            for item in fresh
            if item.body is None and item.killmail_hash
        ],
        ignore_conflicts=True,
    )
    return {
        "already_stored": len(stored) + result.existing,
        "bodies_from_page": len(with_body),
        "stored": result.new,
        "failed": len(unfetchable),
        "rejected": len(result.rejected),
        "skipped_older": len(older),
    }


def _older_than_from_date(job: BackfillJob, bodies: list[tuple[int, Any]]) -> set[int]:
    """Ids of the bodies older than the job's from_date: listed, but not stored."""
    if not job.from_date:
        return set()
    start = datetime.combine(job.from_date, datetime.min.time(), tzinfo=UTC)
    older = set()
    for killmail_id, body in bodies:
        time = _body_time(body)
        if time is not None and time < start:
            older.add(killmail_id)
    return older


def _record_failures(job: BackfillJob, reasons: dict[int, str], sources: dict[int, Any]) -> None:
    """Record killmails the job got no body for; `sources` (page items or pending rows) give
    their hash and zkb, so "retry failed" can fetch them again."""
    FailedKillmail.objects.bulk_create(
        [
            FailedKillmail(
                job=job,
                killmail_id=killmail_id,
                killmail_hash=getattr(sources.get(killmail_id), "killmail_hash", ""),
                zkb=getattr(sources.get(killmail_id), "zkb", None),
                reason=reason,
            )
            for killmail_id, reason in reasons.items()
        ],
        ignore_conflicts=True,
    )


def claim_pending(job_id: int, killmail_ids: Iterable[int]) -> list[PendingKillmail]:
    """Claim the pending bodies among `killmail_ids` that no live worker holds."""
    now = timezone.now()
    token = uuid.uuid4()
    PendingKillmail.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
        job_id=job_id,
        killmail_id__in=list(killmail_ids),
    ).update(claim=token, claimed_until=now + timedelta(seconds=settings.BACKFILL_LEASE_SECONDS))
    return list(PendingKillmail.objects.filter(claim=token).order_by("-killmail_id"))


def fetch_bodies(job_id: int, killmail_ids: list[int], esi: EsiClient) -> BodiesOutcome:
    """Fetch the pending bodies among `killmail_ids` from ESI and store them.

    Bodies fetched before a transient error are stored before the error propagates, so the
    retry fetches only the rest. A 422 (wrong id or hash) is recorded on the job. The
    outcome says when to come back for bodies other workers claimed.
    """
    job = BackfillJob.objects.get(pk=job_id)
    if not job.is_active:
        return BodiesOutcome(come_back_in=0.0)
    claimed = claim_pending(job_id, killmail_ids)
    fetched: list[tuple[PendingKillmail, dict[str, Any]]] = []
    missing: list[tuple[PendingKillmail, str]] = []
    try:
        for pending in claimed:
            try:
                fetched.append((pending, esi.killmail(pending.killmail_id, pending.killmail_hash)))
            except EsiNotFound as exc:
                missing.append((pending, f"ESI: {exc}"))
    finally:
        _store_bodies(job, fetched, missing)
        if claimed:
            # Give back what was not fetched, so a retry need not wait for the claim to expire.
            PendingKillmail.objects.filter(claim=claimed[0].claim).update(
                claim=None, claimed_until=None
            )
    left = PendingKillmail.objects.filter(job_id=job_id, killmail_id__in=killmail_ids)
    claims = list(left.values_list("claimed_until", flat=True))
    if not claims:
        return BodiesOutcome(come_back_in=0.0)
    now = timezone.now()
    # Unclaimed (given back meanwhile): soon; claimed by another worker: when that runs out.
    soonest = min((until - now).total_seconds() if until else 0.0 for until in claims)
    return BodiesOutcome(come_back_in=max(1.0, soonest))


def pending_among(job_id: int, killmail_ids: list[int]) -> list[int]:
    """Those of `killmail_ids` whose bodies the job still waits for, newest first."""
    return list(
        PendingKillmail.objects.filter(job_id=job_id, killmail_id__in=killmail_ids)
        .order_by("-killmail_id")
        .values_list("killmail_id", flat=True)
    )


def _store_bodies(
    job: BackfillJob,
    fetched: list[tuple[PendingKillmail, dict[str, Any]]],
    missing: list[tuple[PendingKillmail, str]],
) -> None:
    if not fetched and not missing:
        return
    # ESI answering for another killmail than the one asked: kept, never stored as it.
    wrong = [
        Rejection(
            p.killmail_id,
            f"ESI answered with killmail {_answered_for(body)!r:.30} for killmail {p.killmail_id}",
            {**body, "zkb": p.zkb} if isinstance(body, dict) else body,
        )
        for p, body in fetched
        if _answered_for(body) != p.killmail_id
    ]
    answered = [(p, body) for p, body in fetched if _answered_for(body) == p.killmail_id]
    older = _older_than_from_date(job, [(p.killmail_id, body) for p, body in answered])
    records = [
        {**body, "zkb": p.zkb} if p.zkb else body
        for p, body in answered
        if p.killmail_id not in older
    ]
    source = f"backfill #{job.pk}, ESI"
    with transaction.atomic():
        result = ingest_killmails(records, source=source, job_id=job.pk)
        quarantine(wrong, source, job.pk)
        _record_failures(
            job,
            {p.killmail_id: reason for p, reason in missing},
            {p.killmail_id: p for p, _ in missing},
        )
        PendingKillmail.objects.filter(pk__in=[p.pk for p, _ in (*fetched, *missing)]).delete()
        job.add_counts(
            bodies_from_esi=len(fetched),
            stored=result.new,
            already_stored=result.existing,
            failed=len(missing),
            rejected=len(result.rejected) + len(wrong),
            skipped_older=len(older),
        )


def finish_if_done(job_id: int) -> bool:
    """End the job once paging is done and no body is pending; True if this call ended it.

    It ends succeeded only when no killmail failed or was rejected, else partial. One
    conditional UPDATE decides both, on the counters as the row holds them, so workers
    finishing at once cannot end it twice or report a success that is not one.
    """
    outcome = Case(
        When(Q(failed__gt=0) | Q(rejected__gt=0), then=Value(BackfillJob.Status.PARTIAL)),
        default=Value(BackfillJob.Status.SUCCEEDED),
    )
    return bool(
        BackfillJob.objects.filter(
            ~Exists(PendingKillmail.objects.filter(job_id=OuterRef("pk"))),
            pk=job_id,
            paging_done=True,
            status__in=BackfillJob.ACTIVE,
        ).update(status=outcome, finished_at=timezone.now(), lease_until=None)
    )


def fail_job(job_id: int, error: str) -> None:
    """Stop the job with a clear error (permanent upstream error, retries exhausted)."""
    logger.error("Job %s failed: %s", job_id, error)
    BackfillJob.objects.filter(pk=job_id, status__in=BackfillJob.ACTIVE).update(
        status=BackfillJob.Status.FAILED,
        last_error=error,
        finished_at=timezone.now(),
        lease_until=None,
    )


def note_error(job_id: int, error: str) -> None:
    """Record a transient error on the job, which goes on."""
    BackfillJob.objects.filter(pk=job_id).update(last_error=error, updated_at=timezone.now())


def cancel_job(job_id: int) -> bool:
    """Cancel a queued or running job; its tasks stop at their next step."""
    return bool(
        BackfillJob.objects.filter(pk=job_id, status__in=BackfillJob.ACTIVE).update(
            status=BackfillJob.Status.CANCELLED, finished_at=timezone.now(), lease_until=None
        )
    )


def reopen_job(job_id: int, *, retry_failed: bool = False) -> bool:
    """Queue a job again from where it stands; False if there is nothing to do.

    A cancelled or failed job resumes at its cursor with its pending bodies. With
    `retry_failed`, the killmails it could not store become pending again (any status). A
    finished job (succeeded or partial) is reopened only when there are failures to retry.
    """
    with transaction.atomic():
        job = BackfillJob.objects.select_for_update().get(pk=job_id)
        retried = 0
        if retry_failed:
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
            retried = len(failures)
        if job.is_active:
            return retried > 0
        if job.status in BackfillJob.FINISHED and not retried:
            return False
        BackfillJob.objects.filter(pk=job_id).update(
            status=BackfillJob.Status.QUEUED, finished_at=None, last_error="", lease_until=None
        )
    return True


def pending_chunks(job_id: int) -> list[list[int]]:
    """The job's pending body ids in chunks of BODY_CHUNK, newest first."""
    ids = list(
        PendingKillmail.objects.filter(job_id=job_id)
        .order_by("-killmail_id")
        .values_list("killmail_id", flat=True)
    )
    return [ids[start : start + BODY_CHUNK] for start in range(0, len(ids), BODY_CHUNK)]


def stalled_jobs() -> list[BackfillJob]:
    """Running jobs that made no progress for a while and hold no live lease."""
    now = timezone.now()
    return list(
        BackfillJob.objects.filter(
            Q(lease_until__isnull=True) | Q(lease_until__lt=now),
            status=BackfillJob.Status.RUNNING,
            updated_at__lt=now - timedelta(seconds=settings.BACKFILL_STALLED_AFTER_SECONDS),
        )
    )


def touch(job_id: int) -> None:
    """Note progress (a retry scheduled), so the watchdog leaves the job alone."""
    BackfillJob.objects.filter(pk=job_id).update(updated_at=timezone.now())


def give_up_bodies(job_id: int, killmail_ids: list[int], reason: str) -> None:
    """Record pending bodies that could not be fetched as failures, so the job can finish."""
    job = BackfillJob.objects.get(pk=job_id)
    with transaction.atomic():
        pending = list(PendingKillmail.objects.filter(job=job, killmail_id__in=killmail_ids))
        _record_failures(
            job, {p.killmail_id: reason for p in pending}, {p.killmail_id: p for p in pending}
        )
        PendingKillmail.objects.filter(pk__in=[p.pk for p in pending]).delete()
        job.add_counts(failed=len(pending))


def record_task_id(job_id: int, task_id: str, kept: int) -> None:
    """Remember a queued page task's id on the job (the latest `kept` of them)."""
    with transaction.atomic():
        job = BackfillJob.objects.select_for_update().only("task_ids").get(pk=job_id)
        BackfillJob.objects.filter(pk=job_id).update(task_ids=[*job.task_ids, task_id][-kept:])
