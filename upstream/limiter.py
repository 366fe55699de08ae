"""The limiter the clients take request slots from, and the bounds on every wait.

The implementation shared by every process and machine keeps its state in database rows
(`killboard.ratelimit`), so it lives with the models; the clients receive it as an argument.
It paces (a slot every `interval`, with one burst after an idle spell), blocks (a 429, a
420), and bounds concurrency (leases on N slots, lapsing if their holder dies).

Every wait an upstream names (Retry-After, ESI's error-limit reset) goes through
`capped_wait`: a bad header (a Retry-After of 10**9, NaN) must not stop the work for good.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

logger = logging.getLogger(__name__)

# The longest an upstream can make us wait (seconds); what it asks beyond is a bad answer.
MAX_UPSTREAM_WAIT = 3600.0
# The longest a call on a worker waits inline for a slot (seconds); a longer wait raises
# RateLimited, so the task retries later instead of holding its worker.
WORKER_MAX_WAIT = 30.0
# In-process (no broker) there is no retry queue: a call waits as long as the upstream asks.
EMBEDDED_MAX_WAIT = math.inf


class Limiter(Protocol):
    """Request slots shared by every process (`killboard.ratelimit` implements it)."""

    def acquire(self, name: str, interval: float, max_wait: float, burst: float = 0.0) -> None:
        """Wait for the next slot of `name`, `interval` seconds after the previous one (after
        an idle spell, `burst` seconds' worth of slots are free at once), or raise
        `RateLimited` when `name` is blocked for longer than `max_wait`."""

    def wait_open(self, name: str, max_wait: float) -> None:
        """Wait until `name` is not blocked, taking no slot, or raise `RateLimited` when it
        is blocked for longer than `max_wait`."""

    def block(self, name: str, seconds: float) -> None:
        """Hold every process back from `name` for `seconds`."""

    def lease(self, name: str, slots: int, seconds: float) -> str | None:
        """Take one of the `slots` concurrency slots of `name` for at most `seconds`: a token
        for `release`, or None when all are held."""

    def release(self, token: str) -> None:
        """Give back a concurrency slot taken with `lease`."""

    def count_calls(self, name: str, count: int) -> None:
        """Count `count` requests of `name` that took no slot of it one by one."""

    def observe(self, name: str, remaining: int, limit: int | None) -> None:
        """Note what the upstream said is left of `name`'s budget (for the metrics)."""


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
