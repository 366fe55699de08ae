"""Incremental re-runs (`backfill TYPE ID --update`): what reached zKillboard since the last
complete run.

zKillboard takes killmails up to 72 hours late and lists a late one among killmails of its
own, older, time (ids grow with time). An update job reads the target's whole-history pages
newest first as any job does, and stops at the first page whose killmails were all stored
already and whose oldest is older than `update_since`: the last complete run's start less
BACKFILL_UPDATE_OVERLAP_HOURS. Then it walks, month by month, only the target's short months
older than update_since's month: those the coverage ledger (`TargetMonthCoverage`) counts
fewer killmails stored than zKillboard's statistics. Bodies the pages lack come from ESI: an
update is small, and takes no day dump.

The last complete run is the newest finished job of the target (succeeded, or partial: its
listing was whole, and what it could not store is kept on it for "retry failed" and shows as
a short month to the next update) that listed the whole history: no from_date, no to_date,
no max_pages. An update job qualifies too: it completes the run it follows.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from backfill import planner
from backfill.models import BackfillJob, TargetMonthCoverage
from backfill.planner import Month, Plan


def last_complete_run(target_type: str, target_id: int) -> BackfillJob | None:
    """The newest finished job of the target that listed its whole history, or None."""
    return (
        BackfillJob.objects.filter(
            target_type=target_type,
            target_id=target_id,
            status__in=BackfillJob.FINISHED,
            from_date=None,
            to_date=None,
            max_pages=None,
        )
        .order_by("-created_at", "-pk")
        .first()
    )


def since(run: BackfillJob) -> datetime:
    """Where an update after `run` reads back to: its start less the late-arrival overlap."""
    began = run.started_at or run.created_at
    return began - timedelta(hours=settings.BACKFILL_UPDATE_OVERLAP_HOURS)


def month_of(moment: datetime) -> Month:
    """The month (YYYYMM, UTC) of a moment."""
    return planner.month_of(moment.astimezone(UTC).date())


def short_months(target_type: str, target_id: int, before: Month) -> list[tuple[Month, int, int]]:
    """(month, stored, zKillboard's count) of the target's months before `before` that the
    coverage ledger counts fewer killmails stored in than zKillboard does, newest first."""
    rows = TargetMonthCoverage.objects.filter(
        target_type=target_type,
        target_id=target_id,
        stored_count__lt=F("zkb_count"),
        month__lt=before,
    ).order_by("-month")
    return list(rows.values_list("month", "stored_count", "zkb_count"))


def walk_months(job: BackfillJob, plan: Plan | None) -> set[Month]:
    """The months an update's month walk may read: from update_since's month to now's (those
    holding killmails, when the statistics tell), and the short months before it."""
    assert job.update_since is not None
    first, last = month_of(job.update_since), month_of(timezone.now())
    newer = set(_months_between(first, last))
    if plan and plan.statistics:
        newer &= plan.listed_months or set()
    short = short_months(job.target_type, job.target_id, before=first)
    return newer | {month for month, _, _ in short}


def _months_between(first: Month, last: Month) -> list[Month]:
    """Every month from `first` to `last`, both included."""
    months, month = [], first
    while month <= last:
        months.append(month)
        year, number = divmod(month, 100)
        month = planner.month_key(year + number // 12, number % 12 + 1)
    return months


def update_plan(job: BackfillJob, whole: Plan) -> Plan:
    """An update's plan, from the whole-history plan (`whole`) of its target: the months since
    update_since's month (the first of them only for its part after update_since, taking its
    killmails as spread evenly), then the short months whole; bodies the pages lack from ESI.
    """
    assert job.update_since is not None
    if not whole.statistics:
        return replace(whole, dump_months=[], dump_downloads=0)
    first = month_of(job.update_since)
    newer = [
        (m, math.ceil(c * _share_since(m, job.update_since))) for m, c in whole.months if m >= first
    ]
    short = _short_by_statistics(job, dict(whole.months), before=first)
    listing = planner.listing_requests(newer, to_date=None, bound=job.max_killmails)
    walk = [(month, count) for month, _, count in short]
    walked = planner.listing_requests(walk, to_date=job.update_since.date(), bound=None)
    killmails = sum(c for _, c in newer) + sum(c for _, c in walk)
    return Plan(
        kind="scoped",
        killmails=killmails,
        zkillboard_requests=1 + listing + (walked if walk else 0),
        esi_calls=sum(c for _, c in newer) + sum(count - stored for _, stored, count in short),
        months=[[m, c] for m, c in [*newer, *walk]],
    )


def _short_by_statistics(
    job: BackfillJob, counts: dict[Month, int], before: Month
) -> list[tuple[Month, int, int]]:
    """The short months before `before` as the plan counts them: the ledger's rows whose
    stored count is below zKillboard's count, the ledger's or the statistics' just read
    (an estimate notes nothing, and the statistics may have grown since the ledger's)."""
    rows = TargetMonthCoverage.objects.filter(
        target_type=job.target_type, target_id=job.target_id, month__lt=before
    ).order_by("-month")
    short = []
    for month, stored, noted in rows.values_list("month", "stored_count", "zkb_count"):
        count = max(noted, counts.get(month, 0))
        if stored < count:
            short.append((month, stored, count))
    return short


def _share_since(month: Month, moment: datetime) -> float:
    """The share of `month` (up to now) after `moment`: 1 for a month that begins after it."""
    first, last = planner.month_days(month)
    start = datetime.combine(first, time(), tzinfo=UTC)
    end = min(datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC), timezone.now())
    if moment <= start or end <= start:
        return 1.0
    return max(0.0, min(1.0, (end - moment) / (end - start)))


