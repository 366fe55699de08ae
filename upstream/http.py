"""The one way to make an HTTP session for an upstream: a timeout always, and the headers
zKillboard and ESI require (a User-Agent with app, version and contact; gzip).
"""

from __future__ import annotations

from typing import Any

import requests

from upstream.errors import RateLimited
from upstream.limiter import WORKER_MAX_WAIT, Limiter, capped_wait

APP = "killboard-backfill"
VERSION = "0.1"

# Seconds to connect, and to wait for each read; or one number for both.
Timeout = float | tuple[float, float]


class UpstreamSession(requests.Session):
    """A session whose every request has a timeout: its own unless the call names one."""

    def __init__(self, timeout: Timeout) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, **kwargs: Any) -> requests.Response:
        """Send a request, with the session's timeout unless `timeout` is given."""
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, **kwargs)


def root_url(url: str) -> str:
    """An upstream's root URL, ending with "/" so paths join onto it."""
    return url if url.endswith("/") else url + "/"


def user_agent(contact: str) -> str:
    """The User-Agent of every request: app, version and how to reach the operator."""
    return f"{APP}/{VERSION} (+contact: {contact})"


def new_session(
    contact: str, timeout: Timeout, *, compatibility_date: str | None = None
) -> UpstreamSession:
    """A session for one client, reused across its calls.

    `compatibility_date` is ESI's `X-Compatibility-Date`: the date of the API behaviour the
    client was written against.
    """
    session = UpstreamSession(timeout)
    session.headers.update(
        {
            "User-Agent": user_agent(contact),
            "Accept-Encoding": "gzip",
            "Accept": "application/json",
        }
    )
    if compatibility_date:
        session.headers["X-Compatibility-Date"] = compatibility_date
    return session


class PacedClient:
    """A client of an upstream whose every request first takes a slot of one rate shared by
    the whole deployment (the limiter's `LIMIT_NAME`), with one session."""

    LIMIT_NAME: str
    TIMEOUT: Timeout
    # Seconds to wait when a 429 comes without a usable Retry-After.
    DEFAULT_RETRY_AFTER: float

    def __init__(
        self,
        base_url: str,
        contact: str,
        requests_per_second: float,
        limiter: Limiter,
        max_wait: float = WORKER_MAX_WAIT,
        timeout: Timeout | None = None,
    ) -> None:
        """Prepare a client for `base_url`; a call waits inline at most `max_wait` seconds
        for a blocked slot, else `RateLimited`."""
        self.base_url = root_url(base_url)
        self.interval = 1.0 / requests_per_second
        self.limiter = limiter
        self.max_wait = max_wait
        self.session = new_session(contact, timeout or self.TIMEOUT)

    def take_slot(self) -> None:
        """Wait for this upstream's next request slot."""
        self.limiter.acquire(self.LIMIT_NAME, self.interval, self.max_wait)

    def too_many_requests(self, response: requests.Response, upstream: str) -> RateLimited:
        """A 429: hold every process back for its (capped) Retry-After; the error to raise."""
        retry_after = max(
            1.0, capped_wait(response.headers.get("Retry-After"), self.DEFAULT_RETRY_AFTER)
        )
        self.limiter.block(self.LIMIT_NAME, retry_after)
        return RateLimited(retry_after, f"{upstream} answered 429")
