"""No unexplained stalls: after a blow to the database, the work moves again within seconds.

A task that loses its database connection retries on a fresh one after a short backoff
(config.retries). The service tests terminate every PostgreSQL session of the test database
while tasks are in flight, several times, and require the job to move again within seconds
of each blow: far less than the lease a claim is held for (BACKFILL_LEASE_SECONDS, at its
production value here), and with no beat, so no watchdog can hide a stall.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from backfill import lifecycle
from backfill.models import BackfillJob, PendingKillmail
from backfill.services import BODY_CHUNK, Claim, claim_pending
from config.queues import BACKFILL_QUEUES
from killboard.models import Killmail
from tests.workers import (
    all_finished,
    expected_rows,
    purge_queues,
    queue_backfill,
    require_services,
    running_workers,
    service_env,
    stored_rows,
    terminate_database_sessions,
    wait_until,
)

CHARACTER = 2117325769
BLOWS = 3
# Seconds within which the work must move again after a blow. A lost connection is retried
# after 1-3 s, then 2-6 s, then 4-12 s (config.retries.backoff); a claim left behind would
# hold the work for the whole lease, 120 s.
RECOVERY_SECONDS = 20.0
# Killmails older than the bodies on zKillboard's pages and than R2Z2's raw dumps: every
# body comes from ESI, in chunks of BODY_CHUNK.
BEFORE_BODIES = datetime(2026, 5, 31, tzinfo=UTC)


@pytest.fixture
def _services(transactional_db: None) -> Iterator[None]:
    """PostgreSQL, RabbitMQ, and a database the workers see (the test commits to it)."""
    require_services()
    yield
    purge_queues()  # the enrichment tasks the stored killmails queued, which no worker takes


@pytest.mark.django_db
def test_a_retry_takes_over_the_claim_its_attempt_could_not_give_back():
    job = lifecycle.create_job(CHARACTER)
    ids = [3, 2, 1]
    for killmail_id in ids:
        PendingKillmail.objects.create(
            job=job, killmail_id=killmail_id, killmail_hash="0" * 40, zkb={}
        )
    lost = Claim.after()
    assert len(claim_pending(job.pk, ids, lost)) == 3  # then the database goes away

    assert claim_pending(job.pk, ids, Claim.after()) == []  # another task waits for the lease
    # A retry that loses the database before it claims passes the claim on as it got it.
    unlucky = Claim.after(lost.tokens)
    assert unlucky.tokens == [lost.token, unlucky.token]
    retry = Claim.after(unlucky.tokens)
    assert [p.killmail_id for p in claim_pending(job.pk, ids, retry)] == ids
    # A second copy of the same retry (a broker's redelivery) inherits alike, gets nothing.
    assert claim_pending(job.pk, ids, Claim.after(lost.tokens)) == []
    assert retry.tokens == [retry.token]


def blow() -> int:
    """Terminate every session three times over a second: idle ones, busy ones, and those
    that reconnect at once. Returns the sessions terminated."""
    terminated = 0
    for _ in range(3):
        terminated += terminate_database_sessions()
        time.sleep(0.3)
    return terminated


def seconds_until_it_moves(
    moved: Callable[[], int], by: int, timeout: float = RECOVERY_SECONDS
) -> float:
    """Seconds until `moved()` grows by `by` from now; fails after `timeout`."""
    started = time.monotonic()
    before = moved()
    wait_until(lambda: moved() >= before + by, timeout=timeout)
    return time.monotonic() - started


def recoveries_after_blows(asked: Callable[[], int], *, in_flight: int, moved: int) -> list[float]:
    """BLOWS times: once `in_flight` more requests show work in flight, terminate every
    session; the seconds until `moved` more requests show the work moving again."""
    recoveries = []
    for _ in range(BLOWS):
        seconds_until_it_moves(asked, by=in_flight, timeout=60)
        assert blow() > 0
        time.sleep(1)  # the requests in flight during the blow come back
        recoveries.append(seconds_until_it_moves(asked, by=moved))
    return recoveries


@pytest.mark.services
@pytest.mark.usefixtures("_services")
def test_body_tasks_move_again_within_seconds_of_each_lost_database(fake, world):
    # Four chunks for four worker processes: every chunk is in flight when a blow falls, so
    # nothing but their retries can move the job on.
    ids = world.add_character(CHARACTER, 4 * BODY_CHUNK, newest=BEFORE_BODIES, days=30)
    fake.configure(item_shape="zkbonly", esi_killmail_bucket=(400, 20.0))  # 20 bodies a second
    env = service_env(fake, ZKILLBOARD_REQUESTS_PER_SECOND="1000", BACKFILL_LEASE_SECONDS="120")

    def bodies_asked() -> int:
        return fake.stats()["esi_killmails"]

    with running_workers(env, count=2, queues=BACKFILL_QUEUES):
        job_id = queue_backfill(env, CHARACTER)
        recoveries = recoveries_after_blows(bodies_asked, in_flight=15, moved=5)
        wait_until(all_finished, timeout=120)

    print(f"\nbody tasks moved again {', '.join(f'{s:.1f}s' for s in recoveries)} after blows")
    job = BackfillJob.objects.get(pk=job_id)
    assert job.status == BackfillJob.Status.SUCCEEDED, job.last_error
    assert job.stored + job.already_stored == len(ids)
    assert set(Killmail.objects.values_list("killmail_id", flat=True)) == set(ids)
    assert stored_rows() == expected_rows(world, ids)
    assert not PendingKillmail.objects.exists()
    assert fake.stats()["violation_count"] == 0


@pytest.mark.services
@pytest.mark.usefixtures("_services")
def test_day_tasks_move_again_within_seconds_of_each_lost_database(fake, world):
    # About 200 killmails in each of four months with R2Z2's raw day dumps: every month is
    # dense, so its bodies come from a walk over its days, one day task after another.
    ids = world.add_character(CHARACTER, 800, newest=datetime(2026, 11, 1, tzinfo=UTC), days=120)
    fake.configure(item_shape="zkbonly")
    env = service_env(
        fake,
        ZKILLBOARD_REQUESTS_PER_SECOND="1000",
        R2Z2_REQUESTS_PER_SECOND="6",  # the walks last long enough for every blow
        BACKFILL_LEASE_SECONDS="120",
    )

    def dumps_asked() -> int:
        return fake.stats()["r2z2_raw"]

    with running_workers(env, count=2, queues=BACKFILL_QUEUES):
        job_id = queue_backfill(env, CHARACTER)
        recoveries = recoveries_after_blows(dumps_asked, in_flight=6, moved=2)
        # No beat, no watchdog: a walk whose day task was lost would never end.
        wait_until(all_finished, timeout=RECOVERY_SECONDS + 60)

    print(f"\nday tasks moved again {', '.join(f'{s:.1f}s' for s in recoveries)} after blows")
    job = BackfillJob.objects.get(pk=job_id)
    assert job.status == BackfillJob.Status.SUCCEEDED, job.last_error
    assert job.dumps_fetched > 0
    assert set(Killmail.objects.values_list("killmail_id", flat=True)) == set(ids)
    assert stored_rows() == expected_rows(world, ids)
    assert fake.stats()["violation_count"] == 0
