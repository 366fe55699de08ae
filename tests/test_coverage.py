"""The coverage ledger: days against R2Z2's totals.json, targets' months against zKillboard's
statistics, live gaps, repairs, the `coverage` command and the admin's charts.

In-process against the fake upstream; every test that talks to it ends with no rule broken.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from backfill import coverage, tasks
from backfill.models import BackfillJob, CoverageGap, DayCoverage, TargetMonthCoverage
from fakeupstream.server import FakeUpstream
from fakeupstream.world import World, killmail_time
from killboard import ratelimit
from killboard.ingest import ingest_killmails
from killboard.models import Constellation, Killmail, Region, SolarSystem
from upstream import clients

pytestmark = pytest.mark.django_db(transaction=True)

PILOT = 2117325769
CORPORATION = 98000001
AUGUST = datetime(2026, 8, 31, 23, 0, tzinfo=UTC)
# Requests that fetch killmails: pages, statistics, bodies, names and details, day dumps.
FETCHES = (
    "zkb_pages",
    "zkb_stats",
    "esi_killmails",
    "esi_names",
    "esi_characters",
    "esi_corporations",
    "esi_alliances",
    "esi_types",
    "esi_other",
    "r2z2_days",
    "r2z2_raw",
)


def ago(days: int) -> date:
    return datetime.now(UTC).date() - timedelta(days=days)


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def end_of(day: date) -> datetime:
    """The day's last second: `add_character(newest=end_of(d), days=n)` fills d and the
    n - 1 days before."""
    return at(day + timedelta(days=1), 0) - timedelta(seconds=1)


def command(*args: str) -> str:
    """Run a command; its standard output (CommandError propagates)."""
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def history(first: date, last: date) -> dict[str, Any]:
    """Store every killmail of first..last from the day dumps; the job's summary."""
    text = command("backfill_history", "--from-date", str(first), "--to-date", str(last), "--json")
    return json.loads(text.splitlines()[-1])


def store(world: World, ids: list[int]) -> None:
    """Store these killmails of the world as zKillboard serves them."""
    ingest_killmails([{**world.body(i), "zkb": world.zkb(i)} for i in ids])


def stored_ids() -> set[int]:
    return set(Killmail.objects.values_list("killmail_id", flat=True))


def ledger() -> dict[date, DayCoverage]:
    return {row.day: row for row in DayCoverage.objects.all()}


def no_rule_broken(fake: FakeUpstream) -> None:
    assert fake.stats()["violations"] == []


# -- days ------------------------------------------------------------------------------------


def test_a_check_notes_zkillboards_count_and_the_stores_with_one_totals_request(
    fake: FakeUpstream, world: World
) -> None:
    world.add_character(PILOT, 60, newest=at(ago(1), 20), days=3)
    store(world, world.killmail_ids_on(ago(2)))

    rows = coverage.check_days(clients.r2z2_client(ratelimit), ago(3), ago(1))

    assert [row.day for row in rows] == [ago(3), ago(2), ago(1)]
    for row in rows:
        assert row.zkb_count == len(world.killmail_ids_on(row.day)) > 0
    noted = ledger()
    assert noted[ago(2)].complete
    assert noted[ago(2)].stored_count == noted[ago(2)].zkb_count
    assert not noted[ago(1)].complete
    assert noted[ago(1)].stored_count == 0
    stats = fake.stats()
    assert stats["r2z2_totals"] == 1
    assert stats["r2z2_days"] == stats["r2z2_raw"] == 0
    no_rule_broken(fake)


def test_recheck_compares_the_last_4_days_always_and_older_days_when_their_count_changed(
    fake: FakeUpstream, world: World
) -> None:
    world.add_character(PILOT, 80, newest=at(ago(1), 20), days=8)
    r2z2 = clients.r2z2_client(ratelimit)

    first = coverage.recheck(r2z2)
    second = coverage.recheck(r2z2)
    world.add_character(PILOT + 1, 1, newest=at(ago(6), 12), days=1)  # posted late
    third = coverage.recheck(r2z2)

    assert set(first.checked) >= {ago(n) for n in range(1, 9)}  # never compared before
    recent = [ago(4), ago(3), ago(2), ago(1)]
    assert second.checked == recent
    assert third.checked == [ago(6), *recent]
    late_day = ledger()[ago(6)]
    assert late_day.zkb_count == len(world.killmail_ids_on(ago(6)))
    assert not late_day.complete
    assert fake.stats()["r2z2_totals"] == 3
    no_rule_broken(fake)


