"""Metrics, health and JSON logs: what an operator alerts on, read as Prometheus reads it."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from celery import shared_task
from celery.signals import task_prerun
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from kombu import Connection

from backfill import lifecycle, tasks
from backfill.models import DayCoverage
from killboard.models import RejectedKillmail
from live.models import FollowerState
from monitoring import health, metrics
from monitoring.logs import ContextFilter, JsonFormatter
from monitoring.tasks import beat_heartbeat
from tests.factories import KillmailFactory
from tests.workers import manage

CHARACTER = 2117325769
TOKEN = "development-only-not-a-secret-metrics"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
NO_BROKER = "amqp://guest:guest@127.0.0.1:9//"
SAMPLE = re.compile(r"^(?P<name>\w+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


@pytest.fixture(autouse=True)
def _empty_cache(db: Any) -> None:
    """Transactional tests leave the shared cache (a database table) behind: start empty."""
    cache.clear()


def scrape(client: Client | None = None, **headers: str) -> dict[tuple[str, str], float]:
    """GET /metrics from loopback: {(name, labels): value}."""
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    samples = {}
    for line in response.content.decode().splitlines():
        match = SAMPLE.match(line)
        if match:
            samples[match["name"], match["labels"] or ""] = float(match["value"])
    return samples


def rabbitmq() -> None:
    """Skip (fail in CI) unless RabbitMQ answers on loopback."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"RabbitMQ is not answering on 127.0.0.1:5672 ({exc})")
        pytest.skip(f"RabbitMQ is not answering on 127.0.0.1:5672 ({exc})")


def with_broker(settings: Any, url: str) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = url


# -- who may read the metrics -------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_answer_loopback_clients():
    assert ("killboard_backfill_jobs", 'status="queued"') in scrape()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "headers",
    [
        {"REMOTE_ADDR": "203.0.113.9"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"},
        {"REMOTE_ADDR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer wrong"},
    ],
    ids=["remote", "through a proxy", "wrong token"],
)
def test_metrics_refuse_remote_clients_without_the_token(settings: Any, headers: dict):
    settings.METRICS_TOKEN = TOKEN

    response = Client().get("/metrics", **headers)

    assert response.status_code == 401
    assert b"killboard_" not in response.content


@pytest.mark.django_db
def test_metrics_answer_remote_clients_with_the_token(settings: Any):
    settings.METRICS_TOKEN = TOKEN

    samples = scrape(REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert ("killboard_backfill_jobs", 'status="running"') in samples


@pytest.mark.django_db
def test_metrics_token_guessing_is_locked_out(settings: Any):
    settings.METRICS_TOKEN = TOKEN
    settings.AUTH_FAILURE_LIMIT = 3
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    for attempt in range(3):
        Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer guess{attempt}", **remote)

    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **remote)

    assert response.status_code == 429
    assert b"Too many failed attempts: try again in 15 minutes." in response.content


# -- what they show -------------------------------------------------------------------------


@pytest.fixture
def progress_seen() -> Iterator[list[float]]:
    """The job's `stored` counter as /metrics shows it before each page a backfill fetches."""
    seen: list[float] = []

    def before_page(sender: Any = None, args: Any = (), **_: Any) -> None:
        if sender is not None and sender.name == "backfill.tasks.fetch_page":
            samples = scrape()
            seen.append(samples[("killboard_backfill_job_progress", progress_labels(args[0]))])

    task_prerun.connect(before_page, weak=False)
    yield seen
    task_prerun.disconnect(before_page)


def progress_labels(job_id: int, counter: str = "stored") -> str:
    return f'counter="{counter}",job_id="{job_id}"'


