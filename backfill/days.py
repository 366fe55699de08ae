"""A job's work from R2Z2's day dumps, one UTC day at a time.

A history job's day lists the day's ids (`history/YYYYMMDD.json`), leaves out those stored
already, takes the bodies from the day's raw dump (`history/raw/YYYYMMDD.json`, streamed,
never read whole) and hands what it lacks to ESI as pending bodies. A scoped job's day takes
from the raw dump the bodies its pages lacked (held for the dense months of its plan); when
its last day is done, what the dumps did not hold goes to ESI.

A day is owned through a claim on its row (a conditional UPDATE), like a page's lease; each
batch of bodies is stored in one transaction with its counters, so a worker killed in the
middle of a day costs the retry only the download: the retry stores just what is missing.
Day dumps carry no zkb values: a killmail stored from them keeps its hash only, until a
zKillboard page or the live feed gives the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from backfill import planner
from backfill.models import BackfillDay, BackfillJob, DayCoverage, FailedKillmail, PendingKillmail
from backfill.planner import Plan
from killboard.ingest import ingest_killmails
from killboard.models import Killmail
from killboard.readers import read_stream
from upstream.esi import is_killmail_hash
from upstream.r2z2 import R2z2Client

logger = logging.getLogger(__name__)

# Bodies from a raw dump stored in one transaction.
DUMP_BATCH = 1000


@dataclass(frozen=True)
class DayOutcome:
    """What a day left to ESI: bodies to fetch (newest first)."""

    pending_ids: list[int]


def _days_of(month: int, first: date, last: date) -> list[date]:
    """The days of `month` within first..last, newest first."""
    start = date(month // 100, month % 100, 1)
    days = []
    day = min(last, (start + timedelta(days=31)).replace(day=1) - timedelta(days=1))
    while day >= max(start, first):
        days.append(day)
        day -= timedelta(days=1)
    return days


def plan_dump_days(job: BackfillJob, plan: Plan | None) -> tuple[list[date], list[int]]:
    """Paging is done: choose, with the bodies actually missing, the days whose raw dumps
    are worth downloading; give the rest of the held bodies to ESI.

    A month takes its raw dumps only if it lacks more bodies than it has raw days. Returns
    the days created and the ids released to ESI. Runs in the last page's transaction.
    """
    held = PendingKillmail.objects.filter(job=job, from_dump=True)
    if not held.exists():
        return [], []
    first = max(job.from_date or settings.R2Z2_RAW_SINCE, settings.R2Z2_RAW_SINCE)
    last = min(job.to_date or yesterday(), yesterday())
    counts = dict(held.values_list("month").annotate(n=Count("pk")))
    dense = [
        month
        for month, count in counts.items()
        if month
        and planner.is_dense(count, planner.raw_days(month, first, last, settings.R2Z2_RAW_SINCE))
    ]
    days = [day for month in sorted(dense, reverse=True) for day in _days_of(month, first, last)]
    BackfillDay.objects.bulk_create(
        [BackfillDay(job=job, day=day) for day in days], ignore_conflicts=True
    )
    released = release_held(job.pk, exclude_months=dense)
    logger.info("Job %s: %s days of raw dumps, %s bodies to ESI", job.pk, len(days), len(released))
    return days, released


def release_held(job_id: int, exclude_months: Sequence[int] = ()) -> list[int]:
    """Give the bodies held for day dumps (but those of `exclude_months`) to ESI."""
    held = PendingKillmail.objects.filter(job_id=job_id, from_dump=True).exclude(
        month__in=list(exclude_months)
    )
    ids = list(held.order_by("-killmail_id").values_list("killmail_id", flat=True))
    held.update(from_dump=False)
    return ids


def yesterday() -> date:
    """The last day R2Z2 has dumped (the current UTC day is not dumped yet)."""
    return timezone.now().astimezone(UTC).date() - timedelta(days=1)


def undone_days(job_id: int) -> list[date]:
    """The job's days not done yet, newest first."""
    return list(
        BackfillDay.objects.filter(job_id=job_id, done_at=None)
        .order_by("-day")
        .values_list("day", flat=True)
    )


def claim_day(job_id: int, day: date) -> bool:
    """Take the claim on the job's day; False if it is done or another live worker has it."""
    now = timezone.now()
    return bool(
        BackfillDay.objects.filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
            job_id=job_id,
            day=day,
            done_at=None,
            job__status__in=BackfillJob.ACTIVE,
        ).update(claimed_until=now + timedelta(seconds=settings.BACKFILL_LEASE_SECONDS))
    )


def release_day(job_id: int, day: date) -> None:
    """Give the day back, e.g. before a retry."""
    BackfillDay.objects.filter(job_id=job_id, day=day).update(claimed_until=None)


def process_day(job_id: int, day: date, r2z2: R2z2Client) -> DayOutcome:
    """Do the job's day (the caller holds its claim); return what it leaves to ESI."""
    job = BackfillJob.objects.get(pk=job_id)
    row = BackfillDay.objects.get(job=job, day=day)
    if job.target_type == BackfillJob.TargetType.HISTORY:
        return _history_day(job, row, r2z2)
    wanted = dict(
        PendingKillmail.objects.filter(
            job=job, from_dump=True, month=planner.month_of(day)
        ).values_list("killmail_id", "zkb")
    )
    if wanted:  # else the month's bodies were all found in its later days
        _take_from_raw(job, row, wanted, r2z2, held=True)
    with transaction.atomic():
        # One day at a time decides whether it was the last: the job row is the lock.
        BackfillJob.objects.select_for_update().filter(pk=job_id).first()
        _mark_done(row)
        released = [] if undone_days(job_id) else release_held(job_id)
    return DayOutcome(released)


