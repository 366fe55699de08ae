"""Backfill services: store a job's zKillboard pages and complete their bodies from ESI.

Each page is processed in one transaction that also moves the job's cursor (compare-and-set,
`backfill.lifecycle.move_cursor`), so a crash costs a retry of that page, never a killmail;
the caller holds the page's lease. A page's killmails with a body are stored at once; the
others become pending rows, fetched from ESI in chunks of BODY_CHUNK. Pending bodies are
owned through claims on their rows (a conditional UPDATE whose row count decides), so
redelivered or duplicated messages fetch no body twice; bodies fetched before an error are
stored before it propagates. The claim of an attempt that lost the database outlives it
(nothing could give it back), so that attempt's retry takes it over (`Claim`) instead of
waiting out the lease. Where the listing goes next is `backfill.paging`'s arithmetic.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from backfill import days, lifecycle, paging, planner, planning, updates
from backfill.models import BackfillJob, FailedKillmail, PendingKillmail
from backfill.planner import Plan
from killboard.ingest import Rejection, ingest_killmails, quarantine, update_zkb
from killboard.models import Killmail
from killboard.shapes import parse_time
from upstream.esi import EsiClient, EsiNotFound
from upstream.zkillboard import PageItem, ZkillboardClient

logger = logging.getLogger(__name__)

# Killmail bodies fetched from ESI by one task.
BODY_CHUNK = 50


@dataclass(frozen=True)
class PageOutcome:
    """What processing a page did and what comes next: the next page, the bodies to ask ESI
    for, and (once paging is done) the days whose raw dumps hold the rest."""

    next_cursor: str | None
    pending_ids: list[int]
    days: list[date] = field(default_factory=list)


@dataclass
class Claim:
    """One attempt's claim on pending bodies: its own token, and the tokens of the attempts
    of the same task before it, whose claims it takes over.

    An attempt that lost the database cannot give its claim back; without the takeover its
    retry would find the bodies claimed and wait out the lease (BACKFILL_LEASE_SECONDS) as
    if another worker held them. Only the retry an attempt schedules inherits its tokens
    (the task carries `tokens` to it), and every attempt claims under a token of its own:
    of two copies of one message (a broker's redelivery) the first to claim re-tokens the
    rows, and the second finds them held.
    """

    token: str
    inherited: tuple[str, ...] = ()
    taken: bool = False  # the claim was made: no row holds an inherited token any more

    @classmethod
    def after(cls, tokens: Iterable[str] | None = None) -> Claim:
        """A new attempt's claim, heir to `tokens` (those the attempt before it carried)."""
        return cls(str(uuid.uuid4()), tuple(tokens or ()))

    @property
    def tokens(self) -> list[str]:
        """What this attempt's retry inherits: the tokens rows may hold for it."""
        return [self.token] if self.taken else [*self.inherited, self.token]


@dataclass(frozen=True)
class BodiesOutcome:
    """What fetching a chunk of bodies left to do.

    `come_back_in`: seconds after which the caller must come back for bodies of the chunk
    still pending that it could not claim (another worker holds them, and may have died);
    0 when none is left.
    """

    come_back_in: float


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
    lifecycle.mark_started(job)
    plan = Plan.from_dict(job.plan)
    year, month, page = paging.parse_cursor(cursor)
    items = zkb.fetch_page(job.target_type, job.target_id, page, year, month)
    if job.walk_start_guessed and year and page == 1:
        if not _reaches(items, job.boundary_id):
            return _step_forward(job, cursor, year, month)
        lifecycle.confirm_walk_start(job_id)
    full = paging.is_full(items)
    left = None if job.max_killmails is None else job.max_killmails - job.killmails_listed
    items, done = paging.listed_items(items, year, job.boundary_id, left)
    oldest = None
    boundary_id = job.boundary_id
    ends_page_100 = paging.ends_whole_history(year, page) and full
    guessed = ends_page_100 and not job.from_date and _walk_start(job, plan, items)
    if guessed:
        oldest, boundary_id = guessed, items[-1].killmail_id
    elif items and (job.from_date or ends_page_100):
        items, oldest = _with_oldest_body(items, esi)
        if paging.ends_whole_history(year, page):
            boundary_id = items[-1].killmail_id
    done = done or paging.reached_from_date(oldest, job.from_date)
    stop = _update_stops(job, year, items)
    next_cursor = None if done else _next_cursor(job, plan, year, month, page, full, oldest, stop)
    if year:
        months: list[int | None] = [planner.month_key(year, month)] * len(items)
    else:
        listed = plan.months if plan else []
        months = [paging.month_at(job.killmails_listed + n, listed) for n in range(len(items))]
    dump_months = set(plan.dump_months) if plan else set()

    with transaction.atomic():
        counts = _store_page(
            job,
            items,
            months,
            dump_months,
            source=f"backfill #{job_id}, zKillboard page {cursor}",
        )
        if not lifecycle.move_cursor(job_id, cursor, next_cursor, boundary_id, bool(guessed)):
            # Cancelled meanwhile, or someone else did this page: keep nothing of ours.
            transaction.set_rollback(True)
            return PageOutcome(None, [])
        job.add_counts(pages_fetched=1, killmails_listed=len(items), **counts)
        # Paging done: the dense months' days, or ESI, for the bodies held for day dumps.
        dump_days, released = ([], []) if next_cursor else days.plan_dump_days(job)
    logger.info("Job %s: page %s done, %s listed, next %s", job_id, cursor, len(items), next_cursor)
    pending = set(pending_among(job_id, [i.killmail_id for i in items])) | set(released)
    return PageOutcome(next_cursor, sorted(pending, reverse=True), dump_days)


def _walk_start(job: BackfillJob, plan: Plan | None, items: list[PageItem]) -> datetime | None:
    """Where the month walk begins after a full page 100 whose last killmail came without a
    body: the month the statistics place it in, rather than an ESI call for its time (the
    walk's first month page checks the guess). None: the body or the statistics are there,
    or the job is an update (its plan counts only some months)."""
    if not items or items[-1].body is not None or not (plan and plan.statistics):
        return None
    if job.update_since:
        return None
    month = paging.month_at(job.killmails_listed + len(items) - 1, plan.months)
    return None if month is None else datetime(month // 100, month % 100, 1, tzinfo=UTC)


def _reaches(items: list[PageItem], boundary_id: int | None) -> bool:
    """Whether a month's first page shows a killmail at least as new as page 100's last:
    then the month is not older than that killmail's, and the walk may go back from it."""
    return bool(items) and boundary_id is not None and items[0].killmail_id >= boundary_id


def _step_forward(job: BackfillJob, cursor: str, year: int, month: int) -> PageOutcome:
    """The guessed month was older than page 100's last killmail: try the month after it
    (listing nothing of this page, which the walk reads again in its turn)."""
    after = date(year, month, 28) + timedelta(days=4)
    now = timezone.now()
    guessed = (after.year, after.month) <= (now.year, now.month)
    if not guessed:
        after = now.date()  # as new as it gets: the walk goes back from this month
    next_cursor = paging.make_cursor(after.year, after.month, 1)
    logger.info(
        "Job %s: the walk's first month %s was too old; trying %s", job.pk, cursor, next_cursor
    )
    with transaction.atomic():
        moved = lifecycle.move_cursor(job.pk, cursor, next_cursor, job.boundary_id, guessed)
        if moved:
            job.add_counts(pages_fetched=1)
    return PageOutcome(next_cursor if moved else None, [])


def _next_cursor(
    job: BackfillJob,
    plan: Plan | None,
    year: int,
    month: int,
    page: int,
    full: bool,
    oldest: datetime | None,
    stop: bool = False,
) -> str | None:
    """The cursor after this page (`paging.next_cursor`), with what it needs looked up.
    `stop`: an update's listing ends here, and its walk of the short months begins."""
    if year and full and page >= paging.ZKB_MAX_PAGE:
        logger.warning(
            "Job %s: month %s-%s has more than 20,000 killmails; zKillboard serves no more",
            job.pk,
            year,
            month,
        )
    # Only a step back to the month before needs the walk's first month (and with it, maybe,
    # the birthday): a page that goes on within its month costs no query.
    steps_back = stop or (year and not (full and page < paging.ZKB_MAX_PAGE))
    start = (
        planning.target_start(job.target_type, job.target_id, job.from_date)
        if steps_back
        else paging.HISTORY_START
    )
    months = _walk_months(job, plan) if steps_back else None
    if stop and job.update_since:
        walk = paging.update_walk(job.update_since, start, months or ())
        logger.info("Job %s: update listing ends at page %s; then %s", job.pk, page, walk)
        return walk
    return paging.next_cursor(
        year,
        month,
        page,
        full=full,
        oldest=oldest,
        start=start,
        now=timezone.now(),
        months=months,
    )


def _walk_months(job: BackfillJob, plan: Plan | None) -> Collection[int] | None:
    """The months a month walk may read (None: any): those the statistics count killmails
    in; for an update, those since update_since's month and the short ones before it."""
    if job.update_since:
        return updates.walk_months(job, plan)
    return plan.listed_months if plan else None


def _update_stops(job: BackfillJob, year: int, items: list[PageItem]) -> bool:
    """Whether an update's whole-history listing ends with this page (`paging.update_stops`),
    judged before the page is stored. Only a page whose killmails are all stored can end it,
    so the store's killmail_time gives the time of its oldest."""
    if job.update_since is None or year or not items:
        return False
    ids = {item.killmail_id for item in items}
    times = dict(
        Killmail.objects.filter(killmail_id__in=ids).values_list("killmail_id", "killmail_time")
    )
    oldest = min(times.values(), default=None)
    return paging.update_stops(len(times) == len(ids), oldest, job.update_since)


def _store_page(
    job: BackfillJob,
    items: list[PageItem],
    months: list[int | None],
    dump_months: set[int],
    source: str,
) -> dict[str, int]:
    """Store a page's killmails (inside the page's transaction); return counter increments.

    `months`: each item's month (YYYYMM), when known. Bodies missing from the page wait for
    ESI, or for the raw day dumps when their month is one of the plan's `dump_months`.
    """
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
    older, newer = _outside_dates(job, [(item.killmail_id, item.body) for item in with_body])
    with_body = [item for item in with_body if item.killmail_id not in older | newer]
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
    month_of = {item.killmail_id: month for item, month in zip(items, months, strict=True)}
    PendingKillmail.objects.bulk_create(
        [
            PendingKillmail(
                job=job,
                killmail_id=item.killmail_id,
                killmail_hash=item.killmail_hash,
                zkb=item.zkb,
                month=month_of[item.killmail_id],
                from_dump=month_of[item.killmail_id] in dump_months,
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
        "skipped_newer": len(newer),
    }


def _outside_dates(job: BackfillJob, bodies: list[tuple[int, Any]]) -> tuple[set[int], set[int]]:
    """Ids of the bodies before the job's from_date and after its to_date: listed, not stored."""
    if not job.from_date and not job.to_date:
        return set(), set()
    start = job.from_date and datetime.combine(job.from_date, datetime.min.time(), tzinfo=UTC)
    end = job.to_date and datetime.combine(
        job.to_date + timedelta(days=1), datetime.min.time(), tzinfo=UTC
    )
    older, newer = set(), set()
    for killmail_id, body in bodies:
        time = _body_time(body)
        if time is not None and start and time < start:
            older.add(killmail_id)
        elif time is not None and end and time >= end:
            newer.add(killmail_id)
    return older, newer


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


def claim_pending(job_id: int, killmail_ids: Iterable[int], claim: Claim) -> list[PendingKillmail]:
    """Claim the pending bodies among `killmail_ids` that no live worker holds, and those
    the attempts before `claim`'s left claimed; return them, newest first."""
    now = timezone.now()
    claimable = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    if claim.inherited:
        claimable |= Q(claim__in=claim.inherited)
    PendingKillmail.objects.filter(
        claimable, job_id=job_id, killmail_id__in=list(killmail_ids)
    ).update(
        claim=claim.token,
        claimed_until=now + timedelta(seconds=settings.BACKFILL_LEASE_SECONDS),
    )
    claim.taken = True
    return list(PendingKillmail.objects.filter(claim=claim.token).order_by("-killmail_id"))


def fetch_bodies(
    job_id: int, killmail_ids: list[int], esi: EsiClient, claim: Claim | None = None
) -> BodiesOutcome:
    """Fetch the pending bodies among `killmail_ids` from ESI and store them.

    Bodies fetched before a transient error are stored before the error propagates, so the
    retry fetches only the rest; the retry of an attempt that lost the database takes over
    its `claim` (a new one by default). A 422 (wrong id or hash) is recorded on the job. The
    outcome says when to come back for bodies other workers claimed.
    """
    claim = claim or Claim.after()
    job = BackfillJob.objects.get(pk=job_id)
    if not job.is_active:
        return BodiesOutcome(come_back_in=0.0)
    claimed = claim_pending(job_id, killmail_ids, claim)
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


def pending_among(job_id: int, killmail_ids: list[int] | None) -> list[int]:
    """Those of `killmail_ids` (None: all) whose bodies the job waits for from ESI, newest
    first (not those waiting for a day dump)."""
    pending = PendingKillmail.objects.filter(job_id=job_id, from_dump=False)
    if killmail_ids is not None:
        pending = pending.filter(killmail_id__in=killmail_ids)
    return list(pending.order_by("-killmail_id").values_list("killmail_id", flat=True))


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
    older, newer = _outside_dates(job, [(p.killmail_id, body) for p, body in answered])
    records = [
        {**body, "zkb": p.zkb} if p.zkb else body
        for p, body in answered
        if p.killmail_id not in older | newer
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
            skipped_newer=len(newer),
        )


def pending_chunks(job_id: int) -> list[list[int]]:
    """The job's body ids pending at ESI in chunks of BODY_CHUNK, newest first."""
    return chunked(pending_among(job_id, None))


def chunked(ids: list[int]) -> list[list[int]]:
    """Body ids in chunks of BODY_CHUNK, one ESI task each."""
    return [ids[start : start + BODY_CHUNK] for start in range(0, len(ids), BODY_CHUNK)]


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