def test_a_late_killmail_shows_its_day_short_until_a_repair_fetches_it(
    fake: FakeUpstream, world: World
) -> None:
    world.add_character(PILOT, 90, newest=at(ago(1), 20), days=3)
    assert history(ago(3), ago(1))["status"] == "succeeded"
    [late] = world.add_character(PILOT + 1, 1, newest=at(ago(2), 12), days=1)
    fake.reset_stats()

    before = command("coverage", "--from-date", str(ago(3)), "--to-date", str(ago(1)))
    repaired = command("coverage", "--from-date", str(ago(3)), "--to-date", str(ago(1)), "--repair")
    after = coverage.check_days(clients.r2z2_client(ratelimit), ago(3), ago(1))

    short_line = next(line for line in before.splitlines() if line.strip().startswith(str(ago(2))))
    assert short_line.split()[3:5] == ["1", "short"]
    assert "1 short, 1 killmail(s) missing." in before
    assert "succeeded" in repaired
    assert late in stored_ids()
    assert all(row.complete for row in after)
    stats = fake.stats()
    assert stats["esi_killmails"] == 1  # one missing body: ESI, not the day's raw dump
    assert stats["r2z2_raw"] == 0
    assert stats["r2z2_days"] == 1  # the short day only
    no_rule_broken(fake)


def test_a_repair_of_a_store_missing_1_percent_of_5_days_fetches_only_those(
    fake: FakeUpstream, world: World
) -> None:
    ids = world.add_character(PILOT, 1000, newest=end_of(ago(1)), days=5)
    assert {killmail_time(i).date() for i in ids} == {ago(n) for n in range(1, 6)}
    assert history(ago(5), ago(1))["stored"] == 1000
    lost = sorted(ids)[::100]  # 1%
    Killmail.objects.filter(killmail_id__in=lost).delete()
    fake.reset_stats()

    text = command(
        "coverage", "--from-date", str(ago(5)), "--to-date", str(ago(1)), "--repair", "--json"
    )

    ledger_report, job = (json.loads(line) for line in text.splitlines())
    assert ledger_report["missing"] == len(lost) == 10
    assert job["status"] == "succeeded"
    assert job["stored"] == len(lost)
    assert stored_ids() == set(ids)
    stats = fake.stats()
    # Each short day's id list, then its raw dump (two bodies or more) or ESI (one): never
    # more than the missing killmails plus one dump a day. totals.json apart: one for the
    # check, one for the repair job's plan.
    assert sum(stats[family] for family in FETCHES) <= len(lost) + 5
    assert stats["r2z2_totals"] == 2
    assert all(row.complete for row in ledger().values())
    no_rule_broken(fake)


def test_a_live_gap_is_repaired_once_dumped_and_then_closed(
    fake: FakeUpstream, world: World
) -> None:
    world.add_character(PILOT, 120, newest=at(ago(1), 20), days=3)
    history(ago(3), ago(1))
    start, end = at(ago(2), 10), at(ago(2), 14)
    missed = Killmail.objects.filter(killmail_time__gte=start, killmail_time__lt=end)
    lost = set(missed.values_list("killmail_id", flat=True))
    missed.delete()
    gap = CoverageGap.objects.create(first_sequence=100, last_sequence=180, start=start, end=end)
    now = datetime.now(UTC)
    today_gap = CoverageGap.objects.create(
        first_sequence=500, last_sequence=510, start=now - timedelta(minutes=5), end=now
    )

    tasks.check_coverage.delay()  # the repair job runs in-process after the check
    gap.refresh_from_db()
    repair = gap.repair_job
    tasks.check_coverage.delay()

    assert lost
    assert repair is not None
    repair.refresh_from_db()
    assert repair.status == "succeeded"
    assert repair.stored == len(lost)
    assert lost <= stored_ids()
    gap.refresh_from_db()
    assert gap.closed_at is not None
    today_gap.refresh_from_db()
    # Its day is not dumped yet: no repair, still open.
    assert today_gap.repair_job is None
    assert today_gap.closed_at is None
    no_rule_broken(fake)


