"""Where a backfill stands in zKillboard's listing and where it goes next: pure arithmetic.

Paging (zKillboard rules): pages 1..100 of the target's whole history, newest first, 200
killmails a page; when page 100 is full, the rest is walked month by month (`year/Y/month/M/`,
newest month first) listing only killmails older than the last one of page 100. A page with
fewer than 200 killmails ends its listing. `from_date` ends the walk at the first killmail
before it; `max_pages x limit` bounds the killmails listed. With `to_date` the walk is month
by month from to_date's month. When zKillboard's statistics tell which months hold killmails
(`months`, YYYYMM), the month walk skips the others. An update (`backfill.updates`) ends its
whole-history listing at the first page all stored and older than `update_since`, then walks
only the given (short) months before update_since's month.

A job's place is its cursor: `all/N` (page N of the whole history) or `YYYY-MM/N` (page N of
one month). Nothing here touches the database, the network or the clock: callers pass in
what they looked up (the oldest killmail time of a page, the character's birthday, now).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import date, datetime, timedelta

from upstream.zkillboard import PageItem

# zKillboard's page size and its deepest page for one filter.
ZKB_PAGE_SIZE = 200
ZKB_MAX_PAGE = 100
# zKillboard's history starts here; a month walk never goes further back.
HISTORY_START = date(2007, 12, 1)


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


def is_full(items: Sequence[PageItem]) -> bool:
    """Whether zKillboard served a whole page: only then may another page follow."""
    return len(items) == ZKB_PAGE_SIZE


def ends_whole_history(year: int, page: int) -> bool:
    """Whether this is page 100 of the whole history, the last one zKillboard serves."""
    return not year and page == ZKB_MAX_PAGE


def listed_items(
    items: list[PageItem], year: int, boundary_id: int | None, left: int | None
) -> tuple[list[PageItem], bool]:
    """The page's killmails the job lists, and whether that uses up its bound.

    A month page lists only killmails older than `boundary_id` (the last of page 100: newer
    ones were listed by the whole history already). `left` is how many killmails the job may
    still list (None: no bound).
    """
    if year and boundary_id:
        items = [item for item in items if item.killmail_id < boundary_id]
    if left is not None and len(items) >= left:
        return items[:left], True
    return items, False


def reached_from_date(oldest: datetime | None, from_date: date | None) -> bool:
    """Whether the page reaches back before from_date: the listing ends with it."""
    return bool(from_date and oldest and oldest.date() < from_date)


def history_start(from_date: date | None, birthday: date | None) -> date:
    """The first month a month walk must cover: from_date's, else the target's birthday's
    (a character's, a corporation's or alliance's founding), else 2007-12."""
    if from_date:
        return from_date.replace(day=1)
    if birthday:
        return max(birthday.replace(day=1), HISTORY_START)
    return HISTORY_START


def _month_before(year: int, month: int) -> date:
    return (date(year, month, 1) - timedelta(days=1)).replace(day=1)


def _month_walk_from(first: date, start: date, months: Collection[int] | None) -> str | None:
    """The cursor of the first month page from `first` back to `start` that may hold
    killmails (any, when `months` is unknown), or None when there is none."""
    while first >= start:
        if months is None or first.year * 100 + first.month in months:
            return make_cursor(first.year, first.month, 1)
        first = _month_before(first.year, first.month)
    return None


def first_cursor(to_date: date | None, start: date, months: Collection[int] | None) -> str | None:
    """Where a job's listing begins: page 1 of the whole history, or with `to_date` the
    month walk from to_date's month (None: the statistics count nothing to list)."""
    if to_date is None:
        return make_cursor(0, 0, 1)
    return _month_walk_from(to_date.replace(day=1), start, months)


def month_at(position: int, months: Sequence[Sequence[int]]) -> int | None:
    """The month (YYYYMM) of the killmail at `position` (0: the newest) of a whole-history
    listing, by the statistics' counts per month (newest first); None beyond them."""
    for month, count in months:
        if position < count:
            return month
        position -= count
    return None


def next_cursor(
    year: int,
    month: int,
    page: int,
    *,
    full: bool,
    oldest: datetime | None,
    start: date,
    now: datetime,
    months: Collection[int] | None = None,
) -> str | None:
    """The cursor after this page, or None when the listing ends here.

    `full`: the page held 200 killmails; `oldest`: the time of its oldest killmail, when
    known; `start`: the first month of the walk (`history_start`). A full page 100 of the
    whole history goes on month by month from the month of its oldest killmail (from `now`'s
    when unknown); a full page 100 of a month is as deep as zKillboard goes in it. `months`:
    the months that hold killmails, when known; the walk skips the others.
    """
    if full and page < ZKB_MAX_PAGE:
        return make_cursor(year, month, page + 1)
    if not year:
        if not full:
            return None
        begin = oldest or now
        return make_cursor(begin.year, begin.month, 1)
    return _month_walk_from(_month_before(year, month), start, months)


def update_stops(all_stored: bool, oldest: datetime | None, update_since: datetime) -> bool:
    """Whether an update's whole-history listing ends with this page: every killmail on it
    was stored already and its oldest is older than `update_since` (a page with one killmail
    not stored yet never ends it: the pages after it may hold more)."""
    return all_stored and oldest is not None and oldest < update_since


def update_walk(update_since: datetime, start: date, months: Collection[int]) -> str | None:
    """Where an update goes once its listing stopped: page 1 of the newest of `months` (the
    short ones) before update_since's month, back to `start`; None when there is none."""
    return _month_walk_from(_month_before(update_since.year, update_since.month), start, months)