def _history_day(job: BackfillJob, row: BackfillDay, r2z2: R2z2Client) -> DayOutcome:
    hashes = r2z2.day(row.day)
    job.add_counts(dumps_fetched=1)
    if hashes is None:
        # Not dumped (yet): the day's killmails cannot be listed; the job cannot succeed.
        with transaction.atomic():
            _mark_done(row)
            job.add_counts(killmails_listed=row.count, failed=row.count)
            BackfillJob.objects.filter(pk=job.pk).update(
                last_error=f"R2Z2 has no id dump of {row.day} (404)"
            )
        return DayOutcome([])
    # What an earlier, interrupted try of this day stored is among `stored` now.
    stored_before = row.stored
    stored = _stored_among(hashes)
    wanted = {i: {"hash": h} for i, h in hashes.items() if i not in stored}
    if wanted and row.day >= settings.R2Z2_RAW_SINCE:
        _take_from_raw(job, row, wanted, r2z2, held=False)
    unfetchable = {i: z for i, z in wanted.items() if not is_killmail_hash(z["hash"])}
    to_esi = {i: z for i, z in wanted.items() if i not in unfetchable}
    with transaction.atomic():
        PendingKillmail.objects.bulk_create(
            [
                PendingKillmail(job=job, killmail_id=i, killmail_hash=z["hash"], zkb=z)
                for i, z in to_esi.items()
            ],
            ignore_conflicts=True,
        )
        FailedKillmail.objects.bulk_create(
            [
                FailedKillmail(
                    job=job,
                    killmail_id=i,
                    zkb=z,
                    reason=f"day dump hash {z['hash']!r:.60} is not 40 hex digits",
                )
                for i, z in unfetchable.items()
            ],
            ignore_conflicts=True,
        )
        job.add_counts(
            killmails_listed=len(hashes),
            already_stored=len(stored) - stored_before,
            failed=len(unfetchable),
        )
        _mark_done(row)
    record_coverage([(row.day, row.count)])
    return DayOutcome(sorted(to_esi, reverse=True))


def _stored_among(hashes: dict[int, Any]) -> set[int]:
    """The ids of a day's dump the store holds (one range query: a day's ids are close)."""
    if not hashes:
        return set()
    stored = Killmail.objects.filter(killmail_id__range=(min(hashes), max(hashes)))
    return set(stored.values_list("killmail_id", flat=True)) & hashes.keys()


def _take_from_raw(
    job: BackfillJob, row: BackfillDay, wanted: dict[int, Any], r2z2: R2z2Client, *, held: bool
) -> None:
    """Store the `wanted` bodies (id: zkb) the day's raw dump holds; remove them from it.

    `held`: the bodies are the job's pending rows waiting for the dumps (a scoped job), and
    are deleted as they are stored.
    """
    source = f"backfill #{job.pk}, R2Z2 raw dump of {row.day}"
    with r2z2.raw_day(row.day) as stream:
        job.add_counts(dumps_fetched=1)
        if stream is None:
            return
        batch: list[dict[str, Any]] = []
        for record in read_stream(stream, source):
            killmail_id = record.get("killmail_id") if isinstance(record, dict) else None
            if type(killmail_id) is not int or killmail_id not in wanted:
                continue
            batch.append({**record, "zkb": wanted.pop(killmail_id)})
            if len(batch) >= DUMP_BATCH:
                _store_dump_batch(job, row, batch, source, held)
                batch = []
        _store_dump_batch(job, row, batch, source, held)


def _store_dump_batch(
    job: BackfillJob, row: BackfillDay, records: list[dict[str, Any]], source: str, held: bool
) -> None:
    if not records:
        return
    with transaction.atomic():
        result = ingest_killmails(records, source=source, job_id=job.pk)
        if held:
            ids = [record["killmail_id"] for record in records]
            PendingKillmail.objects.filter(job=job, killmail_id__in=ids).delete()
        job.add_counts(
            bodies_from_dump=len(records),
            stored=result.new,
            already_stored=result.existing,
            rejected=len(result.rejected),
        )
        BackfillDay.objects.filter(pk=row.pk).update(stored=F("stored") + result.new)


def _mark_done(row: BackfillDay) -> None:
    BackfillDay.objects.filter(pk=row.pk).update(done_at=timezone.now(), claimed_until=None)


def record_coverage(days: list[tuple[date, int]]) -> None:
    """Note how many of each day's killmails the store holds against zKillboard's count."""
    now = timezone.now()
    for day, zkb_count in days:
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        stored = Killmail.objects.filter(
            killmail_time__gte=start, killmail_time__lt=start + timedelta(days=1)
        ).count()
        DayCoverage.objects.update_or_create(
            day=day,
            defaults={
                "zkb_count": zkb_count,
                "stored_count": stored,
                "complete": stored >= zkb_count,
                "checked_at": now,
            },
        )
