"""Make a job's plan from what the upstreams and the store tell (`backfill.planner` decides).

`scoped_plan` asks zKillboard's statistics of a target (one request), `history_plan` asks
R2Z2's `totals.json` (one request) and the store's counts per day; `--estimate` prints either
without creating a job. `plan_job` makes a queued job's plan and stores it with where the
job begins: its first page, or for a history job, its days.
"""

from __future__ import annotations

import logging
from datetime import UTC, date

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backfill import coverage, days, paging, planner, updates
from backfill.models import BackfillDay, BackfillJob, DayCoverage
from backfill.planner import Plan, Rates
from killboard.models import Alliance, Character, Corporation
from killboard.signals import entity_details_wanted
from upstream.esi import DEFAULT_BUCKET, bucket_interval
from upstream.r2z2 import R2z2Client
from upstream.zkillboard import ZkillboardClient, ZkillboardRejected

logger = logging.getLogger(__name__)

# Where a target's history begins when the store knows its entity: (model, field).
BIRTHDAYS = {
    BackfillJob.TargetType.CHARACTER: (Character, "birthday"),
    BackfillJob.TargetType.CORPORATION: (Corporation, "date_founded"),
    BackfillJob.TargetType.ALLIANCE: (Alliance, "date_founded"),
}


def rates() -> Rates:
    """The request rates this deployment keeps, for the plans' time estimates."""
    return Rates(
        zkillboard=settings.ZKILLBOARD_REQUESTS_PER_SECOND,
        r2z2=settings.R2Z2_REQUESTS_PER_SECOND,
        esi_killmails=1 / bucket_interval(*DEFAULT_BUCKET, settings.ESI_BUCKET_SHARE),
    )


def target_start(target_type: str, target_id: int, from_date: date | None) -> date:
    """The first month a walk must cover: from_date's, else the character's birthday or the
    corporation's or alliance's founding when the store knows it, else 2007-12."""
    birthday = None
    if not from_date and target_type in BIRTHDAYS:
        model, name = BIRTHDAYS[BackfillJob.TargetType(target_type)]
        birthday = model.objects.filter(id=target_id).values_list(name, flat=True).first()
    return paging.history_start(from_date, birthday.date() if birthday else None)


def scoped_plan(
    target_type: str,
    target_id: int,
    *,
    from_date: date | None,
    to_date: date | None,
    bound: int | None,
    zkb: ZkillboardClient,
) -> Plan:
    """The plan of a backfill of one target, from zKillboard's statistics (one request)."""
    try:
        stats = zkb.stats(target_type, target_id)
    except ZkillboardRejected as exc:
        logger.warning("No statistics for %s %s: %s", target_type, target_id, exc)
        return Plan(kind="scoped", killmails=0, statistics=False)
    if not from_date and target_type in BIRTHDAYS:
        # The walk starts at the target's birthday or founding: have its details (one ESI
        # call, when missing or stale) fetched first, by enrichment.
        entity_details_wanted.send(sender=BackfillJob, kind=str(target_type), ids=[target_id])
    first = target_start(target_type, target_id, from_date)
    last = to_date or timezone.now().astimezone(UTC).date()
    return planner.plan_target(
        {planner.month_key(*month): count for month, count in stats.months.items()},
        first=first,
        last=last,
        to_date=to_date,
        bound=bound,
        raw_since=settings.R2Z2_RAW_SINCE,
    )


def history_plan(from_date: date, to_date: date | None, r2z2: R2z2Client) -> Plan:
    """The plan of a history backfill of from_date..to_date (yesterday at the latest)."""
    totals = r2z2.totals()
    last = min(to_date or days.yesterday(), days.yesterday())
    complete = dict(
        DayCoverage.objects.filter(day__range=(from_date, last), complete=True).values_list(
            "day", "zkb_count"
        )
    )
    return planner.plan_history(
        totals,
        first=from_date,
        last=last,
        complete=complete,
        stored=coverage.stored_per_day(from_date, last),
        raw_since=settings.R2Z2_RAW_SINCE,
    )


def plan_job(job_id: int, zkb: ZkillboardClient, r2z2: R2z2Client) -> BackfillJob:
    """Make and store the plan of a queued job that has none, and where it begins."""
    job = BackfillJob.objects.get(pk=job_id)
    if not job.needs_plan or not job.is_active:
        return job
    if job.target_type == BackfillJob.TargetType.HISTORY:
        assert job.from_date is not None
        plan = history_plan(job.from_date, job.to_date, r2z2)
        with transaction.atomic():
            BackfillDay.objects.bulk_create(
                [
                    BackfillDay(job=job, day=date.fromisoformat(day), count=count)
                    for day, count in plan.days
                ],
                ignore_conflicts=True,
            )
            _store_plan(job, plan, cursor=None, dumps=1)
    else:
        plan = scoped_plan(
            job.target_type,
            job.target_id,
            from_date=job.from_date,
            to_date=job.to_date,
            bound=job.max_killmails,
            zkb=zkb,
        )
        coverage.record_target_months(job, dict(plan.months))
        if job.update_since:  # only the months since, and the short ones; no day dumps
            plan = updates.update_plan(job, plan)
        start = target_start(job.target_type, job.target_id, job.from_date)
        cursor = paging.first_cursor(job.to_date, start, plan.listed_months)
        _store_plan(job, plan, cursor=cursor)
    job.refresh_from_db()
    return job


def _store_plan(job: BackfillJob, plan: Plan, *, cursor: str | None, dumps: int = 0) -> None:
    """Store the plan and the first cursor (None: nothing to list); count the downloads."""
    BackfillJob.objects.active().filter(pk=job.pk).update(
        plan=plan.as_dict(),
        cursor=cursor or job.cursor,
        paging_done=cursor is None,
        updated_at=timezone.now(),
    )
    job.add_counts(dumps_fetched=dumps)
