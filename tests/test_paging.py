"""The paging arithmetic of `backfill.paging`: pure functions, no database, no network."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill import paging
from upstream.zkillboard import PageItem

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def items(*ids: int) -> list[PageItem]:
    return [PageItem(killmail_id, "", {}, None) for killmail_id in ids]


def after(cursor: str, *, full: bool, oldest: datetime | None = None, start=None) -> str | None:
    year, month, page = paging.parse_cursor(cursor)
    start = start or paging.HISTORY_START
    return paging.next_cursor(year, month, page, full=full, oldest=oldest, start=start, now=NOW)


@given(
    year=st.integers(min_value=2007, max_value=9999),
    month=st.integers(min_value=1, max_value=12),
    page=st.integers(min_value=1, max_value=paging.ZKB_MAX_PAGE),
)
def test_a_cursor_reads_back_as_the_page_it_names(year: int, month: int, page: int) -> None:
    assert paging.parse_cursor(paging.make_cursor(year, month, page)) == (year, month, page)
    assert paging.parse_cursor(paging.make_cursor(0, 0, page)) == (0, 0, page)


def test_cursors_are_spelled_as_jobs_store_them() -> None:
    assert paging.make_cursor(0, 0, 7) == "all/7"
    assert paging.make_cursor(2019, 5, 2) == "2019-05/2"


def test_a_full_page_is_followed_by_the_next_page() -> None:
    assert after("all/1", full=True) == "all/2"
    assert after("2019-05/99", full=True) == "2019-05/100"


def test_a_short_page_of_the_whole_history_ends_the_listing() -> None:
    assert after("all/3", full=False) is None


def test_a_full_page_100_goes_on_with_the_month_of_its_oldest_killmail() -> None:
    assert after("all/100", full=True, oldest=datetime(2021, 3, 9, tzinfo=UTC)) == "2021-03/1"
    assert after("all/100", full=True, oldest=None) == "2026-11/1"


def test_a_month_walk_goes_back_a_month_at_a_time_across_years() -> None:
    assert after("2021-03/4", full=False) == "2021-02/1"
    assert after("2021-01/1", full=False) == "2020-12/1"
    # A full page 100 of one month is as deep as zKillboard goes in it: on to the month before.
    assert after("2021-03/100", full=True) == "2021-02/1"


def test_a_month_walk_stops_before_its_first_month() -> None:
    assert after("2021-03/1", full=False, start=date(2021, 3, 1)) is None
    assert after("2021-03/1", full=False, start=date(2021, 2, 1)) == "2021-02/1"
    assert after("2007-12/1", full=False) is None


def test_the_walk_starts_at_from_date_else_the_birthday_else_2007() -> None:
    assert paging.history_start(date(2023, 1, 17), date(2010, 6, 5)) == date(2023, 1, 1)
    assert paging.history_start(None, date(2010, 6, 5)) == date(2010, 6, 1)
    assert paging.history_start(None, None) == date(2007, 12, 1)


def test_month_pages_list_only_killmails_older_than_the_boundary() -> None:
    page = items(130, 120, 110, 100)
    assert paging.listed_items(page, 2021, 120, None) == (items(110, 100), False)
    # The whole history has no boundary: every killmail of its pages is listed.
    assert paging.listed_items(page, 0, 120, None) == (page, False)


@pytest.mark.parametrize(
    ("left", "listed", "done"),
    [
        (None, [4, 3, 2, 1], False),
        (5, [4, 3, 2, 1], False),
        (4, [4, 3, 2, 1], True),
        (2, [4, 3], True),
    ],
)
def test_the_bound_cuts_the_page_and_ends_the_listing(left, listed, done) -> None:
    assert paging.listed_items(items(4, 3, 2, 1), 0, None, left) == (items(*listed), done)


def test_only_a_page_reaching_back_before_from_date_ends_the_listing() -> None:
    oldest = datetime(2023, 1, 1, 0, 30, tzinfo=UTC)
    assert paging.reached_from_date(oldest, date(2023, 1, 2))
    assert not paging.reached_from_date(oldest, date(2023, 1, 1))
    assert not paging.reached_from_date(None, date(2023, 1, 2))
    assert not paging.reached_from_date(oldest, None)


def test_page_100_of_the_whole_history_is_the_last_zkillboard_serves() -> None:
    assert paging.ends_whole_history(0, 100)
    assert not paging.ends_whole_history(0, 99)
    assert not paging.ends_whole_history(2021, 100)
    assert paging.is_full(items(*range(paging.ZKB_PAGE_SIZE)))
    assert not paging.is_full(items(*range(paging.ZKB_PAGE_SIZE - 1)))
