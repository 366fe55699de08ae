"""Flower against RabbitMQ: a real worker runs a backfill and Flower's API shows its tasks.

Runs when the tests run on PostgreSQL (the worker processes share the test database), and
skips on SQLite. RabbitMQ must answer: without it the test skips with the reason, except in
CI (`CI=true`), where a missing service fails it.
The queues are purged before and after, so leftovers of other runs cannot interfere.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings as django_settings
from kombu import Connection
from kombu.exceptions import OperationalError

from backfill.models import BackfillJob
from tests.fakeupstream.server import FakeUpstream
from tests.fakeupstream.world import World

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
QUEUES = (
    "zkillboard_backfill",
    "esi_killmail",
    "esi_character_info_queue",
    "esi_corporation_info_queue",
    "esi_alliance_info_queue",
    "esi_type_info_queue",
)
FLOWER_AUTH = ("flower", "test-" + uuid.uuid4().hex[:8])
CHARACTER = 2117325769
WAIT_SECONDS = 90


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs this service: {reason}")
    pytest.skip(reason)


def _rabbitmq_answers() -> bool:
    try:
        with Connection(BROKER_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
        return True
    except (OSError, OperationalError):
        return False


def _purge() -> None:
    with Connection(BROKER_URL, connect_timeout=5) as connection:
        for name in QUEUES:
            channel = connection.channel()
            # A queue that does not exist yet has nothing to purge (the broker closes the
            # channel on refusing, so closing it again may fail too).
            with contextlib.suppress(Exception):
                channel.queue_purge(name)
            with contextlib.suppress(Exception):
                channel.close()


def _database_url() -> str:
    db = django_settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{db['USER']}{password}@{host}:{port}/{db['NAME']}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        # The main process alone: a warm shutdown lets running tasks finish.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@pytest.fixture
def services_env(transactional_db: Any) -> dict[str, str]:
    """The environment of the worker, Flower and CLI processes (or a skip, or a failure)."""
    if django_settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        # A choice, not a missing service: CI runs the suite on SQLite, then on PostgreSQL.
        pytest.skip("needs DATABASE_URL=postgres://...: the worker processes share the database")
    if not _rabbitmq_answers():
        _missing(f"RabbitMQ does not answer at {BROKER_URL}")
    return {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": BROKER_URL,
        "ZKILLBOARD_REQUESTS_PER_SECOND": "1000",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    world = World(seed=3)
    world.add_character(CHARACTER, 12)
    with FakeUpstream(world, zkb_rate=1e6, esi_killmail_bucket=(10**6, 900.0)) as fake:
        yield fake


@pytest.fixture
def flower_and_worker(
    services_env: dict[str, str], upstream: FakeUpstream, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """Flower and one worker on every queue; yields Flower's URL and the environment."""
    env = {**services_env, "ZKILLBOARD_API_URL": upstream.zkb_url, "ESI_URL": upstream.esi_url}
    port = _free_port()
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    _purge()
    flower = subprocess.Popen(
        [
            *celery,
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
            f"--basic-auth={':'.join(FLOWER_AUTH)}",
            f"--db={tmp_path / 'flower.db'}",
        ],
        cwd=ROOT,
        env=env,
        stdout=open(tmp_path / "flower.log", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [
            *celery,
            "worker",
            "-Q",
            ",".join(QUEUES),
            "--hostname",
            f"flowertest-{uuid.uuid4().hex[:6]}@%h",
            "--concurrency=2",
            "--task-events",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=open(tmp_path / "worker.log", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_worker(url)
        yield url, env
    finally:
        _stop(worker)
        _stop(flower)
        _purge()
        for name in ("worker.log", "flower.log"):
            print(f"--- {name}\n" + (tmp_path / name).read_text()[-4000:])


def _wait_for_worker(url: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            workers = requests.get(
                f"{url}/api/workers", {"refresh": "1"}, auth=FLOWER_AUTH, timeout=10
            )
            if workers.ok and workers.json():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError("Flower saw no worker within the time allowed")


def test_flower_shows_the_tasks_of_a_backfill_run_by_a_worker(
    flower_and_worker: tuple[str, dict[str, str]],
):
    url, env = flower_and_worker

    cli = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "backfill_character",
            str(CHARACTER),
            "--max-pages=2",
            "--limit=5",
            "--wait",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )

    assert cli.returncode == 0, cli.stderr
    summary = json.loads(cli.stdout.strip().splitlines()[-1])
    assert (summary["status"], summary["stored"]) == ("succeeded", 10)
    job = BackfillJob.objects.get(pk=summary["job"])
    assert job.task_ids  # the fetch_page tasks, queued through RabbitMQ

    deadline = time.monotonic() + WAIT_SECONDS
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        tasks = requests.get(f"{url}/api/tasks", auth=FLOWER_AUTH, timeout=5).json()
        seen = {task_id: tasks[task_id] for task_id in job.task_ids if task_id in tasks}
        if len(seen) == len(job.task_ids) and all(t["state"] == "SUCCESS" for t in seen.values()):
            break
        time.sleep(0.5)
    assert {t["name"] for t in seen.values()} == {"backfill.tasks.fetch_page"}
    assert sorted(seen) == sorted(job.task_ids)
    assert {t["state"] for t in seen.values()} == {"SUCCESS"}
    detail = requests.get(f"{url}/api/task/info/{job.task_ids[0]}", auth=FLOWER_AUTH, timeout=5)
    assert detail.json()["args"] == f"({job.pk}, 'all/1')"


def test_flower_refuses_requests_without_credentials(
    flower_and_worker: tuple[str, dict[str, str]],
):
    url, _ = flower_and_worker

    assert requests.get(f"{url}/api/tasks", timeout=5).status_code == 401
    wrong = requests.get(f"{url}/api/tasks", auth=("flower", "wrong"), timeout=5)
    assert wrong.status_code == 401
