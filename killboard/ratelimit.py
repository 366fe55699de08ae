"""Request slots shared by every process and machine, kept in one database row per limit.

This module is the `upstream.limiter.Limiter` the clients are given. `acquire(name,
interval)` reserves the next slot with one atomic UPDATE, so two workers can never take the
same slot, then waits for it. `block(name, seconds)` holds every process back (a 429's
Retry-After, an exhausted ESI error limit). A wait longer than the caller allows raises
`RateLimited`, so a Celery task can retry later instead of holding its worker.

`block` caps what it is given like every wait an upstream names (`capped_wait`): a bad
header (a Retry-After of 10**9, NaN) must not stop the work for good. `observe` keeps what an
upstream last said is left of a budget (ESI's tokens, its error limit) in the shared cache,
for the metrics (`observed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.cache import cache
from django.db import connection

from killboard.models import RateLimit
from upstream.errors import RateLimited
from upstream.limiter import MAX_UPSTREAM_WAIT, capped_wait

logger = logging.getLogger(__name__)

_OBSERVED_KEY = "ratelimit:observed:{}"
# Seconds between two writes of one budget by one process: the metrics need no more.
OBSERVE_EVERY = 1.0
_last_observed: dict[str, float] = {}


@dataclass(frozen=True)
class Observed:
    """What an upstream last said is left of a budget: `remaining` of `limit`, at `at`."""

    remaining: int
    limit: int | None
    at: float


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


def observe(name: str, remaining: int, limit: int | None) -> None:
    """Keep what the upstream said is left of `name`'s budget (its last answer's headers)."""
    now = time.time()
    if now - _last_observed.get(name, 0.0) < OBSERVE_EVERY:
        return
    _last_observed[name] = now
    cache.set(_OBSERVED_KEY.format(name), (remaining, limit, now), timeout=None)


def observed(names: Iterable[str]) -> dict[str, Observed]:
    """The last observation of each of `names` that has one."""
    keys = {_OBSERVED_KEY.format(name): name for name in names}
    found = cache.get_many(list(keys))
    return {keys[key]: Observed(*value) for key, value in found.items()}
