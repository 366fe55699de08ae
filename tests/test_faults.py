"""The pipeline under real-world failure, on real services: nothing lost, nothing stored twice.

Faults come from two sides. The fake upstream injects them into its answers (5xx, answers held
past the ESI client's timeout, truncated and HTML bodies at 200, 429 bursts, a 420 storm) and
counts every rule the clients break. The test injects the others into the machine: workers
killed with SIGKILL, RabbitMQ restarted, PostgreSQL connections terminated, all mid-job.
Every test ends by comparing what was stored with what the upstream holds, row for row.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest

from backfill.models import BackfillDay, BackfillJob, FailedKillmail, PendingKillmail
from config.queues import BACKFILL_QUEUES
from killboard.models import Killmail
from tests.workers import (
    all_finished,
    expected_rows,
    manage,
    purge_queues,
    queue_backfill,
    require_services,
    restart_rabbitmq,
    running_workers,
    service_env,
    stored_rows,
    terminate_database_sessions,
    wait_until,
)

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

CHARACTER = 2117325769
# A year of history ending after 2026-06-27: pages carry bodies for the newest third, and
# the older two thirds need ESI.
DAYS = 365
# Workers take only the backfill queues, like the Procfile's worker_backfill: enrichment of
# the thousands of entities these killmails name would double the ESI traffic, and with it
# the injected faults and the time, proving nothing more here.
WORKER_QUEUES = BACKFILL_QUEUES


@pytest.fixture(autouse=True)
def _services() -> None:
    require_services()


@pytest.fixture(autouse=True)
def _purge_enrichment_tasks() -> Iterator[None]:
    """Drop the enrichment tasks the stored killmails queued, which no worker here takes."""
    yield
    purge_queues()


def stored_at_least(count: int) -> Any:
    return lambda: Killmail.objects.count() >= count or all_finished()


def where_it_stands() -> dict[str, Any]:
    """The job's state, for the message of a test that timed out."""
    job = BackfillJob.objects.values(
        "status", "cursor", "paging_done", "stored", "failed", "last_error", "lease_until"
    ).last()
    pending = PendingKillmail.objects.values_list("claimed_until", flat=True)
    return {"job": job, "stored": Killmail.objects.count(), "pending": sorted(map(str, pending))}


def wait_for(condition: Any, timeout: float) -> None:
    """`wait_until`, saying where the job stands if it times out."""
    try:
        wait_until(condition, timeout)
    except pytest.fail.Exception:
        pytest.fail(f"timed out after {timeout}s: {where_it_stands()}")


def assert_stored_exactly_once(world: Any, ids: list[int]) -> None:
    assert set(Killmail.objects.values_list("killmail_id", flat=True)) == set(ids)
    assert stored_rows() == expected_rows(world, ids)
    assert not PendingKillmail.objects.exists()
    assert not FailedKillmail.objects.exists()


def test_faulty_upstreams_cost_retries_not_killmails(fake, world):
    # Bodies on the pages of the newest 127 days, from ESI before: about 2,000 ESI calls.
    ids = world.add_character(CHARACTER, 5000, days=220)
    fake.configure(
        item_shape="mixed",
        fault_seed=6,
        fault_rate_5xx=0.05,
        # Held past the ESI client's 10 s read timeout; rare, since each costs a worker 11 s.
        fault_rate_timeout=0.002,
        timeout_hold=11.0,
        fault_rate_truncated=0.01,
        fault_rate_html=0.01,
    )
    env = service_env(fake, ZKILLBOARD_REQUESTS_PER_SECOND="1000", BACKFILL_LEASE_SECONDS="30")
    started = time.monotonic()

    with running_workers(env, count=2, queues=WORKER_QUEUES):
        job_id = queue_backfill(env, CHARACTER)
        wait_for(stored_at_least(2500), timeout=120)
        fake.configure(burst_429=10)
        wait_for(stored_at_least(3500), timeout=120)
        fake.configure(storm_420=5)
        wait_for(all_finished, timeout=300)

    job = BackfillJob.objects.get(pk=job_id)
    stats = fake.stats()
    print(
        f"\n5000 killmails with faults in {time.monotonic() - started:.0f}s: "
        f"faults {stats['faults']}, {stats['zkb_pages']} zKillboard requests, "
        f"{stats['esi_killmails']} ESI killmail requests, violations {stats['violation_count']}"
    )
    assert job.status == BackfillJob.Status.SUCCEEDED, job.last_error
    assert (job.stored, job.failed, job.pending) == (5000, 0, 0)
    assert 0 < job.bodies_from_page < 5000
    assert_stored_exactly_once(world, ids)
    faults = stats["faults"]
    for kind in ("5xx", "timeout", "truncated", "html", "burst_429", "storm_420"):
        assert faults.get(kind, 0) > 0, f"no {kind} fault was injected: {faults}"
    assert stats["violations"] == []