def title(job: BackfillJob) -> str:
    """What the job is, in words: "an update of character 1 since 2026-11-28 19:59 UTC"."""
    if job.update_since is None:
        return f"a backfill of {job.target}"
    return f"an update of {job.target} since {_when(job.update_since)}"


def plan_lines(job: BackfillJob, plan: Plan, run: BackfillJob | None = None) -> list[str]:
    """What an update reads, in words, before the plan's own lines (none for other jobs).

    From the job and its plan alone, so a stored job's lines do not change; `run`: the last
    complete run the update follows, named when known (the estimate knows it).
    """
    if job.update_since is None:
        return []
    began = "the last complete run's start"
    if run:
        began = f"the start of backfill #{run.pk} ({_when(run.started_at or run.created_at)})"
    first = month_of(job.update_since)
    newer = sum(c for m, c in plan.months if m >= first)
    counted = f" (about {newer:,} killmails since then by zKillboard's statistics)"
    short = [f"{_month_text(m)} ({c:,} killmails)" for m, c in plan.months if m < first]
    return [
        f"update since {_when(job.update_since)}: {began} less "
        f"{settings.BACKFILL_UPDATE_OVERLAP_HOURS} h",
        "listing: whole-history pages newest first, up to the first one older than that "
        f"whose killmails are all stored{counted if plan.statistics else ''}",
        "then the short months (fewer stored than zKillboard counts): "
        f"{', '.join(short) or 'none'}",
    ]


def summary(job: BackfillJob) -> dict[str, Any]:
    """The job as `--json` prints it: `BackfillJob.summary()` and `update_since`."""
    since_iso = job.update_since.isoformat() if job.update_since else None
    return {**job.summary(), "update_since": since_iso}


def summary_line(job: BackfillJob) -> str:
    """The job's one line, naming an update and where it read back to."""
    line = job.summary_line()
    if job.update_since is None:
        return line
    head = str(job)
    return f"{head} (update since {_when(job.update_since)}){line[len(head) :]}"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _month_text(month: Month) -> str:
    return f"{month // 100}-{month % 100:02d}"
