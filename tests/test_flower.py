"""Flower against RabbitMQ: a real worker runs a backfill and Flower's API shows its tasks.

Runs when the tests run on PostgreSQL (the worker processes share the test database), and
skips on SQLite. RabbitMQ must answer: without it the test skips with the reason, except in
CI (`CI=true`), where a missing service fails it.
The queues are purged before and after, so leftovers of other runs cannot interfere.
"""

from __future__ import annotations

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

from backfill.models import BackfillJob
from config.queues import worker_command
from fakeupstream.server import FakeUpstream
from fakeupstream.world import World
from tests.workers import ROOT, purge_queues, require_services, service_env

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

FLOWER_AUTH = ("flower", "test-" + uuid.uuid4().hex[:8])
CHARACTER = 2117325769
WAIT_SECONDS = 90


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
def upstream() -> Iterator[FakeUpstream]:
    world = World(seed=3)
    world.add_character(CHARACTER, 12)
    with FakeUpstream(world, zkb_rate=1e6, esi_killmail_bucket=(10**6, 900.0)) as fake:
        yield fake


@pytest.fixture
def flower_and_worker(
    transactional_db: Any, upstream: FakeUpstream, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """Flower and one worker on every queue; yields Flower's URL and the environment."""
    require_services()
    env = service_env(upstream, ZKILLBOARD_REQUESTS_PER_SECOND="1000", PYTHONUNBUFFERED="1")
    port = _free_port()
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    purge_queues()
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
            *worker_command(f"flowertest-{uuid.uuid4().hex[:6]}@%h", loglevel="INFO"),
            "--task-events",
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
        purge_queues()
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
