"""What /healthz checks: the database, the broker and beat's last heartbeat.

Beat queues `monitoring.tasks.beat_heartbeat` every 60 seconds and a worker stores the time
in the shared cache, so a recent heartbeat proves beat, the broker and a worker all move.
The embedded default (no broker) runs no beat and no broker: both are reported as such.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from kombu import Connection

logger = logging.getLogger(__name__)

HEARTBEAT_KEY = "monitoring:beat-heartbeat"
BROKER_TIMEOUT = 3.0  # seconds, to connect to the broker


@dataclass(frozen=True)
class Check:
    """One check's outcome: `detail` says what was seen, or what failed."""

    ok: bool
    detail: str


def beat() -> None:
    """Record that beat's heartbeat reached a worker now."""
    cache.set(HEARTBEAT_KEY, time.time(), timeout=None)


def heartbeat_age() -> float | None:
    """Seconds since the last heartbeat, None if there was none."""
    last = cache.get(HEARTBEAT_KEY)
    return None if last is None else max(0.0, time.time() - last)


def broker_connection() -> Connection:
    """A connection to the configured broker, not yet opened, failing fast."""
    return Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=BROKER_TIMEOUT,
        transport_options={"max_retries": 0},
    )


def check_database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        logger.warning("Health check: database unreachable: %r", exc)
        return Check(False, f"unreachable ({type(exc).__name__})")
    return Check(True, "ok")


def check_broker() -> Check:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return Check(True, "embedded")
    try:
        with broker_connection() as broker:
            broker.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT)
    except Exception as exc:
        logger.warning("Health check: broker unreachable: %r", exc)
        return Check(False, f"unreachable ({type(exc).__name__})")
    return Check(True, "ok")


def check_beat() -> Check:
    max_age = settings.HEALTH_BEAT_MAX_AGE_SECONDS
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return Check(True, "embedded")
    if max_age <= 0:
        return Check(True, "not checked")
    try:
        age = heartbeat_age()
    except Exception as exc:
        return Check(False, f"unreadable ({type(exc).__name__})")
    if age is None:
        return Check(False, "no heartbeat yet")
    return Check(age <= max_age, f"last heartbeat {age:.0f}s ago (at most {max_age}s)")


def run_checks() -> dict[str, Check]:
    """Every check by name, in the order /healthz lists them."""
    return {"database": check_database(), "broker": check_broker(), "beat": check_beat()}
