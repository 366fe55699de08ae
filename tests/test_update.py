"""Incremental re-runs (`backfill TYPE ID --update`) against the fake upstream.

After a whole backfill, an update reads the whole-history pages down to the first one older
than the last run's start less the overlap whose killmails are all stored, then only the
months the coverage ledger counts short. The fake counts every zKillboard page it served.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F
from django.test import Client
from django.utils import timezone

from backfill import lifecycle, paging, planning, tasks
from backfill.models import BackfillJob, TargetMonthCoverage
from killboard import ratelimit
from killboard.models import Killmail
from upstream import clients

pytestmark = pytest.mark.django_db(transaction=True)

PILOT = 2117325769
APRIL = 202604
START_UPDATE = """
mutation Start($input: StartBackfillInput!) {
  startBackfill(input: $input) { success message job { id status updateSince stored } }
}
"""


def run(*args: str) -> dict:
    """Run a backfill command with --json; return its summary (CommandError propagates)."""
    out = io.StringIO()
    call_command(*args, "--json", stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue().splitlines()[-1])


def stored_ids() -> set[int]:
    return set(Killmail.objects.values_list("killmail_id", flat=True))


SINCE = datetime(2026, 11, 28, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    ("all_stored", "oldest", "stops"),
    [
        (True, SINCE - timedelta(seconds=1), True),
        (False, SINCE - timedelta(days=9), False),
        (True, SINCE, False),
        (True, None, False),
    ],
)
def test_an_updates_listing_stops_only_at_a_page_all_stored_and_older_than_since(
    all_stored, oldest, stops
):
    assert paging.update_stops(all_stored, oldest, SINCE) is stops


def test_the_walk_after_an_updates_listing_reads_only_short_months_before_sinces_month():
    start = datetime(2026, 1, 1, tzinfo=UTC).date()

    assert paging.update_walk(SINCE, start, {202611, 202604, 202603}) == "2026-04/1"
    assert paging.update_walk(SINCE, start, {202611, 202612}) is None
    assert paging.update_walk(SINCE, start, set()) is None
    assert paging.update_walk(SINCE, start, {202512}) is None  # before the walk's start


def recent_pilot(world, now: datetime) -> list[int]:
    """600 killmails over the last 20 days (30 a day: a page holds about 6.7 days)."""
    return world.add_character(PILOT, 600, newest=now - timedelta(hours=2), days=20)


def old_months(world) -> list[int]:
    """30 killmails in March to May 2026, months long before any update's overlap."""
    return world.add_character(PILOT, 30, newest=datetime(2026, 5, 20, tzinfo=UTC), days=60)


def one_killmail(world, moment: datetime) -> int:
    """A killmail of the pilot's at exactly `moment` (days=0: no spread)."""
    [killmail_id] = world.add_character(PILOT, 1, newest=moment, days=0)
    return killmail_id


def ledger(month: int, *, zkb: int, stored: int) -> None:
    """Write the coverage ledger's row of a month of the pilot's, as the ledger would."""
    TargetMonthCoverage.objects.update_or_create(
        target_type="character",
        target_id=PILOT,
        month=month,
        defaults={"zkb_count": zkb, "stored_count": stored, "checked_at": timezone.now()},
    )


def in_month(ids: list[int], month: int) -> list[int]:
    return [
        i
        for i in ids
        if Killmail.objects.filter(
            killmail_id=i,
            killmail_time__year=month // 100,
            killmail_time__month=month % 100,
        ).exists()
    ]


def test_an_update_stores_late_and_new_killmails_reading_only_the_first_pages(fake, world):
    now = datetime.now(UTC)
    recent_pilot(world, now)
    first = run("backfill_character", str(PILOT))
    late = one_killmail(world, now - timedelta(hours=48))
    new = one_killmail(world, now - timedelta(hours=1))
    fake.reset_stats()

    summary = run("backfill_character", str(PILOT), "--update")

    assert first["status"] == summary["status"] == "succeeded"
    assert {late, new} <= stored_ids()
    assert summary["stored"] == 2
    # Page 1 held both, so it could not end the listing; page 2, all stored and older
    # than the overlap, did.
    assert fake.stats()["zkb_pages"] == 2
    assert (summary["pages_fetched"], summary["killmails_listed"]) == (2, 400)
    assert summary["already_stored"] == 398
    run_start = BackfillJob.objects.get(pk=first["job"]).started_at
    since = datetime.fromisoformat(summary["update_since"])
    assert since == run_start - timedelta(hours=72)
    assert fake.stats()["violations"] == []


