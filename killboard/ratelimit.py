"""Request slots shared by every process and machine, kept in one database row per limit.

`acquire(name, interval)` reserves the next slot with one atomic UPDATE, so two workers can
never take the same slot, then waits for it. `block(name, seconds)` holds every process back
(a 429's Retry-After, an exhausted ESI error limit). A wait longer than the caller allows
raises `RateLimited`, so a Celery task can retry later instead of holding its worker.

Every wait an upstream names goes through `capped_wait`, and `block` caps what it is given:
a bad header (a Retry-After of 10**9, NaN) must not stop the work for good.
"""

from __future__ import annotations

import logging
import math
import time

from django.db import connection

from killboard.models import RateLimit

logger = logging.getLogger(__name__)

# The longest an upstream can make us wait (seconds); what it asks beyond is a bad answer.
MAX_UPSTREAM_WAIT = 3600.0


class RateLimited(Exception):
    """The upstream asked us to wait, longer than the caller is willing to wait inline."""

    def __init__(self, retry_after: float, reason: str = "rate limited") -> None:
        super().__init__(f"{reason}; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


def capped_wait(value: str | float | None, default: float) -> float:
    """Seconds to wait as an upstream states them (a header), at most `MAX_UPSTREAM_WAIT`.

    Missing, non-numeric, negative, NaN or infinite values give `default`.
    """
    if value is None:
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        logger.warning("Unusable wait %.40r from an upstream; waiting %.1fs", value, default)
        return default
    if seconds > MAX_UPSTREAM_WAIT:
        logger.warning("An upstream asked to wait %.0fs; waiting %.0fs", seconds, MAX_UPSTREAM_WAIT)
        return MAX_UPSTREAM_WAIT
    return seconds


def _greatest() -> str:
    return "GREATEST" if connection.vendor == "postgresql" else "MAX"


def _update_returning(sql: str, params: list[object], name: str) -> float:
    table = connection.ops.quote_name(RateLimit._meta.db_table)
    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute(sql.format(table=table, greatest=_greatest()), [*params, name])
            row = cursor.fetchone()
        if row is not None:
            return row[0]
        RateLimit.objects.bulk_create([RateLimit(name=name)], ignore_conflicts=True)
    raise RuntimeError(f"rate limit row {name!r} could not be created")


def reserve(name: str, interval: float) -> float:
    """Reserve the next slot of `name`, `interval` seconds after the previous one.

    Returns the seconds to wait for it (0 when it is free now). `interval` is capped at
    `MAX_UPSTREAM_WAIT`: it comes from an upstream's stated bucket.
    """
    interval = min(interval, MAX_UPSTREAM_WAIT)
    now = time.time()
    next_at = _update_returning(
        "UPDATE {table} SET next_at = {greatest}(next_at, blocked_until, %s) + %s "
        "WHERE name = %s RETURNING next_at",
        [now, interval],
        name,
    )
    return max(0.0, next_at - interval - now)


def blocked_for(name: str) -> float:
    """Seconds until `name` is no longer blocked (0 when it is not)."""
    blocked_until = (
        RateLimit.objects.filter(name=name).values_list("blocked_until", flat=True).first() or 0.0
    )
    return max(0.0, blocked_until - time.time())


def block(name: str, seconds: float) -> None:
    """Hold every process back from `name` for `seconds` (never shortens a longer block).

    `seconds` is capped at `MAX_UPSTREAM_WAIT`; an unusable value blocks nothing.
    """
    seconds = capped_wait(seconds, 0.0)
    until = time.time() + seconds
    _update_returning(
        "UPDATE {table} SET blocked_until = {greatest}(blocked_until, %s) "
        "WHERE name = %s RETURNING blocked_until",
        [until],
        name,
    )
    logger.warning("Blocked %s for %.1fs", name, seconds)


def acquire(name: str, interval: float, max_wait: float) -> None:
    """Wait for the next slot of `name`; raise `RateLimited` if it is over `max_wait` away.

    A block longer than `max_wait` takes no slot, so the retry does not waste one.
    """
    blocked = blocked_for(name)
    if blocked > max_wait:
        raise RateLimited(blocked, f"{name} is blocked")
    wait = reserve(name, interval)
    if wait > 0:
        time.sleep(wait)
