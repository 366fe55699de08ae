"""The backfill pipeline in-process (the embedded default) against the fake upstream."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime

import pytest
from django.core.management import CommandError, call_command

from backfill import lifecycle, tasks
from backfill.models import BackfillJob, FailedKillmail, PendingKillmail
from killboard import ratelimit
from killboard.ingest import ingest_killmails
from killboard.models import Item, Killmail, Participant
from upstream.errors import RateLimited
from upstream.zkillboard import (
    ZkillboardBlocked,
    ZkillboardClient,
    ZkillboardRejected,
    page_path,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHARACTER = 2117325769


def backfill(character_id: int = CHARACTER, **options) -> BackfillJob:
    job = lifecycle.create_job(character_id, **options)
    tasks.start_job(job.pk)
    job.refresh_from_db()
    return job


def stored_ids() -> set[int]:
    return set(Killmail.objects.values_list("killmail_id", flat=True))


def client(fake, rate: float = 1e6) -> ZkillboardClient:
    return ZkillboardClient(fake.zkb_url, "ops@example.com", rate, ratelimit)


def test_page_path_is_segments_with_trailing_slash():
    assert page_path("character", 90, 2) == "characterID/90/page/2/"
    assert page_path("character", 90, 1, 2019, 5) == "characterID/90/year/2019/month/5/page/1/"


def test_client_reads_full_items_and_zkb_only_items(fake, world):
    world.add_character(CHARACTER, 250)
    fake.configure(item_shape="zkbonly")
    [item, *_] = client(fake).fetch_page("character", CHARACTER, 1)
    assert item.body is None
    assert item.killmail_hash == world.zkb(item.killmail_id)["hash"]

    fake.configure(item_shape="full")
    page = client(fake).fetch_page("character", CHARACTER, 2)

    assert len(page) == 50
    assert page[0].record == {
        **world.body(page[0].killmail_id),
        "zkb": world.zkb(page[0].killmail_id),
    }
    assert fake.stats()["violation_count"] == 0


def test_error_answer_at_200_is_permanent(fake):
    with pytest.raises(ZkillboardRejected, match="page"):
        client(fake).fetch_page("character", CHARACTER, 101)


def test_429_blocks_every_process_for_retry_after(fake, world):
    world.add_character(CHARACTER, 10)
    fake.configure(burst_429=1)

    with pytest.raises(RateLimited) as caught:
        client(fake).fetch_page("character", CHARACTER, 1)

    assert caught.value.retry_after >= 1
    assert ratelimit.blocked_for("zkillboard") > 0


def test_blocked_redirect_stops_with_a_clear_message(fake):
    fake.configure(zkb_error_limit=0)
    with pytest.raises(ZkillboardRejected):
        client(fake).fetch_page("character", CHARACTER, 101)

    with pytest.raises(ZkillboardBlocked, match="blocked this IP"):
        client(fake).fetch_page("character", CHARACTER, 1)


def test_backfill_stores_every_killmail_once_with_bodies_from_pages(fake, world):
    world.add_character(CHARACTER, 450)

    job = backfill()

    assert job.status == BackfillJob.Status.SUCCEEDED
    assert stored_ids() == set(world.killmail_ids(CHARACTER))
    assert (job.pages_fetched, job.killmails_listed, job.stored) == (3, 450, 450)
    assert (job.bodies_from_page, job.bodies_from_esi) == (450, 0)
    assert fake.stats()["esi_killmails"] == 0
    assert fake.stats()["violation_count"] == 0


def test_backfill_fetches_bodies_from_esi_only_when_the_page_has_none(fake, world):
    world.add_character(CHARACTER, 300, newest=datetime(2026, 11, 1, tzinfo=UTC), days=365)
    fake.configure(item_shape="mixed")

    job = backfill()

    recent = [
        i for i in world.killmail_ids(CHARACTER) if world.body(i)["killmail_time"] >= "2026-06-27"
    ]
    assert job.status == BackfillJob.Status.SUCCEEDED
    assert stored_ids() == set(world.killmail_ids(CHARACTER))
    assert job.bodies_from_page == len(recent)
    assert job.bodies_from_esi == 300 - len(recent) == fake.stats()["esi_killmails"]
    assert fake.stats()["esi_killmail_fetched_despite_body"] == 0
    assert not PendingKillmail.objects.exists()
    assert fake.stats()["violation_count"] == 0


def test_stored_killmails_round_trip_to_the_upstream_bodies(fake, world):
    world.add_character(CHARACTER, 40)
    fake.configure(item_shape="mixed")
    backfill()

    out = io.StringIO()
    call_command("export_killmails", stdout=out)

    exported = {
        record["killmail_id"]: record for record in map(json.loads, out.getvalue().splitlines())
    }
    assert exported == {
        i: {**world.body(i), "zkb": world.zkb(i)} for i in world.killmail_ids(CHARACTER)
    }


def test_rerun_with_skip_existing_makes_no_esi_call_and_stores_nothing(fake, world):
    world.add_character(CHARACTER, 250)
    fake.configure(item_shape="zkbonly")
    backfill()
    counts = (Killmail.objects.count(), Participant.objects.count(), Item.objects.count())
    esi_calls = fake.stats()["esi_killmails"]

    job = backfill()

    assert job.status == BackfillJob.Status.SUCCEEDED
    assert (job.already_stored, job.stored, job.bodies_from_esi) == (250, 0, 0)
    assert fake.stats()["esi_killmails"] == esi_calls
    assert (Killmail.objects.count(), Participant.objects.count(), Item.objects.count()) == counts


def test_skip_existing_fills_in_the_zkb_of_killmails_stored_without_one(fake, world):
    world.add_character(CHARACTER, 30)
    bare, priced = world.killmail_ids(CHARACTER)[:2]
    ingest_killmails([world.body(bare), {**world.body(priced), "zkb": world.zkb(priced)}])
    Killmail.objects.filter(killmail_id=priced).update(total_value=1.0)

    job = backfill()

    assert job.status == BackfillJob.Status.SUCCEEDED
    assert job.already_stored == 2
    filled = Killmail.objects.get(killmail_id=bare)
    assert filled.killmail_hash == world.zkb(bare)["hash"]
    assert filled.total_value == world.zkb(bare)["totalValue"]
    # A killmail stored with its zkb keeps it: refreshing prices is --no-skip-existing's job.
    assert Killmail.objects.get(killmail_id=priced).total_value == 1.0


def test_max_pages_and_limit_bound_the_work_to_the_newest(fake, world):
    world.add_character(CHARACTER, 500)

    job = backfill(max_pages=3, limit=70)

    assert job.status == BackfillJob.Status.SUCCEEDED
    assert stored_ids() == set(world.killmail_ids(CHARACTER)[:210])
    assert job.pages_fetched == 2  # 210 killmails take two of zKillboard's 200-item pages


def test_from_date_stores_nothing_older_and_stops_paging(fake, world):
    world.add_character(CHARACTER, 1000, newest=datetime(2026, 11, 1, tzinfo=UTC), days=1000)
    start = date(2026, 6, 1)

    job = backfill(from_date="2026-06-01")

    wanted = {
        i for i in world.killmail_ids(CHARACTER) if world.body(i)["killmail_time"] >= "2026-06-01"
    }
    assert job.status == BackfillJob.Status.SUCCEEDED
    assert stored_ids() == wanted
    assert all(t.date() >= start for t in Killmail.objects.values_list("killmail_time", flat=True))
    assert job.pages_fetched == len(wanted) // 200 + 1


def test_history_deeper_than_100_pages_is_walked_month_by_month(fake, world):
    world.add_character(CHARACTER, 20_450, newest=datetime(2026, 11, 1, tzinfo=UTC), days=400)

    job = backfill()

    assert job.status == BackfillJob.Status.SUCCEEDED
    assert Killmail.objects.count() == 20_450
    assert stored_ids() == set(world.killmail_ids(CHARACTER))
    assert job.cursor.count("-") == 1  # ended on a month page
    assert fake.stats()["violation_count"] == 0


def test_wrong_hash_is_recorded_on_the_job_and_not_retried(fake, world):
    [killmail_id] = world.add_character(CHARACTER, 1)
    job = lifecycle.create_job(CHARACTER)
    BackfillJob.objects.filter(pk=job.pk).update(paging_done=True, status="running")
    PendingKillmail.objects.create(job=job, killmail_id=killmail_id, killmail_hash="0" * 40, zkb={})

    tasks.start_job(job.pk)

    job.refresh_from_db()
    assert job.status == BackfillJob.Status.PARTIAL
    assert job.failed == 1
    assert ": 422 " in FailedKillmail.objects.get().reason
    assert fake.stats()["esi_killmails"] == 1
    assert not Killmail.objects.exists()


def test_rate_limited_pages_are_retried_until_the_job_completes(fake, world):
    world.add_character(CHARACTER, 450)
    fake.configure(burst_429=2)

    job = backfill()

    assert job.status == BackfillJob.Status.SUCCEEDED
    assert stored_ids() == set(world.killmail_ids(CHARACTER))


def test_cancelled_job_fetches_nothing_more(fake, world):
    world.add_character(CHARACTER, 450)
    job = lifecycle.create_job(CHARACTER)
    lifecycle.cancel_job(job.pk)

    tasks.start_job(job.pk)

    assert fake.stats()["zkb_pages"] == 0
    assert not Killmail.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["abc"], "character id must be a positive whole number, got 'abc'"),
        (["-5"], "character id must be a positive whole number"),
        (["99999999999999999999"], "character id must be a positive whole number"),
        ([str(CHARACTER), "--from-date", "01/02/2023"], "from date must be a real date like"),
        ([str(CHARACTER), "--from-date", "2023-02-30"], "from date must be a real date like"),
        ([str(CHARACTER), "--limit", "0"], "limit must be a whole number from 1 to 200"),
        ([str(CHARACTER), "--limit", "201"], "limit must be a whole number from 1 to 200"),
        ([str(CHARACTER), "--max-pages", "x"], "--max-pages must be a whole number"),
        ([str(CHARACTER), "--max-pages", "0"], "max pages must be a whole number of at least 1"),
    ],
)
def test_invalid_input_is_one_clear_error_and_no_job(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("backfill_character", *args, stdout=io.StringIO())
    assert not BackfillJob.objects.exists()


def test_command_runs_in_process_and_prints_a_json_summary(fake, world):
    world.add_character(CHARACTER, 230)
    out = io.StringIO()

    call_command("backfill_character", str(CHARACTER), "--json", stdout=out)

    summary = json.loads(out.getvalue())
    assert summary["status"] == "succeeded"
    assert (summary["killmails_listed"], summary["stored"], summary["pending"]) == (230, 230, 0)
