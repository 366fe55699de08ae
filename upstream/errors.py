"""What can go wrong with an upstream, by kind, so callers handle every upstream alike.

- `RateLimited`: the upstream asked us to wait (429, ESI's 420, a shared block longer than
  the caller waits inline): retry after `retry_after` seconds, not sooner.
- `Unavailable`: transient (network, timeout, 5xx, downtime, a broken body): retry with
  backoff and jitter.
- `Rejected`: permanent for this request (422, 404, zKillboard's `{"error": ...}`): record
  it, never retry.
- `Blocked`: zKillboard sent us to blocked.json for too many errors: stop everything.

Each client subclasses these kinds with its own names (`ZkillboardUnavailable`,
`EsiNotFound`, ...), so a caller catches either the kind or one upstream's error.
"""

from __future__ import annotations

import time


class UpstreamError(Exception):
    """Any failure talking to an upstream; `status` is the HTTP status when one came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(UpstreamError):
    """The upstream asked us to wait, longer than the caller is willing to wait inline."""

    def __init__(self, retry_after: float, reason: str = "rate limited") -> None:
        super().__init__(f"{reason}; retry in {retry_after:.1f}s")
        self.retry_after = retry_after
        self.retry_at = time.time() + retry_after


class Unavailable(UpstreamError):
    """A transient failure: retry with backoff."""


class Rejected(UpstreamError):
    """A permanent failure of this request: never retried."""


class Blocked(UpstreamError):
    """The upstream has blocked this IP: no request may go out until someone looks."""
