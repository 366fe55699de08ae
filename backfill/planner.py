"""The planner: what a job will cost upstream, and which source serves which part of it.

Costs are counted in requests, the unit the upstreams' rules limit, and turned into time at
the rates this deployment keeps (`Rates`). Everything here is arithmetic over what one or
two requests tell (zKillboard's statistics of a target, R2Z2's `totals.json`) and the store's
own counts, so `--estimate` costs at most two requests and fetches no body.

A scoped job (a character, corporation, alliance, ship type, system or region) lists its
killmails from zKillboard's pages: the whole history first (100 pages at most), then month by
month, skipping the months the statistics count nothing in. Pages carry the bodies since
2026-06-27; a page that does not leaves its killmails to ESI, one call each, or to R2Z2's raw
day dumps, one download per day whatever the day holds. A month is dense when it has more
of the target's killmails than days with a raw dump: its missing bodies come from those days'
dumps (the month's days are walked, newest first). A sparse month takes ESI: a quiet
character never downloads a day of the whole game for one killmail.

A history job (every killmail of some UTC days) lists each day from its id dump and takes the
bodies from the day's raw dump where R2Z2 has one (since `R2Z2_RAW_SINCE`), from ESI for the
rest. A day the store holds completely is skipped unless zKillboard's count of it changed.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from backfill.paging import ZKB_MAX_PAGE, ZKB_PAGE_SIZE

# A month as the plan keys it: 202608 for August 2026.
Month = int


def month_key(year: int, month: int) -> Month:
    return year * 100 + month


def month_of(day: date) -> Month:
    return month_key(day.year, day.month)


@dataclass(frozen=True)
class Rates:
    """Requests a second this deployment allows itself per upstream (for the time estimate)."""

    zkillboard: float
    r2z2: float
    esi_killmails: float


@dataclass
class Plan:
    """A job's plan: its cost per upstream, its sources, and the figures it was made from.

    For a scoped job `esi_calls` and `dump_downloads` are the bodies' cost when the pages
    carry none (before 2026-06-27 zKillboard's never did); with bodies on the pages both are 0.
    """

    kind: str  # "scoped" or "history"
    killmails: int  # what the upstream counts in the job's range
    # Scoped: whether zKillboard's statistics answered (else months are unknown, not empty).
    statistics: bool = True
    zkillboard_requests: int = 0
    dump_downloads: int = 0
    esi_calls: int = 0
    # Scoped: [[YYYYMM, count], ...] newest first, from zKillboard's statistics.
    months: list[list[int]] = field(default_factory=list)
    # Scoped: the months whose missing bodies come from raw day dumps.
    dump_months: list[Month] = field(default_factory=list)
    # History: the days to fetch ([["YYYY-MM-DD", zKillboard's count], ...]), and how many
    # were skipped as already complete.
    days: list[list[Any]] = field(default_factory=list)
    days_skipped: int = 0
    days_with_raw: int = 0

    @property
    def listed_months(self) -> set[Month] | None:
        """The months that hold killmails, when the statistics tell (the walk skips others)."""
        return {month for month, _ in self.months} if self.statistics else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan | None:
        """The plan stored on a job, or None for a job planned before plans existed."""
        return cls(**data) if data else None

    def seconds(self, rates: Rates) -> dict[str, float]:
        """How long each upstream's share takes at the deployment's rates."""
        return {
            "zKillboard": self.zkillboard_requests / rates.zkillboard,
            "R2Z2": self.dump_downloads / rates.r2z2,
            "ESI": self.esi_calls / rates.esi_killmails,
        }

    def lines(self, rates: Rates) -> list[str]:
        """The plan in words, as `--estimate` prints it and the admin shows it."""
        took = self.seconds(rates)
        total = _duration(sum(took.values()))
        if self.kind == "history":
            return [
                f"{len(self.days)} days to fetch ({self.days_skipped} skipped: already "
                f"complete), {self.killmails:,} killmails by zKillboard's count",
                f"R2Z2: {self.dump_downloads} downloads (totals, {len(self.days)} id lists, "
                f"{self.days_with_raw} raw days), about {_duration(took['R2Z2'])}",
                f"ESI: {self.esi_calls:,} killmail calls for days without a raw dump, "
                f"about {_duration(took['ESI'])}",
                f"total: about {total} at the configured rates",
            ]
        if not self.statistics:
            return [
                "zKillboard's statistics did not answer: the walk reads every page and month, "
                "and bodies missing from the pages come from ESI"
            ]
        dense = ", ".join(_month_text(m) for m in self.dump_months) or "none"
        return [
            f"{self.killmails:,} killmails over {len(self.months)} months by zKillboard's "
            "statistics",
            f"zKillboard: {self.zkillboard_requests} requests (statistics and pages), "
            f"about {_duration(took['zKillboard'])}",
            "bodies: from the pages when they carry them (zKillboard's do since 2026-06-27); "
            "for pages without:",
            f"  R2Z2 raw day dumps for the dense months ({dense}): at most "
            f"{self.dump_downloads} downloads, about {_duration(took['R2Z2'])}",
            f"  ESI for the rest: at most {self.esi_calls:,} calls, about {_duration(took['ESI'])}",
            f"total: at most about {total} at the configured rates",
        ]


def _month_text(month: Month) -> str:
    return f"{month // 100}-{month % 100:02d}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def month_days(month: Month) -> tuple[date, date]:
    """The first and the last day of a month."""
    year, number = divmod(month, 100)
    return date(year, number, 1), date(year, number, calendar.monthrange(year, number)[1])


def raw_days(month: Month, first: date, last: date, raw_since: date) -> int:
    """Days of `month` within first..last that R2Z2 has a raw dump for."""
    start, end = month_days(month)
    start, end = max(start, first, raw_since), min(end, last)
    return max(0, (end - start).days + 1)


def is_dense(bodies: int, days: int) -> bool:
    """Whether a month's raw day dumps cost fewer requests than its bodies from ESI."""
    return 0 < days < bodies


def _pages(count: int) -> int:
    """Requests to list `count` killmails of one filter: a full page asks for the next one."""
    return min(ZKB_MAX_PAGE, count // ZKB_PAGE_SIZE + 1)


def listing_requests(
    months: list[tuple[Month, int]], *, to_date: date | None, bound: int | None
) -> int:
    """zKillboard page requests to list the months' killmails as `backfill.paging` walks.

    `months`: (month, count) newest first, within the job's range. Without `to_date` the
    walk reads the whole history (100 pages at most), then month by month from the month of
    page 100's last killmail; with `to_date` it goes month by month from the start. Months
    with no killmail are skipped. `bound`: at most this many killmails (max_pages x limit).
    """
    total = sum(count for _, count in months)
    if bound is not None:
        total = min(total, bound)
    if to_date is None:
        whole = _pages(total)
        if bound is not None:
            whole = min(whole, max(1, -(-bound // ZKB_PAGE_SIZE)))
        if total < ZKB_MAX_PAGE * ZKB_PAGE_SIZE:
            return whole
        # Page 100 was full: the month walk starts at the month of its last killmail.
        seen, start = 0, len(months)
        for index, (_, count) in enumerate(months):
            seen += count
            if seen >= ZKB_MAX_PAGE * ZKB_PAGE_SIZE:
                start = index
                break
        return whole + sum(_pages(count) for _, count in months[start:] if count)
    return sum(_pages(count) for _, count in months if count) or 1


def plan_target(
    months: Mapping[Month, int],
    *,
    first: date,
    last: date,
    to_date: date | None,
    bound: int | None,
    raw_since: date,
) -> Plan:
    """The plan of a scoped job from its statistics' `months` (month: count).

    `first`..`last`: the days the job covers (from_date or the target's birth, to_date or
    today). The cost of listing counts the statistics request too.
    """
    window = sorted(
        ((m, c) for m, c in months.items() if month_of(first) <= m <= month_of(last) and c > 0),
        reverse=True,
    )
    dense = [m for m, c in window if is_dense(c, raw_days(m, first, last, raw_since))]
    return Plan(
        kind="scoped",
        killmails=sum(c for _, c in window),
        zkillboard_requests=1 + listing_requests(window, to_date=to_date, bound=bound),
        dump_downloads=sum(raw_days(m, first, last, raw_since) for m in dense),
        esi_calls=sum(c for m, c in window if m not in dense),
        months=[[m, c] for m, c in window],
        dump_months=dense,
    )


def plan_history(
    totals: Mapping[date, int],
    *,
    first: date,
    last: date,
    complete: Mapping[date, int],
    stored: Mapping[date, int],
    raw_since: date,
) -> Plan:
    """The plan of a history job over the days first..last.

    `totals`: zKillboard's count per day (history/totals.json); `complete`: the days the store
    holds completely, with the count they had then; `stored`: killmails stored per day.
    """
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    todo = [d for d in days if d not in complete or complete[d] != totals.get(d, 0)]
    missing = {d: max(0, totals.get(d, 0) - stored.get(d, 0)) for d in todo}
    # A raw dump is one download whatever the day holds: taken for two missing bodies or more.
    with_raw = {d for d in todo if d >= raw_since and is_dense(missing[d], 1)}
    return Plan(
        kind="history",
        killmails=sum(totals.get(d, 0) for d in days),
        dump_downloads=1 + len(todo) + len(with_raw),
        esi_calls=sum(missing[d] for d in todo if d not in with_raw),
        days=[[d.isoformat(), totals.get(d, 0)] for d in todo],
        days_skipped=len(days) - len(todo),
        days_with_raw=len(with_raw),
    )


@dataclass(frozen=True)
class DumpDay:
    """A day of a dense month, as the walk over its raw dumps knows it so far."""

    day: date
    done: bool
    # The smallest and largest killmail id of its raw dump, once read (None: not read yet,
    # or R2Z2 had no dump of it).
    first_id: int | None = None
    last_id: int | None = None


def next_dump_day(wanted: int, days: Sequence[DumpDay]) -> date | None:
    """The day not done yet whose raw dump most likely holds killmail `wanted`, or None
    when no such day can hold it.

    Killmail ids grow with time, so the dumps read so far bracket `wanted` between the
    newest day read before it and the oldest read after it. Within the bracket, the guess
    goes back from the day after it at the ids per day of the days read; a wrong guess only
    narrows the bracket for the next one. The first day of a walk is the month's newest.
    """
    read = [
        (d.day, d.first_id, d.last_id)
        for d in days
        if d.first_id is not None and d.last_id is not None
    ]
    if any(first <= wanted <= last for _, first, last in read):
        return None  # within a day that did not hold it: no dump has it
    after = min(((day, first, last) for day, first, last in read if first > wanted), default=None)
    low = max((day for day, _, last in read if last < wanted), default=None)
    candidates = [
        d.day
        for d in days
        if not d.done and (after is None or d.day < after[0]) and (low is None or d.day > low)
    ]
    if not candidates:
        return None
    if after is None:
        return max(candidates)
    high, first, _ = after
    (oldest, lowest, _), (newest, _, highest) = min(read), max(read)
    per_day = (highest - lowest + 1) / ((newest - oldest).days + 1)
    guess = high - timedelta(days=math.ceil((first - wanted) / per_day))
    return min(candidates, key=lambda day: (abs((day - guess).days), day))