# -- targets ---------------------------------------------------------------------------------


def test_a_scoped_backfill_notes_its_targets_months_and_a_short_month_is_listed(
    fake: FakeUpstream, world: World
) -> None:
    ids = world.add_character(PILOT, 300, corporation_id=CORPORATION, newest=AUGUST, days=90)

    text = command("backfill", "corporation", str(CORPORATION), "--json")

    assert json.loads(text.splitlines()[-1])["status"] == "succeeded"
    stats = clients.zkillboard_client(ratelimit).stats("corporation", CORPORATION)
    expected = {year * 100 + month: count for (year, month), count in stats.months.items()}
    rows = TargetMonthCoverage.objects.filter(target_type="corporation", target_id=CORPORATION)
    assert {row.month: row.zkb_count for row in rows} == expected
    assert {row.month: row.stored_count for row in rows} == expected
    assert coverage.short_months("corporation", CORPORATION) == []

    july = [i for i in ids if Killmail.objects.get(pk=i).killmail_time.month == 7][:5]
    Killmail.objects.filter(killmail_id__in=july).delete()
    coverage.record_target_months(BackfillJob.objects.get())

    assert coverage.short_months("corporation", CORPORATION) == [202607]
    row = rows.get(month=202607)
    assert row.stored_count == row.zkb_count - 5
    no_rule_broken(fake)


def test_a_solar_systems_months_count_its_killmails(world: World) -> None:
    ids = world.add_character(PILOT, 40, newest=AUGUST, days=60)
    store(world, ids)
    system = world.body(ids[0])["solar_system_id"]

    counts = coverage.stored_per_month("solar_system", system)

    there = Killmail.objects.filter(solar_system_id=system)
    assert sum(counts.values()) == there.count() > 0
    assert coverage.stored_per_month("region", 10000002) is None


def test_a_regions_months_count_its_killmails_once_every_systems_region_is_known(
    world: World,
) -> None:
    ids = world.add_character(PILOT, 40, newest=AUGUST, days=60)
    store(world, ids)
    systems = sorted(SolarSystem.objects.values_list("id", flat=True))
    first, rest = systems[0], systems[1:]
    Region.objects.create(id=10000002, name="The Forge")
    Constellation.objects.create(id=20000020, name="Kimotoro", region_id=10000002)
    Constellation.objects.create(id=20000999, name="Elsewhere", region_id=10000043)
    SolarSystem.objects.filter(id=first).update(constellation_id=20000020)
    SolarSystem.objects.filter(id__in=rest[1:]).update(constellation_id=20000999)
    assert coverage.stored_per_month("region", 10000002) is None  # one system's is unknown

    SolarSystem.objects.filter(id__in=rest[:1]).update(constellation_id=20000999)
    counts = coverage.stored_per_month("region", 10000002)

    there = Killmail.objects.filter(solar_system_id=first).count()
    assert sum(counts.values()) == there > 0
    assert sum(coverage.stored_per_month("region", 10000043).values()) == len(ids) - there


# -- the command -----------------------------------------------------------------------------


def test_the_command_prints_a_line_a_day_months_and_gaps_and_the_same_as_json(
    fake: FakeUpstream, world: World
) -> None:
    world.add_character(PILOT, 30, newest=end_of(ago(1)), days=3)
    store(world, world.killmail_ids_on(ago(1)))
    CoverageGap.objects.create(
        first_sequence=7, last_sequence=9, start=at(ago(2), 1), end=at(ago(2), 2)
    )
    span = ("--from-date", str(ago(3)), "--to-date", str(ago(1)))

    text = command("coverage", *span)
    data = json.loads(command("coverage", *span, "--json"))

    lines = text.splitlines()
    assert lines[0] == f"Coverage of {ago(3)}..{ago(1)} (zKillboard's count from R2Z2 totals.json):"
    assert [line.split()[4] for line in lines[2:5]] == ["complete", "short", "short"]
    assert "Months:" in lines
    assert "Open live gaps: 1" in lines
    assert "sequences 7..9" in text
    assert "repair at the next check" in text
    assert [day["day"] for day in data["days"]] == [str(ago(n)) for n in (1, 2, 3)]
    assert [day["state"] for day in data["days"]] == ["complete", "short", "short"]
    assert data["missing"] == len(world.killmail_ids_on(ago(2))) + len(
        world.killmail_ids_on(ago(3))
    )
    assert data["open_gaps"][0]["first_sequence"] == 7
    assert sum(month["zkb_count"] for month in data["months"]) == 30
    no_rule_broken(fake)


