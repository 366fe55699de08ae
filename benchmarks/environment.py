"""What every benchmark stands on: the bench database, the fake upstream and Celery workers.

The benchmarks run against PostgreSQL (a database of their own, dropped and created anew),
RabbitMQ, and the fake upstream on loopback, each started here as a subprocess, so the
workers, the fake and the benchmark process share the machine the way a deployment would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from config.queues import QUEUES, worker_command

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
CELERY = str(ROOT / ".venv" / "bin" / "celery")

# The database the benchmarks create and drop; BENCH_DATABASE names another, so that two runs
# on one machine do not drop each other's.
BENCH_DATABASE = os.environ.get("BENCH_DATABASE", "killboard_bench")
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{BENCH_DATABASE}"
# A virtual host of its own (named like the database), so that other workers on this machine
# (tests, a demo, another run) neither take the benchmark's tasks nor lose theirs to its
# purges; "/" when it cannot be created.
BROKER_VHOST = BENCH_DATABASE
BROKER_URL = f"amqp://guest:guest@127.0.0.1:5672/{BROKER_VHOST}"
SHARED_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
WORKER_CONCURRENCY = 4
# Seconds to wait for a subprocess to come up or to go down.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


@dataclass
class Row:
    """One line of the result table: a figure, its anchor from the same run, and the target.

    With an anchor (a limit this machine showed in this run, or a rule's own rate), `ratio`
    is figure / anchor and `target` the ratio to reach (">= 0.8"). Without one, the target
    is absolute and `ratio` is figure / target, oriented so that >= 1 meets it.
    """

    name: str
    figure: str
    target: str
    ratio: float | None
    ok: bool
    note: str = ""
    anchor: str = "-"


def _own_vhost() -> bool:
    """Create the broker's bench virtual host for guest; False if rabbitmqctl cannot."""
    try:
        subprocess.run(["rabbitmqctl", "add_vhost", BROKER_VHOST], capture_output=True)
        done = subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", BROKER_VHOST, "guest", ".*", ".*", ".*"],
            capture_output=True,
        )
    except OSError:
        return False
    return done.returncode == 0


def setup_django() -> None:
    """Create the bench database anew, point Django at it and at the broker, and migrate."""
    global BROKER_URL
    import psycopg

    if not _own_vhost():
        print("benchmarks: no vhost of their own; sharing the broker's /", file=sys.stderr)
        BROKER_URL = SHARED_BROKER_URL

    with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DATABASE_URL"] = DATABASE_URL
    # A broker, so that ingest's "killmails stored" signal queues enrichment instead of
    # running it in this process; nothing consumes it until a worker starts (queues are
    # purged before every worker run).
    os.environ["CELERY_BROKER_URL"] = BROKER_URL
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    os.environ["DJANGO_DEBUG"] = "true"  # development mode: the development secret key
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def drop_database() -> None:
    """Drop the bench database (after the run)."""
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")


def reset_data() -> None:
    """Empty every table of the project's apps (killmails, entities, jobs, results)."""
    from django.apps import apps
    from django.db import connection

    labels = ("killboard", "backfill", "enrichment", "django_celery_results")
    tables = [
        model._meta.db_table
        for label in labels
        for model in apps.get_app_config(label).get_models()
        if model._meta.managed
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def purge_queues() -> None:
    """Drop every message left in the project's queues."""
    subprocess.run(
        [CELERY, "-A", "config", "purge", "-f", "-Q", ",".join(QUEUES)],
        cwd=ROOT,
        env=subprocess_env(),
        check=True,
        capture_output=True,
    )


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a worker or command: the bench database and broker, plus `extra`."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="true",
        DATABASE_URL=DATABASE_URL,
        CELERY_BROKER_URL=BROKER_URL,
        LOG_LEVEL="ERROR",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size of a running process (VmHWM), in MB; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_pids(pid: int) -> list[int]:
    """The direct children of a process."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


class FakeProcess:
    """The fake upstream as its own process (`python -m fakeupstream`)."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process: subprocess.Popen[str] | None = None
        self.urls: dict[str, str] = {}
        self.session = requests.Session()

    def __enter__(self) -> FakeProcess:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "fakeupstream", "--port", "0", *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the fake upstream did not start")
        self.urls = json.loads(line)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _control(self, method: str, action: str, payload: Any = None) -> Any:
        response = self.session.request(
            method, f"{self.urls['url']}/_fake/{action}", json=payload, timeout=30
        )
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        """Request counts, statuses and violations since the last reset."""
        return self._control("GET", "stats")

    def esi_report(self) -> dict[str, Any]:
        """How ESI was used: calls by group, breaches, requests in flight, bucket charges."""
        return self._control("GET", "esi")

    def live(self) -> dict[str, Any]:
        """The live feed's report: packages appended, their upload times, fetches."""
        return self._control("GET", "live")

    def configure(self, **changes: Any) -> None:
        """Change the fake's behaviour (see FakeUpstream.configure)."""
        self._control("POST", "config", changes)

    def reset(self) -> None:
        """Forget counts, violations, buckets and blocks."""
        self._control("POST", "reset_stats")
        self._control("POST", "reset_limits")


class Worker:
    """A Celery worker over RabbitMQ, by default consuming every queue as the Procfile runs it."""

    def __init__(
        self, fake: FakeProcess, log: Path, queues: tuple[str, ...] = QUEUES, **env: str
    ) -> None:
        # Node names must differ between workers on one broker (their control queues do).
        self.name = f"{log.stem}@%h"
        self.env = subprocess_env(
            ZKILLBOARD_API_URL=fake.urls["zkb_url"],
            ESI_URL=fake.urls["esi_url"],
            R2Z2_URL=fake.urls["r2z2_url"],
            **env,
        )
        self.log = log
        self.queues = queues
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Worker:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                worker_command(self.name, self.queues, WORKER_CONCURRENCY, loglevel="INFO"),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while b" ready." not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start; see {self.log}")
            time.sleep(0.2)
        return self

    def peak_rss_mb(self) -> tuple[float, float]:
        """(peak RSS of the main process, highest peak RSS of its pool processes), in MB."""
        assert self.process is not None
        pool = [peak_rss_mb(pid) for pid in child_pids(self.process.pid)]
        return peak_rss_mb(self.process.pid), max(pool, default=0.0)

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGQUIT)  # cold shutdown, pool included
            self.process.wait()


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """Measure wall time: `with timer() as t: ...` then `t["seconds"]`."""
    took: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield took
    finally:
        took["seconds"] = time.perf_counter() - start
