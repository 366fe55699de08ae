"""The coverage ledger: how much of each UTC day, and of each backfill target's months, the
store holds against zKillboard's own counts, and the repairs that close the difference.

Days. R2Z2's `history/totals.json` counts every dumped day (one request tells them all);
`DayCoverage` keeps that count, the store's and when the two were compared. Killmails can be
posted up to 72 hours late, so a day's count keeps growing for days: `recheck` (the beat's
work) compares the last `COVERAGE_RECENT_DAYS` days at every run and older days only when
totals.json's count of them changed (or they were never compared). `repair` makes one history
job over the incomplete days; its plan skips the complete ones and each day fetches only the
ids the store lacks (`backfill.days`).

Live gaps. The follower records a `CoverageGap` when it missed part of the feed. Once R2Z2 has
dumped every day the gap spans, `recheck` makes a repair job of those days, and closes the gap
once that job has ended and the days are complete.

Targets. `TargetMonthCoverage` keeps, per month (YYYYMM), zKillboard's statistics count of a
target (`stats/{type}ID/ID/`: kills plus losses) and the store's count in the same unit. It is
noted when a job's plan gets the statistics and again when the job ends; incremental runs read
the rows (`short_months`).

No Celery here: `recheck` returns the jobs to start, and the task starts them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncDate, TruncMonth
from django.utils import timezone

from backfill import days, lifecycle, planner
from backfill.models import BackfillJob, CoverageGap, DayCoverage, TargetMonthCoverage
from killboard.models import Killmail, Participant, SolarSystem
from upstream.r2z2 import R2z2Client

logger = logging.getLogger(__name__)

TargetType = BackfillJob.TargetType
# The participant column that names a target of these types (a killmail counts once as a
# kill when the target is among its attackers, once as a loss when it is the victim).
PARTICIPANT_COLUMNS = {
    TargetType.CHARACTER: "character_id",
    TargetType.CORPORATION: "corporation_id",
    TargetType.ALLIANCE: "alliance_id",
    TargetType.SHIP_TYPE: "ship_type_id",
}
# Days the `coverage` command shows when no --from-date is given.
DEFAULT_DAYS = 30


# -- days ------------------------------------------------------------------------------------


def day_state(zkb_count: int, stored_count: int) -> str:
    """A day's or month's state: complete, short (the store lacks some) or extra (the store
    holds more than zKillboard counts)."""
    if stored_count < zkb_count:
        return "short"
    return "extra" if stored_count > zkb_count else "complete"


def days_between(first: date, last: date) -> list[date]:
    """The days first..last, oldest first."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def stored_per_day(first: date, last: date) -> dict[date, int]:
    """Killmails the store holds per UTC day of first..last (one grouped query)."""
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    rows = (
        Killmail.objects.filter(killmail_time__gte=start, killmail_time__lt=end)
        .order_by()
        .annotate(day=TruncDate("killmail_time", tzinfo=UTC))
        .values("day")
        .annotate(count=Count("killmail_id"))
        .values_list("day", "count")
    )
    return dict(rows)


def _runs(sorted_days: list[date]) -> list[tuple[date, date]]:
    """Ascending days as runs of consecutive days, (first, last) each."""
    runs: list[tuple[date, date]] = []
    for day in sorted_days:
        if runs and day - runs[-1][1] == timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def record_coverage(counts: Iterable[tuple[date, int]]) -> list[DayCoverage]:
    """Note how many of each day's killmails the store holds against zKillboard's count
    (day, count); return the rows, oldest first. One grouped count per run of days."""
    wanted = dict(counts)
    if not wanted:
        return []
    stored: dict[date, int] = {}
    for first, last in _runs(sorted(wanted)):
        stored.update(stored_per_day(first, last))
    now = timezone.now()
    rows = [
        DayCoverage(
            day=day,
            zkb_count=count,
            stored_count=stored.get(day, 0),
            complete=stored.get(day, 0) >= count,
            checked_at=now,
        )
        for day, count in sorted(wanted.items())
    ]
    DayCoverage.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["day"],
        update_fields=["zkb_count", "stored_count", "complete", "checked_at"],
    )
    return rows