def test_an_update_with_nothing_new_reads_one_page(fake, world):
    recent_pilot(world, datetime.now(UTC))
    run("backfill_character", str(PILOT))
    run("backfill_character", str(PILOT), "--update")
    fake.reset_stats()

    again = run("backfill_character", str(PILOT), "--update")

    assert again["status"] == "succeeded"
    assert (again["pages_fetched"], again["stored"], again["already_stored"]) == (1, 0, 200)
    assert fake.stats()["zkb_pages"] == 1


def test_the_summary_line_names_the_update_and_where_it_read_back_to(fake, world):
    recent_pilot(world, datetime.now(UTC))
    run("backfill_character", str(PILOT))
    out = io.StringIO()

    call_command("backfill", "character", str(PILOT), "--update", stdout=out, stderr=io.StringIO())

    job = BackfillJob.objects.latest("pk")
    since = job.update_since.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    assert out.getvalue().startswith(
        f"Backfill #{job.pk} of character {PILOT} (update since {since}) succeeded in "
    )


def test_a_late_arrival_older_than_the_overlap_is_read_only_when_its_month_is_short(fake, world):
    recent_pilot(world, datetime.now(UTC))
    old_months(world)
    run("backfill_character", str(PILOT))
    old_late = one_killmail(world, datetime(2026, 4, 15, 12, tzinfo=UTC))
    job = lifecycle.create_job(PILOT, update=True)
    planning.plan_job(job.pk, clients.zkillboard_client(ratelimit), clients.r2z2_client(ratelimit))
    # The ledger counts every month complete (as it does before zKillboard's count moves).
    TargetMonthCoverage.objects.update(stored_count=F("zkb_count"))
    fake.reset_stats()

    tasks.start_job(job.pk)

    job.refresh_from_db()
    assert job.status == "succeeded"
    assert old_late not in stored_ids()
    assert fake.stats()["zkb_pages"] == 1

    april = len(world.search(character_ids=(PILOT,), start=datetime(2026, 4, 1, tzinfo=UTC),
                             end=datetime(2026, 5, 1, tzinfo=UTC)))  # fmt: skip
    ledger(APRIL, zkb=april, stored=april - 1)
    fake.reset_stats()
    summary = run("backfill_character", str(PILOT), "--update")

    assert old_late in stored_ids()
    assert summary["stored"] == 1
    assert fake.stats()["zkb_pages"] == 2  # page 1, then April's only page


def test_only_the_short_months_are_walked(fake, world):
    recent_pilot(world, datetime.now(UTC))
    old = old_months(world)
    run("backfill_character", str(PILOT))
    [gone, *_] = in_month(old, APRIL)
    Killmail.objects.filter(killmail_id=gone).delete()
    counts = {m: len(in_month(old, m)) for m in (202603, APRIL, 202605)}
    for month, count in counts.items():
        ledger(month, zkb=count + (month == APRIL), stored=count)
    fake.reset_stats()

    summary = run("backfill_character", str(PILOT), "--update")

    assert gone in stored_ids()
    assert summary["stored"] == 1
    # Page 1 ends the listing; of March, April and May only April is read.
    assert fake.stats()["zkb_pages"] == 2
    assert summary["killmails_listed"] == 200 + counts[APRIL] + 1


def test_no_complete_run_is_one_clear_error_and_creates_no_job(fake, world):
    recent_pilot(world, datetime.now(UTC))
    BackfillJob.objects.create(target_id=PILOT, status="failed")
    BackfillJob.objects.create(target_id=PILOT, status="succeeded", max_pages=1)

    with pytest.raises(CommandError) as caught:
        call_command("backfill_character", str(PILOT), "--update", stdout=io.StringIO())

    assert str(caught.value) == (
        f"no complete backfill of character {PILOT} yet: run it without --update"
    )
    assert BackfillJob.objects.count() == 2
    assert fake.stats()["zkb_pages"] == fake.stats()["zkb_stats"] == 0


