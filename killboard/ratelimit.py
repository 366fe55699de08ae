"""Request slots shared by every process and machine, kept in database rows.

This module is the `upstream.limiter.Limiter` the clients are given; every limit holds for
the whole deployment, not per worker.

- Paced limits, one `RateLimit` row each. `acquire(name, interval, max_wait, burst)`
  reserves the next slot with one atomic UPDATE, so two workers can never take the same
  slot, then waits for it. The slot is kept as GCRA (a virtual scheduling time `next_at`):
  a limit idle for a while lets a caller take `burst` seconds' worth of slots at once, then
  paces at `interval`. Every reservation counts one call in the same UPDATE (`calls()`).
- Blocks. `block(name, seconds)` holds every process back (a 429's Retry-After, an
  exhausted ESI error limit); `wait_open(name, max_wait)` waits one out without taking a
  slot. A wait longer than the caller allows raises `RateLimited`, so a Celery task can
  retry later instead of holding its worker.
- Concurrency. `lease(name, slots, seconds)` takes one of `slots` `ConcurrencySlot` rows
  with one conditional UPDATE that re-checks the row is free, so two processes can never
  both win it (PostgreSQL re-evaluates the WHERE on the row it waited for); `release(token)`
  gives it back. A killed process's lease lapses after `seconds`.

`block` caps what it is given like every wait an upstream names (`capped_wait`): a bad
header (a Retry-After of 10**9, NaN) must not stop the work for good. `observe` keeps what an
upstream last said is left of a budget (ESI's tokens, its error limit) in the shared cache,
for the metrics (`observed`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.cache import cache
from django.db import connection

from killboard.models import ConcurrencySlot, RateLimit
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


def reserve(name: str, interval: float, burst: float = 0.0) -> float:
    """Reserve the next slot of `name`, `interval` seconds after the previous one.

    GCRA: the slot is `max(next_at, blocked_until, now - burst)`, so after an idle spell up
    to `burst / interval` slots are free at once. Returns the seconds to wait for the slot
    (0 when it is free now) and counts one call of `name`. `interval` and `burst` are capped
    at `MAX_UPSTREAM_WAIT`: they come from an upstream's stated bucket.
    """
    interval = min(interval, MAX_UPSTREAM_WAIT)
    burst = min(max(burst, 0.0), MAX_UPSTREAM_WAIT)
    now = time.time()
    next_at = _update_returning(
        "UPDATE {table} SET next_at = {greatest}(next_at, blocked_until, %s) + %s, "
        "calls = calls + 1 WHERE name = %s RETURNING next_at",
        [now - burst, interval],
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


def wait_open(name: str, max_wait: float) -> None:
    """Wait until `name` is not blocked; raise `RateLimited` if that is over `max_wait` away.

    Takes no slot and counts no call: a gate every request passes (ESI's error limit).
    """
    blocked = blocked_for(name)
    if blocked > max_wait:
        raise RateLimited(blocked, f"{name} is blocked")
    if blocked > 0:
        time.sleep(blocked)


def acquire(name: str, interval: float, max_wait: float, burst: float = 0.0) -> None:
    """Wait for the next slot of `name`; raise `RateLimited` if it is over `max_wait` away.

    A block longer than `max_wait` takes no slot, so the retry does not waste one.
    """
    blocked = blocked_for(name)
    if blocked > max_wait:
        raise RateLimited(blocked, f"{name} is blocked")
    wait = reserve(name, interval, burst)
    if wait > 0:
        time.sleep(wait)


def lease(name: str, slots: int, seconds: float) -> str | None:
    """Take one of the `slots` concurrency slots of `name` for `seconds`; its token, or None
    when every slot is held. Give it back with `release(token)`.

    A slot is free when its lease has lapsed. The UPDATE picks a free row and re-checks that
    it is still free, so of two processes picking the same row only one changes it.
    """
    table = connection.ops.quote_name(ConcurrencySlot._meta.db_table)
    token = uuid.uuid4().hex
    now = time.time()
    sql = (
        f"UPDATE {table} SET holder = %s, leased_until = %s WHERE leased_until < %s AND id = "
        f"(SELECT id FROM {table} WHERE name = %s AND slot < %s AND leased_until < %s "
        "ORDER BY slot LIMIT 1)"
    )
    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute(sql, [token, now + seconds, now, name, slots, now])
            if cursor.rowcount == 1:
                return token
        if ConcurrencySlot.objects.filter(name=name, slot__lt=slots).count() >= slots:
            return None
        ConcurrencySlot.objects.bulk_create(
            [ConcurrencySlot(name=name, slot=slot) for slot in range(slots)],
            ignore_conflicts=True,
        )
    return None


def release(token: str) -> None:
    """Give back the concurrency slot leased as `token` (nothing if its lease was taken over)."""
    ConcurrencySlot.objects.filter(holder=token).update(holder="", leased_until=0.0)


def count_calls(name: str, count: int) -> None:
    """Add `count` calls to `name`'s count, made without taking its slot one by one."""
    if count > 0:
        _update_returning(
            "UPDATE {table} SET calls = calls + %s WHERE name = %s RETURNING calls", [count], name
        )


def calls(prefix: str = "esi:") -> dict[str, int]:
    """Calls counted so far by each limit whose name starts with `prefix` (name -> calls).

    Diff two readings to count the calls of one run by limit (ESI: by route group).
    """
    rows = RateLimit.objects.filter(name__startswith=prefix).values_list("name", "calls")
    return dict(rows)


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