def check_days(r2z2: R2z2Client, first: date, last: date) -> list[DayCoverage]:
    """Compare the days first..last (yesterday at the latest) with totals.json (one request)
    and the store; return their ledger rows, oldest first."""
    last = min(last, days.yesterday())
    if first > last:
        return []
    totals = r2z2.totals()
    return record_coverage((day, totals.get(day, 0)) for day in days_between(first, last))


@dataclass(frozen=True)
class Recheck:
    """What one `recheck` did: the days compared, the repair jobs to start (new ones, and
    those still queued), the live gaps closed."""

    checked: list[date]
    repair_jobs: list[int]
    closed_gaps: list[int]


def recheck(r2z2: R2z2Client) -> Recheck:
    """The beat's check: compare the recent days always, older ones when totals.json's count
    changed or they were never compared (one totals.json request); then repair or close the
    open live gaps whose days are dumped."""
    totals = r2z2.totals()
    due = _due_days(totals)
    record_coverage((day, totals.get(day, 0)) for day in due)
    jobs, closed = _handle_gaps()
    logger.info("Coverage: %s days checked, repair jobs %s, gaps closed %s", len(due), jobs, closed)
    return Recheck(due, jobs, closed)


def _due_days(totals: Mapping[date, int]) -> list[date]:
    """The days a recheck compares, oldest first: the recent ones, the older ones whose count
    changed or that were never compared, and the days of the open live gaps."""
    last = days.yesterday()
    recent_from = last - timedelta(days=settings.COVERAGE_RECENT_DAYS - 1)
    noted = dict(DayCoverage.objects.filter(day__lt=recent_from).values_list("day", "zkb_count"))
    changed = {
        day for day, count in totals.items() if day < recent_from and noted.get(day) != count
    }
    gap_days = {
        day
        for gap in CoverageGap.objects.filter(closed_at=None)
        for day in _gap_days(gap)
        if day <= last
    }
    return sorted({*days_between(recent_from, last), *changed, *gap_days})


def _gap_days(gap: CoverageGap) -> list[date]:
    """The UTC days a live gap spans."""
    return days_between(gap.start.astimezone(UTC).date(), gap.end.astimezone(UTC).date())


def _handle_gaps() -> tuple[list[int], list[int]]:
    """Repair the open gaps whose days are all dumped; close those whose days are complete.
    Returns the repair jobs to start and the gaps closed."""
    jobs, closed = [], []
    with transaction.atomic():
        gaps = CoverageGap.objects.select_for_update(skip_locked=True, of=("self",))
        for gap in gaps.filter(closed_at=None).select_related("repair_job"):
            job = gap.repair_job
            if job is not None and job.status == BackfillJob.Status.QUEUED and not job.started_at:
                jobs.append(job.pk)  # made by an earlier check that did not get to start it
            elif not _gap_ready(gap):
                continue
            elif _all_complete(_gap_days(gap)):
                CoverageGap.objects.filter(pk=gap.pk).update(closed_at=timezone.now())
                logger.info("Live gap %s closed (repair job %s)", gap.pk, gap.repair_job_id)
                closed.append(gap.pk)
            elif (new_job := _repair_gap(gap)) is not None:
                jobs.append(new_job)
    return jobs, closed


def _gap_ready(gap: CoverageGap) -> bool:
    """Whether R2Z2 has dumped the gap's last day and no repair job of it is still active."""
    dumped = _gap_days(gap)[-1] <= days.yesterday()
    return dumped and not (gap.repair_job and gap.repair_job.is_active)


def _repair_gap(gap: CoverageGap) -> int | None:
    """A new repair job over the gap's incomplete days (its id), noted on the gap; None when
    its last repair ended partial: its failures are permanent (a 422, a body the schema
    rejects), an operator decides."""
    if gap.repair_job and gap.repair_job.status == BackfillJob.Status.PARTIAL:
        return None
    gap_days = _gap_days(gap)
    job = repair(gap_days[0], gap_days[-1])
    if job is None:
        return None
    CoverageGap.objects.filter(pk=gap.pk).update(repair_job=job)
    logger.info("Live gap %s: repair job %s over %s", gap.pk, job.pk, job.target)
    return job.pk


def _all_complete(wanted: list[date]) -> bool:
    """Whether the ledger has every one of these days complete."""
    rows = DayCoverage.objects.filter(day__range=(wanted[0], wanted[-1]), complete=True)
    return rows.count() == len(wanted)


