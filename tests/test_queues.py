"""The queue names of config/queues.py match the workers of the Procfile and compose.yaml, and
the task routes."""

from __future__ import annotations

import shlex
import sys

import yaml
from django.conf import settings

from config.queues import BACKFILL_QUEUES, ENRICHMENT_QUEUES, QUEUES, worker_command
from tests.workers import ROOT


def queues_of(command: str) -> tuple[str, ...]:
    """The queues a worker's command line consumes (its `-Q` argument)."""
    arguments = shlex.split(command)
    return tuple(arguments[arguments.index("-Q") + 1].split(","))


def procfile_queues(process: str) -> tuple[str, ...]:
    """The queues the Procfile's `process` line consumes."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name == process:
            return queues_of(command)
    raise AssertionError(f"no {process} line in the Procfile")


def compose_queues(service: str) -> tuple[str, ...]:
    """The queues compose.yaml's `service` consumes (its command is `sh -c LINE`)."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    return queues_of(services[service]["command"][-1])


def test_procfile_workers_consume_the_shared_queues():
    assert procfile_queues("worker_backfill") == BACKFILL_QUEUES
    assert procfile_queues("worker_enrichment") == ENRICHMENT_QUEUES


def test_compose_workers_consume_the_shared_queues():
    assert compose_queues("worker_backfill") == BACKFILL_QUEUES
    assert compose_queues("worker_enrichment") == ENRICHMENT_QUEUES


def test_every_task_route_and_scheduled_task_goes_to_a_consumed_queue():
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    scheduled = {
        entry.get("options", {}).get("queue", settings.CELERY_TASK_DEFAULT_QUEUE)
        for entry in settings.CELERY_BEAT_SCHEDULE.values()
    }

    assert routed | scheduled | {settings.CELERY_TASK_DEFAULT_QUEUE} <= set(QUEUES)


def test_worker_command_consumes_the_given_queues_on_this_interpreter():
    command = worker_command("test0@%h", BACKFILL_QUEUES, concurrency=3)

    assert command[:6] == [sys.executable, "-m", "celery", "-A", "config", "worker"]
    assert command[command.index("-Q") + 1] == "zkillboard_backfill,esi_killmail,r2z2_history"
    assert command[command.index("-c") + 1] == "3"
