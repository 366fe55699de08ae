"""The planner's arithmetic: listing requests, dense and sparse months, history days."""

from __future__ import annotations

from datetime import UTC, date, datetime

from backfill import paging, planner
from backfill.planner import Plan, Rates

RAW_SINCE = date(2026, 7, 1)


def test_listing_a_small_history_takes_its_pages_and_one_for_an_exact_multiple():
    assert planner.listing_requests([(202608, 450)], to_date=None, bound=None) == 3
    assert planner.listing_requests([(202608, 400)], to_date=None, bound=None) == 3
    assert planner.listing_requests([(202608, 399)], to_date=None, bound=None) == 2
    assert planner.listing_requests([], to_date=None, bound=None) == 1


def test_a_bound_stops_the_listing_at_its_page():
    assert planner.listing_requests([(202608, 5000)], to_date=None, bound=200) == 1
    assert planner.listing_requests([(202608, 5000)], to_date=None, bound=450) == 3


def test_past_page_100_the_walk_goes_month_by_month_from_page_100s_last_month():
    months = [(202612 - n, 1000) for n in range(12)] + [(202512 - n, 1000) for n in range(18)]
    # 20 months fill 100 pages; the 20th (index 19) is read again by month, then the 10 older.
    assert planner.listing_requests(months, to_date=None, bound=None) == 100 + 11 * 6


def test_with_to_date_the_walk_is_by_month_and_skips_empty_months():
    months = [(202610, 450), (202608, 20), (202601, 200)]
    assert planner.listing_requests(months, to_date=date(2026, 10, 31), bound=None) == 3 + 1 + 2


def test_a_dense_month_takes_raw_dumps_and_a_sparse_one_esi():
    plan = planner.plan_target(
        {202608: 300, 202609: 5, 202605: 40},
        first=date(2026, 1, 1),
        last=date(2026, 9, 30),
        to_date=None,
        bound=None,
        raw_since=RAW_SINCE,
    )
    assert plan.dump_months == [202608]
    assert plan.dump_downloads == 31
    # September is sparse (5 bodies, 30 raw days); May has no raw dumps at all.
    assert plan.esi_calls == 5 + 40
    assert plan.killmails == 345
    assert plan.zkillboard_requests == 1 + 2  # statistics, then 345 killmails in 2 pages
    assert plan.months == [[202609, 5], [202608, 300], [202605, 40]]


def test_raw_days_are_cut_to_the_job_and_to_what_r2z2_has():
    assert planner.raw_days(202607, date(2026, 7, 10), date(2026, 7, 20), RAW_SINCE) == 11
    assert planner.raw_days(202606, date(2026, 1, 1), date(2026, 12, 31), RAW_SINCE) == 0
    assert not planner.is_dense(500, 0)
    assert planner.is_dense(32, 31)
    assert not planner.is_dense(31, 31)


def test_months_outside_the_job_are_left_out():
    plan = planner.plan_target(
        {202608: 300, 202501: 99},
        first=date(2026, 8, 1),
        last=date(2026, 8, 31),
        to_date=date(2026, 8, 31),
        bound=None,
        raw_since=RAW_SINCE,
    )
    assert plan.months == [[202608, 300]]
    assert plan.zkillboard_requests == 1 + 2


def test_history_skips_complete_days_unless_their_count_changed():
    totals = {date(2026, 8, 1): 100, date(2026, 8, 2): 50, date(2026, 8, 3): 70}
    plan = planner.plan_history(
        totals,
        first=date(2026, 8, 1),
        last=date(2026, 8, 3),
        complete={date(2026, 8, 1): 100, date(2026, 8, 2): 40},
        stored={date(2026, 8, 1): 100, date(2026, 8, 2): 40},
        raw_since=RAW_SINCE,
    )
    assert plan.days == [["2026-08-02", 50], ["2026-08-03", 70]]
    assert plan.days_skipped == 1
    assert plan.days_with_raw == 2
    assert plan.dump_downloads == 1 + 2 + 2
    assert plan.esi_calls == 0
    assert plan.killmails == 220


