"""Request rates of the GraphQL API: so many requests a minute per client address and per
credential (an API token, or a staff session's user).

Each limit counts requests in fixed one-minute windows, in the shared cache
(settings.CACHES): `add` then `incr`, atomic on Redis and in memory, so every web process
counts against the same number (a cache local to each process would give each its own
allowance). A request over a limit is refused with how long until its window ends. Failed token
attempts are config.throttle's business; this bounds the work of clients that do authenticate.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from django.core.cache import cache

WINDOW_SECONDS = 60
ADDRESS = "address"
CREDENTIAL = "credential"


@dataclass(frozen=True)
class RateExceeded:
    """A refused request: which limit, its rate, and the seconds until it may try again."""

    scope: str
    per_minute: int
    retry_after: int

    @property
    def message(self) -> str:
        """The error clients see."""
        who = "client address" if self.scope == ADDRESS else "API token (or session)"
        return (
            f"Rate limit exceeded: at most {self.per_minute} GraphQL requests a minute per "
            f"{who}; retry in {self.retry_after} s."
        )


def _key(scope: str, who: str, window: int) -> str:
    digest = hashlib.sha256(who.encode()).hexdigest()[:32]
    return f"graphql-rate:{scope}:{digest}:{window}"


def take(scope: str, who: str, per_minute: int, now: float | None = None) -> RateExceeded | None:
    """Count one request of `who` in `scope`; a RateExceeded when over `per_minute` (0: no
    limit)."""
    if per_minute <= 0:
        return None
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS)
    key = _key(scope, who, window)
    # Kept past the window's end, so a slow clock elsewhere still finds it.
    cache.add(key, 0, timeout=2 * WINDOW_SECONDS)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr: this request opens the window
        cache.add(key, 1, timeout=2 * WINDOW_SECONDS)
        count = 1
    if count <= per_minute:
        return None
    retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
    return RateExceeded(scope, per_minute, retry_after)