def repair(first: date, last: date) -> BackfillJob | None:
    """A queued history job (not started) over the days of first..last (yesterday at the
    latest) that the ledger does not have complete; None when every one is.

    Check the days first (`check_days`): a day the ledger does not know counts as incomplete.
    The job's plan skips the complete days between, and each day fetches only the ids the
    store lacks.
    """
    last = min(last, days.yesterday())
    if first > last:
        return None
    complete = set(
        DayCoverage.objects.filter(day__range=(first, last), complete=True).values_list(
            "day", flat=True
        )
    )
    todo = [day for day in days_between(first, last) if day not in complete]
    if not todo:
        return None
    job = lifecycle.create_history_job(todo[0], todo[-1])
    logger.info("Repair job %s over %s incomplete days of %s..%s", job.pk, len(todo), first, last)
    return job


# -- the ledger as people read it ------------------------------------------------------------


@dataclass(frozen=True)
class MonthCoverage:
    """A month (YYYYMM) of the ledger: zKillboard's count, the store's, and for the days'
    ledger how many of its days were compared and how many were short."""

    month: int
    zkb_count: int
    stored_count: int
    days: int = 0
    short_days: int = 0

    @property
    def missing(self) -> int:
        return max(0, self.zkb_count - self.stored_count)

    @property
    def state(self) -> str:
        return day_state(self.zkb_count, self.stored_count)

    @property
    def label(self) -> str:
        return f"{self.month // 100}-{self.month % 100:02d}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "month": self.label,
            "zkb_count": self.zkb_count,
            "stored_count": self.stored_count,
            "missing": self.missing,
            "state": self.state,
            "days": self.days,
            "short_days": self.short_days,
        }


def months_of(rows: Iterable[DayCoverage]) -> list[MonthCoverage]:
    """The days' ledger rows summed per month, newest first."""
    sums: dict[int, list[int]] = {}
    for row in rows:
        month = sums.setdefault(planner.month_of(row.day), [0, 0, 0, 0])
        month[0] += row.zkb_count
        month[1] += row.stored_count
        month[2] += 1
        month[3] += row.stored_count < row.zkb_count
    return [MonthCoverage(m, *figures) for m, figures in sorted(sums.items(), reverse=True)]


