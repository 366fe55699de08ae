"""The Celery queues, and the command line of a worker that consumes them.

The Procfile runs two workers: ``worker_backfill`` on BACKFILL_QUEUES and ``worker_enrichment``
on ENRICHMENT_QUEUES (keep the two in step); those are the queues of the entity kinds with
details in `killboard.entities` (tests/test_entities.py checks both ways). The service tests
and the benchmarks start their workers with ``worker_command()``. Imports neither Django
models nor pytest, so any process may use it before Django is set up.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

BACKFILL_QUEUES = ("zkillboard_backfill", "esi_killmail", "r2z2_history")
ENRICHMENT_QUEUES = (
    "esi_character_info_queue",
    "esi_corporation_info_queue",
    "esi_alliance_info_queue",
    "esi_type_info_queue",
)
QUEUES = BACKFILL_QUEUES + ENRICHMENT_QUEUES


def worker_command(
    name: str, queues: Iterable[str] = QUEUES, concurrency: int = 2, loglevel: str = "warning"
) -> list[str]:
    """`celery worker` on `queues`, node `name` (unique on the broker, e.g. "test0@%h").

    It runs on this interpreter, so in the same virtualenv as its caller. Without gossip and
    mingle: short-lived workers need not learn about each other, and start faster.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-n",
        name,
        "--without-gossip",
        "--without-mingle",
        "-l",
        loglevel,
    ]