@pytest.mark.django_db(transaction=True)
def test_metrics_show_a_jobs_counters_moving_during_a_backfill(fake, world, progress_seen):
    world.add_character(CHARACTER, 450)
    fake.configure(item_shape="zkbonly")  # every body from ESI: its budgets show too
    job = lifecycle.create_job(CHARACTER)
    before = scrape()

    tasks.start_job(job.pk)

    after = scrape()
    assert before[("killboard_backfill_jobs", 'status="queued"')] == 1
    # Before each of zKillboard's pages of 200: what the pages before it stored.
    assert progress_seen == [0, 200, 400]
    assert after[("killboard_backfill_killmails_total", 'outcome="stored"')] == 450
    assert after[("killboard_backfill_bodies_total", 'source="esi"')] == 450
    assert after[("killboard_backfill_fetches_total", 'kind="zkillboard_page"')] == 3
    assert after[("killboard_backfill_jobs", 'status="succeeded"')] == 1
    # A finished job no longer shows counters of its own.
    assert ("killboard_backfill_job_progress", progress_labels(job.pk)) not in after
    # What ESI said was left of the killmail bucket and of the error limit.
    limit = after[("killboard_esi_tokens_limit", 'group="killmail"')]
    assert 0 <= after[("killboard_esi_tokens_remaining", 'group="killmail"')] < limit
    assert after[("killboard_esi_error_limit_remaining", "")] == 100
    assert ("killboard_rate_limit_backlog_seconds", 'limit="esi:killmail"') in after


@pytest.mark.django_db
def test_metrics_show_rejected_killmails_live_lag_and_short_days():
    record = KillmailFactory()
    RejectedKillmail.objects.create(
        killmail_id=record["killmail_id"], record=record, digest="0" * 64, reason="bad"
    )
    now = timezone.now()
    FollowerState.objects.create(
        name="r2z2",
        sequence=101,
        head_sequence=150,
        last_sequence=100,
        lag_seconds=4.5,
        stored=90,
        heartbeat_at=now - timedelta(seconds=30),
    )
    DayCoverage.objects.create(day=date(2026, 11, 29), zkb_count=15, stored_count=9, checked_at=now)
    DayCoverage.objects.create(
        day=date(2026, 11, 30), zkb_count=7, stored_count=7, complete=True, checked_at=now
    )

    samples = scrape()

    assert samples[("killboard_rejected_killmails", "")] == 1
    assert samples[("killboard_live_lag_seconds", 'feed="r2z2"')] == 4.5
    assert samples[("killboard_live_behind_sequences", 'feed="r2z2"')] == 50
    assert samples[("killboard_live_last_sequence", 'feed="r2z2"')] == 100
    assert 30 <= samples[("killboard_live_heartbeat_age_seconds", 'feed="r2z2"')] < 60
    assert samples[("killboard_live_killmails_total", 'feed="r2z2",outcome="stored"')] == 90
    assert samples[("killboard_coverage_days", 'state="short"')] == 1
    assert samples[("killboard_coverage_days", 'state="complete"')] == 1
    assert samples[("killboard_coverage_missing_killmails", "")] == 6


def test_queue_lengths_come_from_the_broker(settings: Any):
    rabbitmq()
    with_broker(settings, RABBITMQ)
    queue = f"monitoring-test-{uuid.uuid4().hex}"
    with Connection(RABBITMQ) as broker:
        channel = broker.channel()
        channel.queue_declare(queue=queue, auto_delete=False)
        for _ in range(3):
            channel.basic_publish(channel.prepare_message(b"x"), exchange="", routing_key=queue)
        try:
            lengths = metrics.queue_lengths([queue, f"{queue}-never-declared"])
        finally:
            channel.queue_delete(queue)

    assert lengths == {queue: (3, 0)}


@pytest.mark.django_db
def test_metrics_say_the_broker_is_down_when_it_does_not_answer(settings: Any):
    with_broker(settings, NO_BROKER)

    samples = scrape()

    assert samples[("killboard_broker_up", "")] == 0


@pytest.mark.django_db
def test_metrics_have_no_queues_on_the_embedded_default():
    assert not [
        name for name, _ in scrape() if name.startswith(("killboard_queue", "killboard_broker"))
    ]