def test_killed_workers_broker_restart_and_dropped_connections_lose_nothing(fake, world, tmp_path):
    ids = world.add_character(CHARACTER, 2500, days=DAYS)
    # Bodies from ESI at about 45 a second: the job runs long enough for every blow.
    fake.configure(item_shape="zkbonly", esi_killmail_bucket=(2000, 20.0))
    env = service_env(
        fake,
        ZKILLBOARD_REQUESTS_PER_SECOND="1000",
        BACKFILL_LEASE_SECONDS="10",
        # As in production, beat's watchdog resumes a job whose messages a blow lost.
        BACKFILL_STALLED_AFTER_SECONDS="20",
    )
    rng = random.Random(6)
    # Stored-killmail counts at which each blow falls, drawn in order across the job.
    moments = sorted(rng.sample(range(150, 2100, 50), 6))
    blows = ["kill", "drop_database", "kill", "restart_rabbitmq", "drop_database", "kill"]
    terminated = 0
    started = time.monotonic()

    with running_workers(env, count=2, queues=WORKER_QUEUES) as workers:
        workers.start_beat(tmp_path)
        job_id = queue_backfill(env, CHARACTER)
        for moment, blow in zip(moments, blows, strict=True):
            wait_for(stored_at_least(moment), timeout=180)
            if blow == "kill":
                # A random live worker, at a random moment of whatever it is doing.
                time.sleep(rng.uniform(0, 1))
                live = [p for p in workers.processes if p.poll() is None]
                workers.kill(rng.choice(live))
                workers.start()
            elif blow == "restart_rabbitmq":
                restart_rabbitmq()
            else:
                for _ in range(3):  # idle sessions too, and those that reconnect at once
                    terminated += terminate_database_sessions()
                    time.sleep(0.3)
        dealt_at = Killmail.objects.count()
        wait_for(all_finished, timeout=300)

    job = BackfillJob.objects.get(pk=job_id)
    print(
        f"\n2500 killmails, blows {list(zip(moments, blows, strict=True))}, "
        f"{terminated} database sessions terminated, done in {time.monotonic() - started:.0f}s"
    )
    assert dealt_at < 2500, "the job ended before every blow fell"
    assert terminated > 0
    assert job.status == BackfillJob.Status.SUCCEEDED, job.last_error
    assert job.stored + job.already_stored == 2500
    assert_stored_exactly_once(world, ids)
    assert fake.stats()["violation_count"] == 0


def test_concurrent_backfills_of_characters_sharing_killmails_store_each_once(fake, world):
    pilots = [2117325769, 2117325770]
    shared = world.add_shared(pilots, 1500, days=DAYS)
    own = [world.add_character(pilot, 400, days=DAYS) for pilot in pilots]
    ids = [*shared, *own[0], *own[1]]
    fake.configure(item_shape="mixed")
    env = service_env(fake, ZKILLBOARD_REQUESTS_PER_SECOND="1000")

    with running_workers(env, count=2, queues=WORKER_QUEUES):
        jobs = [queue_backfill(env, pilot) for pilot in pilots]
        wait_for(all_finished, timeout=300)

    done = list(BackfillJob.objects.filter(pk__in=jobs))
    assert {job.status for job in done} == {BackfillJob.Status.SUCCEEDED}
    assert [job.stored + job.already_stored for job in done] == [1900, 1900]
    # Each killmail was inserted by exactly one of the two jobs.
    assert sum(job.stored for job in done) == len(ids) == 2300
    assert_stored_exactly_once(world, ids)
    assert fake.stats()["violation_count"] == 0


def test_a_worker_killed_in_the_middle_of_a_day_costs_that_day_a_download(fake, world):
    # Two UTC days of about 3,000 killmails each, with raw dumps: stored 1,000 at a time.
    newest = datetime(2026, 8, 31, 23, 59, tzinfo=UTC)
    world.add_character(CHARACTER, 6000, newest=newest, days=2)
    ids = world.killmail_ids_on(date(2026, 8, 30)) + world.killmail_ids_on(date(2026, 8, 31))
    env = service_env(fake, BACKFILL_LEASE_SECONDS="10")

    def day_half_done() -> bool:
        return BackfillDay.objects.filter(done_at=None, stored__gt=0).exists()

    with running_workers(env, count=1, queues=WORKER_QUEUES) as workers:
        queued = manage(
            env, "backfill_history", "--from-date", "2026-08-30", "--to-date", "2026-08-31",
            "--json",
        )  # fmt: skip
        assert queued.returncode == 0, queued.stderr[-2000:]
        wait_for(day_half_done, timeout=120)
        workers.kill(workers.processes[0])
        killed_mid_day = day_half_done()
        unfinished = BackfillDay.objects.filter(done_at=None).count()
        workers.start()
        wait_for(all_finished, timeout=300)

    job = BackfillJob.objects.get(pk=json.loads(queued.stdout)["job"])
    assert killed_mid_day
    assert job.status == BackfillJob.Status.SUCCEEDED, job.last_error
    # Counted once each, though part of a day was stored before the kill.
    assert (job.killmails_listed, job.stored, job.already_stored) == (len(ids), len(ids), 0)
    assert job.bodies_from_esi == 0
    assert_stored_exactly_once(world, ids)
    # Each day the kill interrupted is downloaded once more; the others were not.
    assert 2 < fake.stats()["r2z2_raw"] <= 2 + unfinished
    assert fake.stats()["violations"] == []
