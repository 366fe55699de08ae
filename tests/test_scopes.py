"""Backfills of every scope and of whole days, in-process against the fake upstream.

Each test compares what was stored with what the fake serves for the same filter, and ends
with the fake's count of rule breaks: zero.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command

from backfill import lifecycle, planning, tasks
from backfill.models import BackfillDay, BackfillJob, DayCoverage
from fakeupstream.world import REGIONS, killmail_time
from killboard import ratelimit
from killboard.models import Killmail
from upstream import clients

pytestmark = pytest.mark.django_db(transaction=True)

PILOT = 2117325769
CORPORATION = 98000001
ALLIANCE = 99000001
AUGUST = datetime(2026, 8, 31, 23, 0, tzinfo=UTC)


def run(*args: str) -> dict:
    """Run a backfill command with --json; return its summary (CommandError propagates)."""
    out = io.StringIO()
    call_command(*args, "--json", stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue().splitlines()[-1])


def stored_ids() -> set[int]:
    return set(Killmail.objects.values_list("killmail_id", flat=True))


def no_rule_broken(fake) -> None:
    assert fake.stats()["violations"] == []


def export_lines(*args: str) -> list[dict]:
    out = io.StringIO()
    call_command("export_killmails", *args, stdout=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("target_type", "target_id", "search"),
    [
        ("corporation", CORPORATION, {"corporation_ids": (CORPORATION,)}),
        ("alliance", ALLIANCE, {"alliance_ids": (ALLIANCE,)}),
    ],
)
def test_a_corporation_or_alliance_backfill_stores_exactly_what_zkillboard_lists(
    fake, world, target_type, target_id, search
):
    world.add_character(PILOT, 260, corporation_id=CORPORATION, alliance_id=ALLIANCE)
    world.add_character(PILOT + 1, 150, corporation_id=CORPORATION, alliance_id=ALLIANCE)
    world.add_character(PILOT + 2, 40)  # another corporation and alliance

    summary = run("backfill", target_type, str(target_id))

    expected = set(world.search(**search))
    assert len(expected) == 410
    assert summary["status"] == "succeeded"
    assert stored_ids() == expected
    assert summary["stored"] == summary["killmails_listed"] == 410
    job = BackfillJob.objects.get()
    assert job.plan["killmails"] == 410
    assert job.plan["zkillboard_requests"] == 1 + 3
    assert fake.stats()["zkb_pages"] + fake.stats()["zkb_stats"] == 1 + 3
    no_rule_broken(fake)


def test_ship_system_and_region_backfills_store_what_zkillboard_lists(fake, world):
    world.add_character(PILOT, 300)
    some = world.body(world.killmail_ids(PILOT)[0])
    ship = some["victim"]["ship_type_id"]
    system = some["solar_system_id"]
    cases = [
        ("ship_type", ship, {"ship_type_ids": (ship,)}),
        ("solar_system", system, {"solar_system_ids": (system,)}),
    ]
    region = REGIONS[system]
    cases.append(("region", region, {"region_ids": (region,)}))
    for target_type, target_id, search in cases:
        Killmail.objects.all().delete()
        summary = run("backfill", target_type, str(target_id))
        expected = set(world.search(**search))
        assert expected, target_type
        assert summary["status"] == "succeeded", target_type
        assert stored_ids() == expected, target_type
    no_rule_broken(fake)


def test_dates_bound_a_scoped_backfill_and_to_date_starts_the_month_walk_there(fake, world):
    world.add_character(PILOT, 400, corporation_id=CORPORATION, newest=AUGUST, days=300)

    summary = run(
        "backfill", "corporation", str(CORPORATION), "--from-date", "2026-03-01",
        "--to-date", "2026-06-15",
    )  # fmt: skip

    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 6, 16, tzinfo=UTC)
    expected = set(world.search(corporation_ids=(CORPORATION,), start=start, end=end))
    assert summary["status"] == "succeeded"
    assert stored_ids() == expected
    # The walk read June to March by month: never the months after to_date.
    assert fake.stats()["zkb_pages"] == 4
    assert summary["skipped_newer"] > 0
    no_rule_broken(fake)


def test_estimate_prints_the_plan_and_starts_nothing(fake, world):
    world.add_character(PILOT, 450, corporation_id=CORPORATION, newest=AUGUST, days=200)
    out = io.StringIO()

    call_command("backfill", "corporation", str(CORPORATION), "--estimate", stdout=out)

    text = out.getvalue()
    assert text.startswith(f"Plan for a backfill of corporation {CORPORATION}:")
    assert "450 killmails over" in text
    assert "zKillboard: 4 requests" in text
    assert not BackfillJob.objects.exists()
    assert fake.stats()["zkb_stats"] == 1
    assert fake.stats()["zkb_pages"] == 0

    run("backfill", "corporation", str(CORPORATION))
    assert fake.stats()["zkb_stats"] + fake.stats()["zkb_pages"] == 1 + 4


def test_pages_without_bodies_take_dense_days_from_raw_dumps_and_sparse_ones_from_esi(fake, world):
    fake.configure(item_shape="zkbonly")
    dense = world.add_character(
        PILOT, 300, corporation_id=CORPORATION, newest=AUGUST, days=10
    )  # about 30 a day
    sparse = world.add_character(
        PILOT + 1, 6, corporation_id=CORPORATION, newest=datetime(2026, 5, 20, tzinfo=UTC)
    )  # before R2Z2's raw dumps

    summary = run("backfill", "corporation", str(CORPORATION))

    assert summary["status"] == "succeeded"
    assert stored_ids() == set(dense) | set(sparse)
    assert summary["bodies_from_dump"] == 300
    assert summary["bodies_from_esi"] == 6
    stats = fake.stats()
    assert stats["esi_killmails"] == 6  # none for the days that have a raw dump
    # August's days from the 31st back to the oldest one holding the pilot's killmails.
    oldest = min(killmail_time(i) for i in dense).date()
    assert stats["r2z2_raw"] == (AUGUST.date() - oldest).days + 1
    assert BackfillJob.objects.get().plan["dump_months"] == [202608]
    no_rule_broken(fake)


def test_a_dense_months_walk_skips_the_quiet_days_between_campaigns(fake, world):
    fake.configure(item_shape="zkbonly")
    early = world.add_character(
        PILOT, 200, corporation_id=CORPORATION, newest=datetime(2026, 8, 6, 20, tzinfo=UTC), days=3
    )  # August 4-6
    late = world.add_character(
        PILOT + 1, 200, corporation_id=CORPORATION, newest=datetime(2026, 8, 27, 20, tzinfo=UTC),
        days=3,
    )  # fmt: skip  # August 25-27
    world.add_character(PILOT + 2, 300, newest=AUGUST, days=31)  # the rest of the game

    summary = run("backfill", "corporation", str(CORPORATION))

    assert summary["status"] == "succeeded"
    assert stored_ids() == set(early) | set(late)
    assert summary["bodies_from_dump"] == 400
    assert summary["bodies_from_esi"] == 0
    busy_days = {killmail_time(i).date() for i in early + late}
    # The busy days, the month's last (where the walk begins) and a guess or two between.
    assert len(busy_days) <= fake.stats()["r2z2_raw"] <= len(busy_days) + 4
    assert fake.stats()["r2z2_raw"] < 31 - 4
    no_rule_broken(fake)


def test_a_quiet_pilot_never_downloads_a_day_for_one_killmail(fake, world):
    fake.configure(item_shape="zkbonly")
    world.add_character(PILOT, 20, newest=AUGUST, days=90)

    summary = run("backfill", "character", str(PILOT))

    assert summary["status"] == "succeeded"
    assert summary["bodies_from_esi"] == 20
    assert fake.stats()["r2z2_raw"] == 0


def days_of(world, *days: date) -> set[int]:
    return {i for day in days for i in world.killmail_ids_on(day)}


def test_history_takes_raw_days_from_their_dumps_and_the_rest_from_esi(fake, world):
    world.add_character(PILOT, 600, newest=AUGUST, days=4)  # August 28-31
    world.add_character(PILOT + 1, 30, newest=datetime(2026, 5, 2, tzinfo=UTC), days=2)
    world.days_without_raw.add(date(2026, 8, 29))
    days = [date(2026, 8, 29), date(2026, 8, 30)]
    may = [date(2026, 5, 1)]

    summary = run("backfill_history", "--from-date", "2026-08-29", "--to-date", "2026-08-30")
    esi_for_august = fake.stats()["esi_killmails"]
    summary_may = run("backfill_history", "--from-date", "2026-05-01", "--to-date", "2026-05-01")

    expected = days_of(world, *days)
    assert summary["status"] == "succeeded"
    assert summary["stored"] == summary["killmails_listed"] == len(expected)
    assert summary["bodies_from_dump"] == len(world.killmail_ids_on(days[1]))
    assert esi_for_august == len(world.killmail_ids_on(days[0]))  # the day without raw dump
    assert summary_may["bodies_from_esi"] == len(world.killmail_ids_on(may[0]))
    assert stored_ids() == expected | days_of(world, *may)
    # Exported, each killmail is the body the upstream served plus its hash.
    for record in export_lines("--from-date", "2026-08-29", "--to-date", "2026-08-30"):
        zkb = record.pop("zkb")
        assert record == world.body(record["killmail_id"])
        assert zkb == {"hash": world.killmail_hash(record["killmail_id"])}
    for day in days + may:
        coverage = DayCoverage.objects.get(day=day)
        assert coverage.complete
        assert coverage.stored_count == coverage.zkb_count == len(world.killmail_ids_on(day))
    no_rule_broken(fake)


def test_history_skips_complete_days_until_their_count_changes(fake, world):
    world.add_character(PILOT, 200, newest=AUGUST, days=2)  # August 30-31
    run("backfill_history", "--from-date", "2026-08-30", "--to-date", "2026-08-31")
    fake.reset_stats()

    again = run("backfill_history", "--from-date", "2026-08-30", "--to-date", "2026-08-31")

    assert again["status"] == "succeeded"
    assert fake.stats()["r2z2_days"] == 0
    assert fake.stats()["r2z2_raw"] == 0
    assert BackfillJob.objects.get(pk=again["job"]).plan["days_skipped"] == 2

    # A late killmail arrives on the 30th: only that day is fetched again.
    [late] = world.add_character(PILOT + 5, 1, newest=datetime(2026, 8, 30, 12, tzinfo=UTC), days=1)
    fake.reset_stats()
    third = run("backfill_history", "--from-date", "2026-08-30", "--to-date", "2026-08-31")

    assert third["stored"] == 1
    assert third["already_stored"] == len(world.killmail_ids_on(date(2026, 8, 30))) - 1
    assert late in stored_ids()
    assert fake.stats()["r2z2_days"] == 1
    no_rule_broken(fake)


def test_history_estimate_counts_exactly_what_the_run_then_asks(fake, world):
    world.add_character(PILOT, 300, newest=AUGUST, days=3)
    world.add_character(PILOT + 1, 25, newest=datetime(2026, 5, 3, tzinfo=UTC), days=3)
    out = io.StringIO()

    call_command(
        "backfill_history", "--from-date", "2026-05-01", "--to-date", "2026-08-31", "--estimate",
        "--json", stdout=out,
    )  # fmt: skip

    plan = json.loads(out.getvalue())
    assert not BackfillJob.objects.exists()
    fake.reset_stats()
    summary = run("backfill_history", "--from-date", "2026-05-01", "--to-date", "2026-08-31")
    stats = fake.stats()
    assert summary["status"] == "succeeded"
    assert plan["dump_downloads"] == stats["r2z2_totals"] + stats["r2z2_days"] + stats["r2z2_raw"]
    may = [date(2026, 5, 1) + timedelta(days=n) for n in range(31)]
    assert plan["esi_calls"] == stats["esi_killmails"] == len(days_of(world, *may))
    assert plan["killmails"] == summary["stored"] == 300 + len(days_of(world, *may))
    assert len(plan["days"]) == (date(2026, 8, 31) - date(2026, 5, 1)).days + 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("backfill", "planet", "5"), "invalid choice"),
        (("backfill", "corporation", "abc"), "corporation id"),
        (("backfill", "region", "0"), "region id"),
        (
            ("backfill", "alliance", "5", "--from-date", "2026-08-02", "--to-date", "2026-08-01"),
            "before from date",
        ),
        (("backfill_history", "--from-date", "2026-13-01"), "from date"),
        (("backfill_history", "--from-date", "2999-01-01"), "in the future"),
    ],
)
def test_bad_input_is_one_clear_error_and_creates_nothing(args, message):
    with pytest.raises(CommandError, match=message):
        call_command(*args, stdout=io.StringIO(), stderr=io.StringIO())
    assert not BackfillJob.objects.exists()


def test_a_day_r2z2_has_not_dumped_makes_the_job_partial(fake):
    job = lifecycle.create_history_job("2026-08-31")
    # A plan made for a day the upstream then refuses (404), as a broken upstream would.
    BackfillJob.objects.filter(pk=job.pk).update(
        plan={"kind": "history", "killmails": 7}, paging_done=True
    )
    BackfillDay.objects.create(job=job, day=datetime.now(UTC).date() + timedelta(days=3), count=7)

    tasks.start_job(job.pk)

    job.refresh_from_db()
    assert job.status == "partial"
    assert job.failed == 7
    assert "no id dump" in job.last_error


def test_past_page_100_without_bodies_the_walk_starts_where_the_statistics_say(fake, world, caplog):
    fake.configure(item_shape="zkbonly")
    september_end = datetime(2026, 9, 30, 23, tzinfo=UTC)
    first = world.add_character(
        PILOT, 10_000, corporation_id=CORPORATION, newest=september_end, days=29
    ) + world.add_character(PILOT + 1, 9_950, corporation_id=CORPORATION, newest=AUGUST, days=30)
    july = world.add_character(
        PILOT + 2,
        350,
        corporation_id=CORPORATION,
        newest=datetime(2026, 7, 31, tzinfo=UTC),
        days=30,
    )
    job = lifecycle.create_job(CORPORATION, target_type="corporation")
    planning.plan_job(job.pk, clients.zkillboard_client(ratelimit), clients.r2z2_client(ratelimit))
    # Killmails posted after the plan: its statistics count too few, and place page 100's
    # last killmail in July when it is in August. The walk's first month page shows it.
    late = world.add_character(
        PILOT + 3, 100, corporation_id=CORPORATION, newest=september_end, days=9
    )
    caplog.set_level("INFO", logger="backfill.services")

    tasks.start_job(job.pk)

    job.refresh_from_db()
    assert job.status == "succeeded", job.last_error
    assert stored_ids() == set(first) | set(july) | set(late)
    assert "the walk's first month 2026-07/1 was too old; trying 2026-08/1" in caplog.text
    # Page 100's last body came from no ESI call. Those the stale statistics placed in the
    # month before their own did (ESI takes what no dump of its month holds): at each month
    # edge of the whole history's pages, as many as the statistics missed.
    assert fake.stats()["esi_killmails"] <= 2 * len(late)
    assert job.bodies_from_dump + job.bodies_from_esi == len(first) + len(july) + len(late)
    no_rule_broken(fake)