# -- /healthz ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_healthz_is_ok_on_the_embedded_default(client: Client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "failing": [],
        "checks": {"database": "ok", "broker": "embedded", "beat": "embedded"},
    }


@pytest.mark.django_db
def test_healthz_fails_without_a_recent_beat(client: Client, settings: Any):
    rabbitmq()
    with_broker(settings, RABBITMQ)

    never = client.get("/healthz")
    beat_heartbeat.apply()
    fresh = client.get("/healthz")
    cache.set(health.HEARTBEAT_KEY, datetime.now(UTC).timestamp() - 600, timeout=None)
    stale = client.get("/healthz")

    assert never.status_code == 503
    assert never.json()["failing"] == ["beat"]
    assert never.json()["checks"]["beat"] == "no heartbeat yet"
    assert fresh.status_code == 200
    assert fresh.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "beat": "last heartbeat 0s ago (at most 180s)",
    }
    assert stale.status_code == 503
    assert stale.json()["checks"]["beat"] == "last heartbeat 600s ago (at most 180s)"


@pytest.mark.django_db
def test_healthz_names_an_unreachable_broker(client: Client, settings: Any):
    with_broker(settings, NO_BROKER)
    beat_heartbeat.apply()

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["failing"] == ["broker"]
    assert response.json()["checks"]["broker"].startswith("unreachable")


def test_beat_sends_the_heartbeat_every_minute(settings: Any):
    entry = settings.CELERY_BEAT_SCHEDULE["monitoring-beat-heartbeat"]

    assert entry["task"] == beat_heartbeat.name
    assert entry["schedule"] == timedelta(seconds=60)


# -- JSON logs ----------------------------------------------------------------------------


def json_line(record: logging.LogRecord) -> dict[str, Any]:
    ContextFilter().filter(record)
    return json.loads(JsonFormatter().format(record))


def test_json_log_lines_carry_the_ids_passed_as_extra():
    logger = logging.getLogger("backfill.tasks")
    record = logger.makeRecord(
        "backfill.tasks",
        logging.WARNING,
        __file__,
        1,
        "Job %s: killmail %s failed",
        (7, 99),
        None,
        extra={"job_id": 7, "killmail_id": 99},
    )

    line = json_line(record)

    assert line == {
        "time": line["time"],
        "level": "WARNING",
        "logger": "backfill.tasks",
        "message": "Job 7: killmail 99 failed",
        "job_id": 7,
        "killmail_id": 99,
    }
    assert datetime.fromisoformat(line["time"]).tzinfo is not None


@shared_task(bind=True)
def _logging_task(self: Any, job_id: int, cursor: str) -> dict[str, Any]:
    record = logging.getLogger("tests").makeRecord(
        "tests", logging.INFO, __file__, 1, "page %s", (cursor,), None
    )
    return {"line": json_line(record), "task_id": self.request.id}


def test_json_log_lines_inside_a_task_carry_its_task_id_and_job_id():
    result = _logging_task.apply((42, "all/3")).get()

    assert result["line"]["task_id"] == result["task_id"]
    assert result["line"]["job_id"] == 42
    assert result["line"]["message"] == "page all/3"


def test_log_format_json_writes_one_json_object_a_line():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "LOG_FORMAT": "json"}
    code = (
        "import logging; logging.getLogger('backfill.tasks')"
        ".warning('Job %s stalled', 5, extra={'job_id': 5})"
    )

    result = manage(env, "shell", "-c", code)

    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["message"] == "Job 5 stalled"
    assert line["job_id"] == 5
    assert line["level"] == "WARNING"


def test_an_unknown_log_format_is_refused():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "LOG_FORMAT": "xml"}

    result = manage(env, "check")

    assert result.returncode != 0
    assert "LOG_FORMAT must be text or json" in result.stderr
