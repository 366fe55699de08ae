"""The one ESI client of the project: killmail bodies, bulk names and entity details.

Free of Django: it takes its base URL, contact and a limiter as arguments, so the backfill
app (killmail bodies) and the enrichment app (names, details) share it, and tests can point
it at the fake upstream. `upstream.clients.esi_client()` builds the process-wide instance
from the Django settings.

Every request first waits on two limits shared by all processes through the limiter: the
global error gate (`esi:errors`, held closed when ESI's error limit runs low or answers 420)
and the token bucket of its route group (`esi:<group>`, paced from `X-Ratelimit-Limit`).
The waits ESI names (`Retry-After`, `X-ESI-Error-Limit-Reset`) are capped by
`upstream.limiter.capped_wait`. A killmail hash that is not 40 lowercase hex digits is
refused before any request: it would only cost an error (or reach another route).

Entity details go through one `detail(path, group)` for every kind; the caller holds each
kind's route and group (`killboard.entities`, which this package may not import).
"""

from __future__ import annotations

import email.utils
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from upstream.errors import RateLimited, Rejected, Unavailable, UpstreamError
from upstream.http import Timeout, new_session, root_url
from upstream.limiter import WORKER_MAX_WAIT, Limiter, capped_wait

logger = logging.getLogger(__name__)

# The ESI behaviour this client is written against (sent as X-Compatibility-Date).
COMPATIBILITY_DATE = "2025-12-16"
TIMEOUT = 10.0  # seconds, for connecting and for each read
NAMES_MAX_IDS = 1000  # ESI's bound for POST /universe/names/

ERROR_GATE = "esi:errors"
# Block every worker once fewer errors than this are left in ESI's error window.
ERROR_LIMIT_THRESHOLD = 10
DEFAULT_ERROR_RESET = 60.0  # seconds, when a 420 names no usable reset time
DEFAULT_RETRY_AFTER = 60.0  # seconds, when a 429 names no usable Retry-After

SUCCESS_COST = 2  # tokens a 2xx costs in its route group
# A bucket as ESI states it before any answer: the killmail group's 3600 tokens per 15 min.
DEFAULT_BUCKET = (3600, 900.0)
# Pace at 95% of the bucket's rate: at 100% the sliding window fills to the brim and the
# first 4xx (5 tokens) would tip it over; the rest of the way, RATE_MARGIN pauses the group.
RATE_HEADROOM = 0.95
# Below this share of the bucket left (and never below one 4xx's cost), pause the group.
RATE_MARGIN = 0.05
RATE_MARGIN_MIN_TOKENS = 5

_LIMIT_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_HASH_RE = re.compile(r"[0-9a-f]{40}")


class EsiError(UpstreamError):
    """ESI answered something other than what was asked for."""


class EsiNotFound(EsiError, Rejected):
    """Permanent: ESI does not know the id (404), or a killmail id and hash do not match (422)."""


class EsiUnavailable(EsiError, Unavailable):
    """Transient: network error, timeout, 5xx or downtime, or a 200 that is not valid JSON."""


def is_killmail_hash(value: object) -> bool:
    """Whether `value` is a killmail hash as ESI's route takes it: 40 lowercase hex digits."""
    return type(value) is str and _HASH_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class ResolvedName:
    """One answer of POST /universe/names/."""

    id: int
    name: str
    category: str


@dataclass(frozen=True)
class Detail:
    """A detail route's answer: 200 with a body, or 304 when the stored ETag still holds."""

    status: int
    body: dict[str, Any] | None
    etag: str | None
    expires: datetime | None


def parse_limit(text: str) -> tuple[int, float] | None:
    """Parse `X-Ratelimit-Limit` ("3600/15m", "150/1m") into (tokens, window seconds)."""
    match = _LIMIT_RE.match(text or "")
    if not match:
        return None
    tokens, amount, unit = int(match[1]), int(match[2]), match[3]
    window = float(amount * _UNITS[unit])
    if tokens <= 0 or window <= 0:
        return None
    return tokens, window