def test_the_command_shows_the_last_30_days_through_yesterday_by_default(
    fake: FakeUpstream, world: World
) -> None:
    world.add_character(PILOT, 10, newest=at(ago(1), 20), days=2)

    data = json.loads(command("coverage", "--json"))

    assert (data["from_date"], data["to_date"]) == (str(ago(30)), str(ago(1)))
    assert len(data["days"]) == 30
    assert fake.stats()["r2z2_totals"] == 1


def test_repair_with_nothing_short_starts_no_job(fake: FakeUpstream, world: World) -> None:
    world.add_character(PILOT, 10, newest=at(ago(1), 20), days=1)
    store(world, world.killmail_ids_on(ago(1)))

    text = command("coverage", "--from-date", str(ago(1)), "--repair")

    assert "Nothing to repair" in text
    assert not BackfillJob.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from-date", "2026-02-30"), "from date"),
        (("--to-date", "yesterday"), "to date"),
        (("--from-date", "2999-01-01"), "in the future"),
        (("--from-date", "2026-08-02", "--to-date", "2026-08-01"), "before from date"),
        (("--from-date", str(date.today())), "R2Z2 has dumped days up to"),
    ],
)
def test_bad_dates_are_one_clear_error_and_change_nothing(args: tuple[str, ...], message: str):
    with pytest.raises(CommandError, match=message) as caught:
        command("coverage", *args)
    assert "\n" not in str(caught.value)
    assert not DayCoverage.objects.exists()
    assert not BackfillJob.objects.exists()


# -- the admin -------------------------------------------------------------------------------


def test_the_admin_draws_the_month_charts_and_lists_gaps(admin_client: Client) -> None:
    checked = datetime.now(UTC)
    DayCoverage.objects.create(
        day=ago(2), zkb_count=500, stored_count=500, complete=True, checked_at=checked
    )
    DayCoverage.objects.create(day=ago(1), zkb_count=480, stored_count=470, checked_at=checked)
    job = BackfillJob.objects.create(target_type="corporation", target_id=CORPORATION)
    for month, stored in ((202607, 100), (202608, 90)):
        TargetMonthCoverage.objects.create(
            target_type="corporation",
            target_id=CORPORATION,
            month=month,
            zkb_count=100,
            stored_count=stored,
            checked_at=checked,
        )
    CoverageGap.objects.create(
        first_sequence=1, last_sequence=2, start=checked, end=checked, repair_job=job
    )

    days = admin_client.get(reverse("admin:backfill_daycoverage_changelist")).content.decode()
    targets = admin_client.get(
        reverse("admin:backfill_targetmonthcoverage_changelist"), {"q": str(CORPORATION)}
    ).content.decode()
    row = TargetMonthCoverage.objects.get(month=202608)
    target = admin_client.get(
        reverse("admin:backfill_targetmonthcoverage_change", args=[row.pk])
    ).content.decode()
    job_page = admin_client.get(
        reverse("admin:backfill_backfilljob_change", args=[job.pk])
    ).content.decode()
    gaps = admin_client.get(reverse("admin:backfill_coveragegap_changelist")).content.decode()

    assert 'class="coverage-chart"' in days
    assert 'class="coverage-short"' in days  # the short day, highlighted
    assert f"{ago(1):%Y-%m}" in days
    for page in (targets, target, job_page):
        assert 'class="coverage-chart"' in page
        assert "2026-08" in page
        assert "2026-07" in page
    assert "Coverage by month" in job_page
    assert f"#{job.pk} queued" in gaps
    assert admin_client.get(reverse("admin:backfill_coveragegap_add")).status_code == 403
