"""The pipeline on real services: PostgreSQL, RabbitMQ and `celery worker` processes.

Workers run as separate processes against the test database and the fake upstream, which
counts every rule a client breaks. Jobs are started the way operators start them, with
`manage.py backfill_character` in a process of its own.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from backfill.models import BackfillJob, PendingKillmail
from killboard.models import Character, Killmail
from tests.workers import (
    all_finished,
    expected_rows,
    manage,
    queue_backfill,
    require_services,
    restart_rabbitmq,
    running_workers,
    service_env,
    stored_rows,
    wait_until,
)

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

CHARACTER = 2117325769
NEWEST = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _services() -> None:
    require_services()


def test_backfill_on_workers_stores_every_killmail_once(fake, world):
    ids = world.add_character(CHARACTER, 1200, newest=NEWEST, days=365)
    fake.configure(item_shape="mixed")
    env = service_env(fake, ZKILLBOARD_REQUESTS_PER_SECOND="1000")

    with running_workers(env, count=2):
        result = manage(env, "backfill_character", str(CHARACTER), "--wait", "--json")
        # With workers, every stored batch queues a name scan on the enrichment queues.
        wait_until(lambda: not Character.objects.filter(name="").exists(), timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["status"] == "succeeded"
    assert summary["stored"] == 1200
    assert summary["bodies_from_esi"] == fake.stats()["esi_killmails"] > 0
    assert set(Killmail.objects.values_list("killmail_id", flat=True)) == set(ids)
    assert stored_rows() == expected_rows(world, ids)
    assert fake.stats()["violation_count"] == 0


def test_workers_share_the_zkillboard_rate_and_the_esi_bucket(fake, world):
    characters = [2117325769, 2117325770, 2117325771]
    for character_id in characters:
        world.add_character(character_id, 500, newest=NEWEST, days=365)
    # Real zKillboard rate; an ESI bucket that one process alone would overrun.
    fake.configure(item_shape="mixed", zkb_rate=1.0, esi_killmail_bucket=(3000, 30.0))
    env = service_env(fake, ZKILLBOARD_REQUESTS_PER_SECOND="1")

    with running_workers(env, count=3, concurrency=2):
        for character_id in characters:
            queue_backfill(env, character_id)
        wait_until(all_finished, timeout=300)

    statuses = set(BackfillJob.objects.values_list("status", flat=True))
    assert statuses == {BackfillJob.Status.SUCCEEDED}
    assert Killmail.objects.count() == len(world.all_killmail_ids())
    stats = fake.stats()
    assert stats["zkb_pages"] == 9
    assert stats["esi_killmails"] > 500
    assert stats["violations"] == []


def test_worker_killed_mid_job_loses_and_duplicates_nothing(fake, world):
    ids = world.add_character(CHARACTER, 1500, newest=NEWEST, days=365)
    fake.configure(item_shape="zkbonly", esi_killmail_bucket=(2000, 20.0))
    env = service_env(fake, ZKILLBOARD_REQUESTS_PER_SECOND="1000", BACKFILL_LEASE_SECONDS="15")

    with running_workers(env, count=2) as workers:
        job_id = queue_backfill(env, CHARACTER)
        wait_until(lambda: Killmail.objects.count() >= 300, timeout=120)
        workers.kill(workers.processes[0])
        killed_at = Killmail.objects.count()
        workers.start()
        wait_until(all_finished, timeout=300)

    job = BackfillJob.objects.get(pk=job_id)
    assert killed_at < 1500
    assert job.status == BackfillJob.Status.SUCCEEDED, job.last_error
    assert set(Killmail.objects.values_list("killmail_id", flat=True)) == set(ids)
    assert stored_rows() == expected_rows(world, ids)
    assert not PendingKillmail.objects.exists()
    assert job.stored + job.already_stored == 1500
    assert fake.stats()["violation_count"] == 0


def test_rabbitmq_restart_mid_job_costs_retries_not_killmails(fake, world):
    ids = world.add_character(CHARACTER, 1500, newest=NEWEST, days=365)
    fake.configure(item_shape="zkbonly", esi_killmail_bucket=(2000, 20.0))
    env = service_env(fake, ZKILLBOARD_REQUESTS_PER_SECOND="1000", BACKFILL_LEASE_SECONDS="15")

    with running_workers(env, count=2):
        job_id = queue_backfill(env, CHARACTER)
        wait_until(lambda: Killmail.objects.count() >= 300, timeout=120)
        restart_rabbitmq()
        restarted_at = Killmail.objects.count()
        wait_until(all_finished, timeout=300)

    job = BackfillJob.objects.get(pk=job_id)
    assert restarted_at < 1500
    assert job.status == BackfillJob.Status.SUCCEEDED, job.last_error
    assert set(Killmail.objects.values_list("killmail_id", flat=True)) == set(ids)
    assert stored_rows() == expected_rows(world, ids)
    assert fake.stats()["violation_count"] == 0
