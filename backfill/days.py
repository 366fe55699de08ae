"""A job's work from R2Z2's day dumps, one UTC day at a time.

A history job's day lists the day's ids (`history/YYYYMMDD.json`), leaves out those stored
already, takes the bodies from the day's raw dump (`history/raw/YYYYMMDD.json`, streamed, never
read whole) when it lacks two or more (one download whatever the day holds), and hands what is
still missing to ESI as pending bodies; its days run in any order. After each day the coverage
ledger (`backfill.coverage`) notes the day again. A scoped job's day takes from the raw dump
the bodies its pages lacked (held for the dense months of its plan). Its days are a walk per
month, newest first: each dump read tells its first and last killmail id, so the next day is
the one most likely to hold the newest body still wanted (`planner.next_dump_day`), and days
that cannot hold any are skipped. What no dump holds goes to ESI.

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
from datetime import UTC, date, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from backfill import coverage, planner
from backfill.models import BackfillDay, BackfillJob, FailedKillmail, PendingKillmail
from killboard.ingest import ingest_killmails
from killboard.models import Killmail
from killboard.readers import UnreadableFile, read_stream
from upstream.esi import is_killmail_hash
from upstream.r2z2 import R2z2Client, R2z2Unavailable

logger = logging.getLogger(__name__)

# Bodies from a raw dump stored in one transaction.
DUMP_BATCH = 1000


@dataclass(frozen=True)
class DayOutcome:
    """What a day left to do: bodies to fetch from ESI (newest first), the next day."""

    pending_ids: list[int]
    next_day: date | None = None


def _days_of(month: int, first: date, last: date) -> list[date]:
    """The days of `month` within first..last, newest first."""
    start, end = planner.month_days(month)
    start, end = max(start, first), min(end, last)
    return [end - timedelta(days=n) for n in range((end - start).days + 1)]


def plan_dump_days(job: BackfillJob) -> tuple[list[date], list[int]]:
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
    months = {month: _days_of(month, first, last) for month in dense}
    BackfillDay.objects.bulk_create(
        [BackfillDay(job=job, day=day) for days in months.values() for day in days],
        ignore_conflicts=True,
    )
    released = release_held(job.pk, exclude_months=dense)
    logger.info("Job %s: raw dumps for %s, %s bodies to ESI", job.pk, dense, len(released))
    # Each month's walk begins at its newest day.
    return [days[0] for days in months.values() if days], released


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


def days_to_queue(job: BackfillJob) -> list[date]:
    """The days a job (resumed) goes on with: a history job's every day not done, a scoped
    job's next day of each month's walk."""
    undone = undone_days(job.pk)
    if job.target_type == BackfillJob.TargetType.HISTORY:
        return undone
    months = sorted({planner.month_of(day) for day in undone}, reverse=True)
    return [day for month in months if (day := _walk_on(job.pk, month)[0]) is not None]


def _walk_on(job_id: int, month: int) -> tuple[date | None, list[int]]:
    """The next day of a month's walk over raw dumps (None when the walk is over: the
    month's days left are then done, skipped), and the held bodies no dump can hold, which
    this gives to ESI."""
    held = PendingKillmail.objects.filter(job_id=job_id, from_dump=True, month=month)
    month_days = BackfillDay.objects.filter(
        job_id=job_id, day__year=month // 100, day__month=month % 100
    )
    known = [
        planner.DumpDay(d.day, d.done_at is not None, d.first_id, d.last_id) for d in month_days
    ]
    to_esi = []
    for wanted in held.order_by("-killmail_id").values_list("killmail_id", flat=True):
        day = planner.next_dump_day(wanted, known)
        if day is not None:
            break
        to_esi.append(wanted)  # no day of the month can hold it (ids grow with time)
    else:
        day = None
        month_days.filter(done_at=None).update(done_at=timezone.now(), claimed_until=None)
    held.filter(killmail_id__in=to_esi).update(from_dump=False)
    return day, to_esi


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


def claim_left(job_id: int, day: date) -> float | None:
    """Seconds left on another worker's claim of the day; None if the day is not to do."""
    row = BackfillDay.objects.filter(
        job_id=job_id, day=day, done_at=None, job__status__in=BackfillJob.ACTIVE
    ).first()
    if row is None:
        return None
    if row.claimed_until is None:
        return 0.0
    return max(0.0, (row.claimed_until - timezone.now()).total_seconds())


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
    bounds = _take_from_raw(job, row, wanted, r2z2, held=True) if wanted else None
    with transaction.atomic():
        # One day at a time decides what comes next: the job row is the lock.
        BackfillJob.objects.select_for_update().filter(pk=job_id).first()
        _mark_done(row, bounds)
        next_day, to_esi = _walk_on(job_id, planner.month_of(day))
        released = [] if undone_days(job_id) else release_held(job_id)
    return DayOutcome(sorted({*to_esi, *released}, reverse=True), next_day)


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
    # The raw dump is one download whatever the day holds: worth it for two bodies or more.
    if wanted and row.day >= settings.R2Z2_RAW_SINCE and planner.is_dense(len(wanted), 1):
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
    coverage.record_coverage([(row.day, row.count)])
    return DayOutcome(sorted(to_esi, reverse=True))


def _stored_among(hashes: dict[int, Any]) -> set[int]:
    """The ids of a day's dump the store holds (one range query: a day's ids are close)."""
    if not hashes:
        return set()
    stored = Killmail.objects.filter(killmail_id__range=(min(hashes), max(hashes)))
    return set(stored.values_list("killmail_id", flat=True)) & hashes.keys()


def _take_from_raw(
    job: BackfillJob, row: BackfillDay, wanted: dict[int, Any], r2z2: R2z2Client, *, held: bool
) -> tuple[int, int] | None:
    """Store the `wanted` bodies (id: zkb) the day's raw dump holds; remove them from it.

    Returns the smallest and largest killmail id of the dump (None: no dump, or empty).
    `held`: the bodies are the job's pending rows waiting for the dumps (a scoped job), and
    are deleted as they are stored.
    """
    source = f"backfill #{job.pk}, R2Z2 raw dump of {row.day}"
    first = last = None
    with r2z2.raw_day(row.day) as stream:
        job.add_counts(dumps_fetched=1)
        if stream is None:
            return None
        batch: list[dict[str, Any]] = []
        try:
            for record in read_stream(stream, source):
                killmail_id = record.get("killmail_id") if isinstance(record, dict) else None
                if type(killmail_id) is not int:
                    continue
                first = killmail_id if first is None else min(first, killmail_id)
                last = killmail_id if last is None else max(last, killmail_id)
                if killmail_id not in wanted:
                    continue
                batch.append({**record, "zkb": wanted.pop(killmail_id)})
                if len(batch) >= DUMP_BATCH:
                    _store_dump_batch(job, row, batch, source, held)
                    batch = []
        except UnreadableFile as exc:
            # A download cut short: what was read is stored below; the retry takes the rest.
            error: Exception | None = R2z2Unavailable(str(exc))
        else:
            error = None
        _store_dump_batch(job, row, batch, source, held)
        if error:
            raise error
    return None if first is None or last is None else (first, last)


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


def _mark_done(row: BackfillDay, bounds: tuple[int, int] | None = None) -> None:
    first_id, last_id = bounds or (None, None)
    BackfillDay.objects.filter(pk=row.pk).update(
        done_at=timezone.now(), claimed_until=None, first_id=first_id, last_id=last_id
    )