def test_history_before_raw_dumps_takes_the_missing_bodies_from_esi():
    totals = {date(2026, 5, 1): 100, date(2026, 5, 2): 50}
    plan = planner.plan_history(
        totals,
        first=date(2026, 5, 1),
        last=date(2026, 5, 2),
        complete={},
        stored={date(2026, 5, 1): 30},
        raw_since=RAW_SINCE,
    )
    assert plan.esi_calls == 70 + 50
    assert plan.dump_downloads == 1 + 2
    assert plan.days_with_raw == 0


def test_a_plan_round_trips_through_the_job_and_reads_in_words():
    plan = planner.plan_target(
        {202608: 300},
        first=date(2026, 8, 1),
        last=date(2026, 8, 31),
        to_date=None,
        bound=None,
        raw_since=RAW_SINCE,
    )
    assert Plan.from_dict(plan.as_dict()) == plan
    assert Plan.from_dict({}) is None
    lines = plan.lines(Rates(zkillboard=1.0, r2z2=10.0, esi_killmails=1.9))
    assert "300 killmails over 1 months" in lines[0]
    assert "3 requests" in lines[1]
    assert "3 s" in lines[1]
    assert "(2026-08): at most 31 downloads" in lines[3]
    assert Plan(kind="scoped", killmails=0, statistics=False).listed_months is None


def test_the_walk_begins_at_to_dates_month_or_the_newest_month_with_killmails_before_it():
    start = date(2020, 1, 1)
    assert paging.first_cursor(None, start, None) == "all/1"
    assert paging.first_cursor(date(2026, 8, 15), start, None) == "2026-08/1"
    assert paging.first_cursor(date(2026, 8, 15), start, {202605, 202601}) == "2026-05/1"
    assert paging.first_cursor(date(2026, 8, 15), start, set()) is None


def test_the_month_walk_skips_months_the_statistics_count_nothing_in():
    now = datetime(2026, 11, 1, tzinfo=UTC)
    step = {"full": False, "oldest": None, "start": date(2025, 1, 1), "now": now}
    assert paging.next_cursor(2026, 8, 1, months={202605, 202601}, **step) == "2026-05/1"
    assert paging.next_cursor(2026, 1, 1, months={202605, 202601}, **step) is None
    assert paging.next_cursor(2026, 8, 1, months=None, **step) == "2026-07/1"


def test_a_listing_position_falls_in_the_month_the_statistics_give_it():
    months = [[202609, 2], [202608, 3]]
    assert [paging.month_at(n, months) for n in range(6)] == [
        202609,
        202609,
        202608,
        202608,
        202608,
        None,
    ]


def test_a_dense_months_walk_begins_at_its_newest_day_and_jumps_by_the_ids_per_day():
    days = [planner.DumpDay(date(2026, 8, n), done=False) for n in range(1, 32)]
    assert planner.next_dump_day(5_000, days) == date(2026, 8, 31)

    # The 31st held ids 31,000..31,999: 1,000 a day, so 5,000 is 26 days back.
    days[30] = planner.DumpDay(date(2026, 8, 31), True, 31_000, 31_999)
    assert planner.next_dump_day(5_000, days) == date(2026, 8, 5)


def test_a_wrong_guess_narrows_the_bracket_and_nothing_is_skipped_past():
    days = [planner.DumpDay(date(2026, 8, n), done=False) for n in range(1, 32)]
    days[30] = planner.DumpDay(date(2026, 8, 31), True, 31_000, 31_999)
    # The guess (the 5th) turned out older than the killmail: it lies between the 6th and 30th.
    days[4] = planner.DumpDay(date(2026, 8, 5), True, 4_000, 4_999)
    assert planner.next_dump_day(5_500, days) == date(2026, 8, 6)
    days[5] = planner.DumpDay(date(2026, 8, 6), True, 6_000, 6_999)
    assert planner.next_dump_day(5_500, days) is None  # between two days read: in neither


def test_no_day_can_hold_a_killmail_within_a_read_day_or_past_every_open_day():
    days = [
        planner.DumpDay(date(2026, 8, 2), True, 2_000, 2_999),
        planner.DumpDay(date(2026, 8, 1), True, 1_000, 1_999),
    ]
    assert planner.next_dump_day(2_500, days) is None  # read, and not in it
    assert planner.next_dump_day(1_999 + 1, days) is None  # between two read days
    assert planner.next_dump_day(500, days) is None  # older than the month's first day