def bucket_interval(tokens: int, window: float) -> float:
    """Seconds between two requests so that 2xx answers stay within the bucket."""
    return SUCCESS_COST * window / (tokens * RATE_HEADROOM)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


class EsiClient:
    """A client for the few ESI routes this project uses, polite to every limit ESI has."""

    def __init__(
        self,
        base_url: str,
        contact: str,
        limiter: Limiter,
        *,
        max_wait: float = WORKER_MAX_WAIT,
        timeout: Timeout = TIMEOUT,
    ) -> None:
        """Prepare a client for `base_url` (like https://esi.evetech.net/).

        A call waits inline at most `max_wait` seconds for a blocked slot, else `RateLimited`.
        """
        self.base_url = root_url(base_url)
        self.limiter = limiter
        self.max_wait = max_wait
        self.session = new_session(contact, timeout, compatibility_date=COMPATIBILITY_DATE)
        # Seconds between requests per route group, learned from X-Ratelimit-Limit.
        self._intervals: dict[str, float] = {}

    # -- routes ------------------------------------------------------------------------------

    def killmail(self, killmail_id: int, killmail_hash: str) -> dict[str, Any]:
        """Return the ESI body of a killmail; `EsiNotFound` if the id and hash do not match.

        An id that is not a positive integer, or a hash that is not 40 lowercase hex digits,
        is `EsiNotFound` at once, without a request.
        """
        if type(killmail_id) is not int or killmail_id <= 0:
            raise EsiNotFound(f"killmail {killmail_id!r:.40}: the id is not a positive integer")
        if not is_killmail_hash(killmail_hash):
            raise EsiNotFound(
                f"killmail {killmail_id}: hash {killmail_hash!r:.60} is not 40 hex digits"
            )
        response = self._request("GET", f"killmails/{killmail_id}/{killmail_hash}/", "killmail")
        return self._json(response, dict)

    def names(self, ids: Sequence[int]) -> list[ResolvedName]:
        """Resolve up to 1000 ids; `EsiNotFound` if any one of them is unknown to ESI."""
        if not ids or len(ids) > NAMES_MAX_IDS:
            raise ValueError(f"names() takes 1 to {NAMES_MAX_IDS} ids, got {len(ids)}")
        response = self._request("POST", "universe/names/", "names", json=list(ids))
        answer = self._json(response, list)
        try:
            return [
                ResolvedName(int(row["id"]), str(row["name"]), row["category"]) for row in answer
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise EsiUnavailable(f"unexpected /universe/names/ answer: {exc!r}", 200) from exc

    def detail(self, path: str, group: str, etag: str | None = None) -> Detail:
        """GET a detail route (`characters/90/`) of rate-limit group `group`, with If-None-Match.

        Serves every entity kind: the callers hold each kind's path and group.
        """
        headers = {"If-None-Match": etag} if etag else None
        response = self._request("GET", path, group, headers=headers)
        expires = _http_date(response.headers.get("Expires"))
        new_etag = response.headers.get("ETag") or etag
        if response.status_code == 304:
            return Detail(304, None, new_etag, expires)
        return Detail(200, self._json(response, dict), new_etag, expires)

    def character(self, character_id: int, etag: str | None = None) -> Detail:
        """GET /characters/{id}/ (a shorthand of `detail`)."""
        return self.detail(f"characters/{character_id}/", "character", etag)

    def corporation(self, corporation_id: int, etag: str | None = None) -> Detail:
        """GET /corporations/{id}/ (a shorthand of `detail`)."""
        return self.detail(f"corporations/{corporation_id}/", "corporation", etag)

    def alliance(self, alliance_id: int, etag: str | None = None) -> Detail:
        """GET /alliances/{id}/ (a shorthand of `detail`)."""
        return self.detail(f"alliances/{alliance_id}/", "alliance", etag)

    def item_type(self, type_id: int, etag: str | None = None) -> Detail:
        """GET /universe/types/{id}/ (a shorthand of `detail`)."""
        return self.detail(f"universe/types/{type_id}/", "universe", etag)

    # -- plumbing ----------------------------------------------------------------------------

    def interval(self, group: str) -> float:
        """Seconds between two requests of a route group, as far as this client knows."""
        return self._intervals.get(group) or bucket_interval(*DEFAULT_BUCKET)

    def _request(
        self,
        method: str,
        path: str,
        group: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """Send one request within the shared limits; raise the typed error of a failure."""
        self.limiter.acquire(ERROR_GATE, 0.0, self.max_wait)
        self.limiter.acquire(f"esi:{group}", self.interval(group), self.max_wait)
        url = self.base_url + path
        try:
            response = self.session.request(method, url, json=json, headers=headers)
        except requests.RequestException as exc:
            logger.warning("ESI %s %s failed: %r", method, path, exc)
            raise EsiUnavailable(f"{method} {path}: {exc!r}") from exc
        self._observe_limits(group, response)
        status = response.status_code
        if status < 300 or status == 304:
            return response
        if status == 420:
            seconds = capped_wait(
                response.headers.get("X-ESI-Error-Limit-Reset")
                or response.headers.get("Retry-After"),
                DEFAULT_ERROR_RESET,
            )
            self.limiter.block(ERROR_GATE, seconds)
            raise RateLimited(seconds, f"ESI error limit reached ({path})")
        if status == 429:
            seconds = capped_wait(response.headers.get("Retry-After"), DEFAULT_RETRY_AFTER)
            self.limiter.block(f"esi:{group}", seconds)
            raise RateLimited(seconds, f"ESI rate limit of group {group} reached ({path})")
        if status in (404, 422):
            raise EsiNotFound(f"{method} {path}: {status} {response.text[:200]}", status)
        if status >= 500:
            logger.warning("ESI %s %s answered %s", method, path, status)
            raise EsiUnavailable(f"{method} {path}: {status}", status)
        raise EsiError(f"{method} {path}: {status} {response.text[:200]}", status)

    def _observe_limits(self, group: str, response: requests.Response) -> None:
        """Learn the bucket size; pause the group or every worker when a limit runs low."""
        headers = response.headers
        bucket = parse_limit(headers.get("X-Ratelimit-Limit", ""))
        if bucket is not None:
            tokens, window = bucket
            self._intervals[group] = bucket_interval(tokens, window)
            remaining = _int(headers.get("X-Ratelimit-Remaining"))
            if remaining is not None:
                self.limiter.observe(f"esi:{group}", remaining, tokens)
            margin = max(tokens * RATE_MARGIN, RATE_MARGIN_MIN_TOKENS)
            if remaining is not None and remaining < margin:
                # Spent tokens come back as the window slides, at about tokens/window a second.
                seconds = (margin - remaining) * window / tokens
                logger.info("ESI group %s has %s tokens left; pausing it", group, remaining)
                self.limiter.block(f"esi:{group}", seconds)
        remain = _int(headers.get("X-ESI-Error-Limit-Remain"))
        if remain is not None:
            self.limiter.observe(ERROR_GATE, remain, None)
        if remain is not None and remain < ERROR_LIMIT_THRESHOLD and response.status_code != 420:
            seconds = capped_wait(headers.get("X-ESI-Error-Limit-Reset"), DEFAULT_ERROR_RESET)
            logger.warning("ESI error limit down to %s; pausing every worker", remain)
            self.limiter.block(ERROR_GATE, seconds)

    @staticmethod
    def _json(response: requests.Response, expected: type) -> Any:
        """Decode a 200's body; HTML error pages and truncated JSON are transient failures."""
        try:
            data = response.json()
        except ValueError as exc:
            raise EsiUnavailable(
                f"{response.request.method} {response.url}: body is not JSON "
                f"({response.headers.get('Content-Type')}, {len(response.content)} bytes)",
                response.status_code,
            ) from exc
        if not isinstance(data, expected):
            raise EsiUnavailable(
                f"{response.url}: expected a JSON {expected.__name__}, got {type(data).__name__}",
                response.status_code,
            )
        return data