def store_months(count: int = 12) -> list[MonthCoverage]:
    """The whole store's last `count` months in the days' ledger, newest first (one query)."""
    today = timezone.now().astimezone(UTC).date()
    index = today.year * 12 + today.month - 1 - (count - 1)
    start = date(index // 12, index % 12 + 1, 1)
    rows = (
        DayCoverage.objects.filter(day__gte=start)
        .order_by()
        .annotate(month=TruncMonth("day"))
        .values("month")
        .annotate(
            zkb=Sum("zkb_count"),
            stored=Sum("stored_count"),
            days=Count("day"),
            short=Count("day", filter=Q(stored_count__lt=F("zkb_count"))),
        )
        .values_list("month", "zkb", "stored", "days", "short")
    )
    months = [MonthCoverage(planner.month_of(m), z, s, d, short) for m, z, s, d, short in rows]
    return sorted(months, key=lambda month: month.month, reverse=True)


def target_months(target_type: str, target_id: int) -> list[MonthCoverage]:
    """A target's months in the ledger, newest first."""
    rows = TargetMonthCoverage.objects.filter(target_type=target_type, target_id=target_id)
    return [
        MonthCoverage(row.month, row.zkb_count, row.stored_count) for row in rows.order_by("-month")
    ]


@dataclass(frozen=True)
class Report:
    """The ledger of some days, their months and the open live gaps, as `coverage` prints."""

    first: date
    last: date
    days: list[DayCoverage]
    months: list[MonthCoverage]
    gaps: list[CoverageGap]

    def as_dict(self) -> dict[str, Any]:
        return {
            "from_date": self.first.isoformat(),
            "to_date": self.last.isoformat(),
            "days": [_day_dict(row) for row in self.days],
            "months": [month.as_dict() for month in self.months],
            "open_gaps": [_gap_dict(gap) for gap in self.gaps],
            "short_days": sum(row.stored_count < row.zkb_count for row in self.days),
            "missing": sum(max(0, row.zkb_count - row.stored_count) for row in self.days),
        }

    def lines(self) -> list[str]:
        """The report in words: a line a day, newest first, then months and gaps."""
        data = self.as_dict()
        header = f"{'day':<10}  {'zKillboard':>10}  {'stored':>10}  {'missing':>8}  state     "
        lines = [
            f"Coverage of {self.first}..{self.last} (zKillboard's count from R2Z2 totals.json):",
            f"  {header}checked at",
        ]
        for row in self.days:
            lines.append(
                f"  {row.day}  {row.zkb_count:>10,}  {row.stored_count:>10,}  "
                f"{max(0, row.zkb_count - row.stored_count):>8,}  "
                f"{day_state(row.zkb_count, row.stored_count):<8}  {_clock(row.checked_at)}"
            )
        lines.append("Months:")
        for month in self.months:
            lines.append(
                f"  {month.label:<10}  {month.zkb_count:>10,}  {month.stored_count:>10,}  "
                f"{month.missing:>8,}  {month.state:<8}  "
                f"{month.days - month.short_days} of {month.days} days complete"
            )
        lines.append(f"Open live gaps: {len(self.gaps) or 'none'}")
        lines.extend(f"  {gap_line(gap)}" for gap in self.gaps)
        lines.append(
            f"{len(self.days)} days, {data['short_days']} short, "
            f"{data['missing']:,} killmail(s) missing."
        )
        return lines


def report(first: date, last: date) -> Report:
    """The ledger of the days first..last as it stands (no request)."""
    rows = list(DayCoverage.objects.filter(day__range=(first, last)).order_by("-day"))
    return Report(first, last, rows, months_of(rows), open_gaps())


def open_gaps() -> list[CoverageGap]:
    """The live gaps not closed yet, oldest first, with their repair jobs."""
    return list(
        CoverageGap.objects.filter(closed_at=None).select_related("repair_job").order_by("start")
    )


def gap_line(gap: CoverageGap) -> str:
    """A live gap in words: its sequences, its times, where its repair stands."""
    job = gap.repair_job
    if gap.closed_at:
        where = f"closed {_clock(gap.closed_at)}"
    elif job is not None:
        where = f"repair job #{job.pk} {job.status}"
    elif gap.end.astimezone(UTC).date() > days.yesterday():
        where = "waiting for R2Z2's day dumps"
    else:
        where = "repair at the next check"
    return (
        f"sequences {gap.first_sequence}..{gap.last_sequence}, "
        f"{_clock(gap.start)} to {_clock(gap.end)}: {where}"
    )


def _day_dict(row: DayCoverage) -> dict[str, Any]:
    return {
        "day": row.day.isoformat(),
        "zkb_count": row.zkb_count,
        "stored_count": row.stored_count,
        "missing": max(0, row.zkb_count - row.stored_count),
        "state": day_state(row.zkb_count, row.stored_count),
        "checked_at": row.checked_at.isoformat(),
    }


def _gap_dict(gap: CoverageGap) -> dict[str, Any]:
    return {
        "id": gap.pk,
        "first_sequence": gap.first_sequence,
        "last_sequence": gap.last_sequence,
        "start": gap.start.isoformat(),
        "end": gap.end.isoformat(),
        "repair_job": gap.repair_job_id,
        "repair_status": gap.repair_job.status if gap.repair_job else None,
    }


def _clock(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def ledger_range(from_date: Any, to_date: Any) -> tuple[date, date]:
    """The days the `coverage` command shows: --from-date..--to-date, by default the last
    `DEFAULT_DAYS` days through yesterday (the last day R2Z2 has dumped); a later to date
    stops at yesterday. `lifecycle.InvalidBackfill` (one line) for bad dates."""
    start, end = lifecycle.parse_dates(from_date, to_date)
    yesterday = days.yesterday()
    end = min(end or yesterday, yesterday)
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise lifecycle.InvalidBackfill(
            f"from date {start}: R2Z2 has dumped days up to {yesterday}"
        )
    return start, end


# -- targets ---------------------------------------------------------------------------------


def stored_per_month(target_type: str, target_id: int) -> dict[int, int] | None:
    """The store's count of a target's killmails per month (YYYYMM), in the unit of
    zKillboard's statistics: the killmails it took part in as an attacker (kills) plus those
    where it is the victim (losses), so one killmail that is both counts twice, as there. A
    ship type is the victim's ship or an attacker's; a solar system or a region counts its
    killmails.

    One grouped query. None for a region while some stored system's region is unknown (its
    system or constellation details are not fetched yet; see `_region_stored`).
    """
    by_month = TruncMonth("killmail_time", tzinfo=UTC)
    if target_type in (TargetType.SOLAR_SYSTEM, TargetType.REGION):
        if target_type == TargetType.REGION and not regions_known():
            return None
        killmails = (
            Killmail.objects.filter(solar_system_id=target_id)
            if target_type == TargetType.SOLAR_SYSTEM
            else Killmail.objects.in_region(target_id)
        )
        rows = (
            killmails.order_by()
            .annotate(month=by_month)
            .values("month")
            .annotate(count=Count("killmail_id"))
            .values_list("month", "count")
        )
    elif target_type in PARTICIPANT_COLUMNS:
        rows = (
            Participant.objects.filter(**{PARTICIPANT_COLUMNS[target_type]: target_id})
            .order_by()
            .annotate(month=by_month)
            .values("month", "is_victim")
            .annotate(count=Count("killmail_id", distinct=True))
            .values_list("month", "count")
        )
    else:
        return None
    counts: dict[int, int] = {}
    for moment, count in rows:
        month = planner.month_of(moment)
        counts[month] = counts.get(month, 0) + count
    return counts


def regions_known() -> bool:
    """Whether the store knows the region of every solar system it holds (from ESI's
    /universe/systems/ and /universe/constellations/ details)."""
    unknown = Q(constellation__isnull=True) | Q(constellation__region__isnull=True)
    return not SolarSystem.objects.filter(unknown).exists()


def _region_stored(job: BackfillJob, noted: Mapping[int, int]) -> dict[int, int]:
    """A region's stored counts, which the store cannot tell: what was noted before, and
    for a job that ended succeeded without a bound, its plan's count of every month it
    walked whole (every killmail it listed is stored: at least what the statistics counted
    when it began)."""
    stored = dict(noted)
    if job.status != BackfillJob.Status.SUCCEEDED or job.max_pages:
        return stored
    for month, count in job.plan.get("months", []):
        first, last = planner.month_days(month)
        walked = (not job.from_date or job.from_date <= first) and (
            not job.to_date or last <= job.to_date
        )
        if walked:
            stored[month] = max(stored.get(month, 0), count)
    return stored


def record_target_months(job: BackfillJob, months: Mapping[int, int] | None = None) -> int:
    """Note a scoped job's target's months: zKillboard's statistics count (`months`, YYYYMM:
    count; None keeps the counts noted before) against the store's count; return the rows
    written. Called when the job's plan has the statistics and when the job ends."""
    if job.target_type == TargetType.HISTORY:
        return 0
    rows = TargetMonthCoverage.objects.filter(target_type=job.target_type, target_id=job.target_id)
    noted = {row.month: row for row in rows}
    if months is None:
        months = {month: row.zkb_count for month, row in noted.items()}
    if not months:
        return 0
    stored = stored_per_month(job.target_type, job.target_id)
    if stored is None:
        stored = _region_stored(job, {m: row.stored_count for m, row in noted.items()})
    now = timezone.now()
    TargetMonthCoverage.objects.bulk_create(
        [
            TargetMonthCoverage(
                target_type=job.target_type,
                target_id=job.target_id,
                month=month,
                zkb_count=count,
                stored_count=stored.get(month, 0),
                checked_at=now,
            )
            for month, count in months.items()
        ],
        update_conflicts=True,
        unique_fields=["target_type", "target_id", "month"],
        update_fields=["zkb_count", "stored_count", "checked_at"],
    )
    logger.info("Job %s: %s months of %s noted", job.pk, len(months), job.target)
    return len(months)


def short_months(target_type: str, target_id: int) -> list[int]:
    """The target's months (YYYYMM) where the store holds fewer than zKillboard's
    statistics count, newest first."""
    rows = TargetMonthCoverage.objects.filter(
        target_type=target_type, target_id=target_id, stored_count__lt=F("zkb_count")
    )
    return list(rows.order_by("-month").values_list("month", flat=True))