@pytest.mark.parametrize("option", ["--from-date", "--to-date"])
def test_update_with_dates_is_refused_as_a_contradiction(option):
    BackfillJob.objects.create(target_id=PILOT, status="succeeded")

    with pytest.raises(CommandError, match=r"--update .* takes no --from-date or --to-date"):
        call_command("backfill_character", str(PILOT), "--update", option, "2026-01-01")

    assert BackfillJob.objects.count() == 1


def test_a_partial_run_counts_as_complete():
    partial = BackfillJob.objects.create(
        target_id=PILOT, status="partial", started_at=datetime(2026, 11, 20, tzinfo=UTC)
    )

    job = lifecycle.build_job(PILOT, update=True)

    assert job.update_since == partial.started_at - timedelta(hours=72)


def test_the_overlap_is_a_setting(settings):
    BackfillJob.objects.create(
        target_id=PILOT, status="succeeded", started_at=datetime(2026, 11, 20, tzinfo=UTC)
    )
    settings.BACKFILL_UPDATE_OVERLAP_HOURS = 24

    job = lifecycle.build_job(PILOT, update=True)

    assert job.update_since == datetime(2026, 11, 19, tzinfo=UTC)


def test_estimate_says_what_an_update_would_read(fake, world):
    recent_pilot(world, datetime.now(UTC))
    old_months(world)
    run("backfill_character", str(PILOT))
    first = BackfillJob.objects.get()
    ledger(APRIL, zkb=20, stored=15)
    # March is complete by the ledger, but a late arrival has grown zKillboard's count.
    march = len(in_month(list(stored_ids()), 202603))
    ledger(202603, zkb=march, stored=march)
    one_killmail(world, datetime(2026, 3, 25, 12, tzinfo=UTC))
    fake.reset_stats()
    out = io.StringIO()

    call_command("backfill", "character", str(PILOT), "--update", "--estimate", stdout=out)

    text = out.getvalue()
    since = (first.started_at - timedelta(hours=72)).astimezone(UTC)
    assert text.startswith(
        f"Plan for an update of character {PILOT} since {since:%Y-%m-%d %H:%M} UTC:"
    )
    assert f"the start of backfill #{first.pk}" in text
    assert (
        "short months (fewer stored than zKillboard counts): 2026-04 (20 killmails), "
        f"2026-03 ({march + 1} killmails)"
    ) in text
    assert BackfillJob.objects.count() == 1
    assert fake.stats()["zkb_pages"] == 0
    as_json = io.StringIO()
    call_command("backfill", "character", str(PILOT), "--update", "--estimate", "--json",
                 stdout=as_json)  # fmt: skip
    plan = json.loads(as_json.getvalue())
    assert plan["update_since"] == since.isoformat()
    assert [APRIL, 20] in plan["months"]
    assert plan["dump_months"] == []


def test_graphql_starts_an_update(admin_client: Client, fake, world):
    recent_pilot(world, datetime.now(UTC))
    variables = {"input": {"targetType": "CHARACTER", "targetId": PILOT, "options": {}}}
    refused = _graphql(admin_client, START_UPDATE, _with_update(variables))
    assert refused == {
        "success": False,
        "message": f"no complete backfill of character {PILOT} yet: run it without --update",
        "job": None,
    }
    _graphql(admin_client, START_UPDATE, variables)
    assert tasks.runner.wait_idle(60)  # the full run, handed to the background runner

    started = _graphql(admin_client, START_UPDATE, _with_update(variables))

    assert started["success"] is True
    assert started["job"]["status"] == "queued"  # a web request only hands the job off
    assert started["job"]["updateSince"] is not None
    assert tasks.runner.wait_idle(60)
    job = BackfillJob.objects.get(pk=started["job"]["id"])
    assert (job.status, job.update_since is not None) == ("succeeded", True)


def _with_update(variables: dict) -> dict:
    return {"input": {**variables["input"], "options": {"update": True}}}


def _graphql(client: Client, query: str, variables: dict) -> dict:
    response = client.post(
        "/graphql/",
        json.dumps({"query": query, "variables": variables}),
        content_type="application/json",
    )
    result = response.json()
    assert "errors" not in result, result
    return result["data"]["startBackfill"]
