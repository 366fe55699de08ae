"""Real services for the service tests: PostgreSQL, RabbitMQ and `celery worker` processes.

Tests that use them skip with a reason on a laptop without them, and fail in CI (CI=true),
where a missing service is a broken machine, not a reason to pass.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from kombu import Connection

from backfill.models import BackfillJob
from config.queues import QUEUES, worker_command
from killboard.models import Item, Killmail, Participant

ROOT = Path(__file__).resolve().parent.parent
# A virtual host of the tests' own, so workers of other runs (a benchmark, a dev's worker)
# on the same RabbitMQ never take their messages. TEST_RABBITMQ_VHOST gives a run one of its
# own, so two runs at once (a CI run and a developer's loop) never share queues.
VHOST = os.environ.get("TEST_RABBITMQ_VHOST", "killboard_test")
# The workers' log level: TEST_WORKER_LOGLEVEL=info shows every retry and wait of a run.
WORKER_LOGLEVEL = os.environ.get("TEST_WORKER_LOGLEVEL", "warning")


def require_services() -> None:
    """Skip (fail in CI) unless the database is PostgreSQL and RabbitMQ answers."""
    if connection.vendor != "postgresql":
        pytest.skip("service tests need DATABASE_URL=postgres://... (CI runs them there)")
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        message = f"RabbitMQ is not answering on 127.0.0.1:5672 ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@lru_cache(maxsize=1)
def broker_url() -> str:
    """The tests' broker: their own virtual host when rabbitmqctl can make it, else `/`."""
    commands = (
        ["rabbitmqctl", "-q", "add_vhost", VHOST],
        ["rabbitmqctl", "-q", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
    )
    try:
        for command in commands:
            subprocess.run(command, capture_output=True, timeout=60, check=False)
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return "amqp://guest:guest@127.0.0.1:5672//"
    if VHOST not in listed.stdout.split():
        return "amqp://guest:guest@127.0.0.1:5672//"
    return f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"


def purge_queues() -> None:
    """Drop messages that earlier runs may have left in the project's queues."""
    with Connection(broker_url()) as broker:
        channel = broker.channel()
        for queue in QUEUES:
            channel.queue_declare(queue, durable=True, auto_delete=False)
            channel.queue_purge(queue)


def service_env(fake: Any, **extra: str) -> dict[str, str]:
    """The environment of a worker or CLI process: test database, broker and fake upstream."""
    database = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": (
            f"postgres://{database['USER']}@{database['HOST'] or '127.0.0.1'}:"
            f"{database['PORT'] or 5432}/{database['NAME']}"
        ),
        "CELERY_BROKER_URL": broker_url(),
        "ZKILLBOARD_API_URL": fake.zkb_url,
        "ESI_URL": fake.esi_url,
        "R2Z2_URL": fake.r2z2_url,
        "EVE_CONTACT": "tests@example.com",
        "DJANGO_DEBUG": "true",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


class Workers:
    """`celery worker` processes consuming `queues`; start, kill and stop them."""

    def __init__(self, env: dict[str, str], queues: tuple[str, ...] = QUEUES) -> None:
        self.env = env
        self.queues = queues
        self.processes: list[subprocess.Popen[bytes]] = []
        self.beat: subprocess.Popen[bytes] | None = None

    def start(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        name = f"test{len(self.processes)}@%h"
        process = subprocess.Popen(
            worker_command(name, self.queues, concurrency, WORKER_LOGLEVEL),
            cwd=ROOT,
            env=self.env,
            start_new_session=True,  # its own process group, so a kill takes its children too
        )
        self.processes.append(process)
        return process

    def start_beat(self, directory: Path) -> None:
        """Celery beat, which runs the watchdog that resumes stalled jobs."""
        self.beat = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "celery"),
                "-A",
                "config",
                "beat",
                "-s",
                str(directory / "celerybeat-schedule"),
                "-l",
                "warning",
            ],
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
        )

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker and its pool children: no warm shutdown, no acks."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in [*self.processes, *([self.beat] if self.beat else [])]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.processes, *([self.beat] if self.beat else [])]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextmanager
def running_workers(
    env: dict[str, str],
    count: int = 2,
    concurrency: int = 2,
    queues: tuple[str, ...] = QUEUES,
) -> Iterator[Workers]:
    """Start `count` worker processes on `queues` for the duration of the block."""
    purge_queues()
    workers = Workers(env, queues)
    try:
        for _ in range(count):
            workers.start(concurrency)
        yield workers
    finally:
        workers.stop()
        purge_queues()


def manage(
    env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `manage.py` in a process of its own (as an operator would)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_follower(env: dict[str, str], output: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start `manage.py follow_live` in a process group of its own (so a kill takes it all),
    its output appended to `output` (a pipe nobody reads could fill and stall it)."""
    with output.open("ab") as stream:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "follow_live", *args],
            cwd=ROOT,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(condition: Any, timeout: float, interval: float = 0.2) -> None:
    """Poll `condition()` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


def terminate_database_sessions() -> int:
    """Terminate every other session of the test database (workers' included); how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def restart_rabbitmq() -> None:
    """Stop and start the RabbitMQ application: every connection drops, durable queues stay."""
    for command in (["stop_app"], ["start_app"], ["await_startup"]):
        subprocess.run(
            ["rabbitmqctl", "-q", *command], check=True, capture_output=True, timeout=120
        )


def queue_backfill(env: dict[str, str], character_id: int) -> int:
    """Queue a backfill the way an operator does, with the CLI; return the job's id."""
    result = manage(env, "backfill_character", str(character_id), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)["job"]


def all_finished() -> bool:
    """No backfill job is queued or running."""
    return not BackfillJob.objects.active().exists()


def expected_rows(world: Any, killmail_ids: list[int]) -> tuple[int, int, int]:
    """Killmails, participants and items the upstream's killmails make."""
    participants = items = 0
    for killmail_id in killmail_ids:
        body = world.body(killmail_id)
        participants += 1 + len(body["attackers"])
        for item in body["victim"].get("items", ()):
            items += 1 + len(item.get("items", ()))
    return len(killmail_ids), participants, items


def stored_rows() -> tuple[int, int, int]:
    """Killmails, participants and items stored."""
    return Killmail.objects.count(), Participant.objects.count(), Item.objects.count()
