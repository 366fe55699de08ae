"""The one ESI client of the project: killmail bodies, bulk names, affiliations, entity details.

Free of Django: it takes its base URL, contact and a limiter as arguments, so the backfill
app (killmail bodies) and the enrichment app (names, affiliations, details) share it, and
tests can point it at the fake upstream. `upstream.clients.esi_client()` builds the
process-wide instance from the Django settings.

Every limit is shared by all processes through the limiter:

- The error gate (`esi:errors`). Every request first waits while it is closed. A 420
  closes it until ESI's reset; so does an error limit below `error_floor` (kept above the
  requests that may be in flight, so their errors cannot drain the limit to 0). Below
  `ERROR_SLOWDOWN_BELOW`, each error answer closes it for `reset / (remain - floor)`
  seconds and `details()` sends one request at a time, so the errors left are spread over
  the window instead of running into a 420.
- Route groups that announce a token bucket (`X-Ratelimit-Limit`; the `killmail` group is
  known to have 3600 tokens per 15 minutes before any answer) are paced at `bucket_share`
  of it: one 2xx (2 tokens) every `2 * window / (tokens * share)` seconds, from the group's
  row `esi:<group>` (GCRA). After an idle spell a burst of half the headroom
  (`(1 - share) / 2` of the bucket) may go at once, so a window never holds more than the
  share plus that burst. When `X-Ratelimit-Remaining` falls below `RATE_MARGIN` of the
  bucket, the group pauses until enough tokens are back; a 429 pauses it for `Retry-After`.
- Route groups without a bucket (no `X-Ratelimit-*` headers, bound by the error limit
  alone) are not paced: each request leases one of `concurrency` slots of
  `esi:concurrency`, so no more than that are in flight across the deployment. A group not
  answered yet counts as one without a bucket until its first answer says otherwise.

Each request still takes its group's row (with no interval when the group has no bucket):
that honours a 429's block and counts the call (`killboard.ratelimit.calls`).

The waits ESI names (`Retry-After`, `X-ESI-Error-Limit-Reset`) are capped by
`upstream.limiter.capped_wait`. A killmail hash that is not 40 lowercase hex digits is
refused before any request: it would only cost an error (or reach another route).

Entity details go through one `detail(path, group)` for every kind, and `details(calls)` runs
many of them at once: worker threads only send requests (one session each), while the
calling thread takes every limiter slot and reads every answer, so the database is only
ever touched from the caller's thread. The caller holds each kind's route and group
(`killboard.entities`, which this package may not import).
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from upstream.errors import RateLimited, Rejected, Unavailable, UpstreamError
from upstream.http import Timeout, UpstreamSession, new_session, root_url
from upstream.limiter import WORKER_MAX_WAIT, Limiter, capped_wait

logger = logging.getLogger(__name__)

# The ESI behaviour this client is written against (sent as X-Compatibility-Date).
COMPATIBILITY_DATE = "2025-12-16"
TIMEOUT = 10.0  # seconds, for connecting and for each read
NAMES_MAX_IDS = 1000  # ESI's bound for POST /universe/names/
AFFILIATION_MAX_IDS = 1000  # ESI's bound for POST /characters/affiliation/

ERROR_GATE = "esi:errors"
# Block every worker once fewer errors than this are left in ESI's error window; the floor
# grows with the requests that may be in flight (see `EsiClient.error_floor`).
ERROR_LIMIT_THRESHOLD = 10
# Errors the paced groups (killmail bodies, names) may have in flight besides the
# `concurrency` requests of the groups without a bucket.
ERROR_SPARE = 2
# Below this many errors left, each error answer pauses every worker for a share of the
# window's rest, and `details()` sends one request at a time.
ERROR_SLOWDOWN_BELOW = 50
DEFAULT_ERROR_RESET = 60.0  # seconds, when a 420 names no usable reset time
DEFAULT_RETRY_AFTER = 60.0  # seconds, when a 429 names no usable Retry-After

SUCCESS_COST = 2  # tokens a 2xx costs in its route group
# A bucket as ESI states it before any answer: the killmail group's 3600 tokens per 15 min.
DEFAULT_BUCKET = (3600, 900.0)
# Groups known to have a bucket before their first answer says so.
KNOWN_BUCKETS: dict[str, tuple[int, float]] = {"killmail": DEFAULT_BUCKET}
# Share of a bucket the client paces at (0 < share <= 1): ESI asks clients not to run at it.
DEFAULT_BUCKET_SHARE = 0.8
# Below this share of the bucket left (and never below one 4xx's cost), pause the group.
RATE_MARGIN = 0.05
RATE_MARGIN_MIN_TOKENS = 5

CONCURRENCY_LIMIT = "esi:concurrency"
DEFAULT_CONCURRENCY = 8  # requests in flight at once on groups without a bucket
# Seconds a concurrency slot is leased for: one request with its connect and read timeouts.
# A process killed mid-request holds its slot no longer than this.
LEASE_SECONDS = 30.0
LEASE_POLL = 0.02  # seconds between two tries for a concurrency slot
BUSY_RETRY_AFTER = 1.0  # seconds a task waits to retry when no slot came free in time

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
class Affiliation:
    """One answer of POST /characters/affiliation/: where a character stands now."""

    character_id: int
    corporation_id: int
    alliance_id: int | None
    faction_id: int | None


@dataclass(frozen=True)
class Detail:
    """A detail route's answer: 200 with a body, or 304 when the stored ETag still holds."""

    status: int
    body: dict[str, Any] | None
    etag: str | None
    expires: datetime | None


@dataclass(frozen=True)
class DetailCall:
    """One detail request: its route (`characters/90/`), rate-limit group and stored ETag."""

    path: str
    group: str
    etag: str | None = None


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


def bucket_interval(tokens: int, window: float, share: float = DEFAULT_BUCKET_SHARE) -> float:
    """Seconds between two requests so that 2xx answers use `share` of the bucket."""
    return SUCCESS_COST * window / (tokens * share)


def bucket_burst(tokens: int, window: float, share: float = DEFAULT_BUCKET_SHARE) -> float:
    """Seconds' worth of slots one burst may take besides the current one, so that the
    burst with it is half the headroom the share leaves: `(1 - share) / 2` of the bucket."""
    interval = bucket_interval(tokens, window, share)
    return max(0.0, (1 - share) * window / (2 * share) - interval)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _optional_id(value: Any) -> int | None:
    return None if value is None else int(value)


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
        bucket_share: float = DEFAULT_BUCKET_SHARE,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_wait: float = WORKER_MAX_WAIT,
        timeout: Timeout = TIMEOUT,
    ) -> None:
        """Prepare a client for `base_url` (like https://esi.evetech.net/).

        Announced buckets are paced at `bucket_share` of their rate; groups without one
        have at most `concurrency` requests in flight across the deployment. A call waits
        inline at most `max_wait` seconds for a blocked slot, else `RateLimited`.
        """
        if not 0 < bucket_share <= 1:
            raise ValueError(f"bucket_share must be in (0, 1], got {bucket_share}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.base_url = root_url(base_url)
        self.contact = contact
        self.limiter = limiter
        self.bucket_share = bucket_share
        self.concurrency = concurrency
        self.max_wait = max_wait
        self.timeout = timeout
        # Errors left below which every worker stops: above what may be in flight.
        self.error_floor = max(ERROR_LIMIT_THRESHOLD, concurrency + ERROR_SPARE)
        self.session = self._new_session()
        self._local = threading.local()
        self._local.session = self.session
        # Route groups' buckets (tokens, window seconds), learned from X-Ratelimit-Limit.
        self._buckets: dict[str, tuple[int, float]] = dict(KNOWN_BUCKETS)
        self._answered: set[str] = set()  # groups whose answers said whether they have one
        self._error_remain: int | None = None  # X-ESI-Error-Limit-Remain, last seen
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0

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

    def affiliation(self, ids: Sequence[int]) -> list[Affiliation]:
        """The corporation, alliance and faction of up to 1000 characters, in one call.

        `EsiNotFound` (404) when ESI refuses the batch: split it to find the culprit, as
        with `names`.
        """
        if not ids or len(ids) > AFFILIATION_MAX_IDS:
            raise ValueError(f"affiliation() takes 1 to {AFFILIATION_MAX_IDS} ids, got {len(ids)}")
        response = self._request(
            "POST", "characters/affiliation/", "char-affiliation", json=list(ids)
        )
        answer = self._json(response, list)
        try:
            return [
                Affiliation(
                    int(row["character_id"]),
                    int(row["corporation_id"]),
                    _optional_id(row.get("alliance_id")),
                    _optional_id(row.get("faction_id")),
                )
                for row in answer
            ]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise EsiUnavailable(
                f"unexpected /characters/affiliation/ answer: {exc!r}", 200
            ) from exc

    def detail(self, path: str, group: str, etag: str | None = None) -> Detail:
        """GET a detail route (`characters/90/`) of rate-limit group `group`, with If-None-Match.

        Serves every entity kind: the callers hold each kind's path and group.
        """
        call = DetailCall(path, group, etag)
        return self._detail_of(call, self._request("GET", path, group, headers=_etag(etag)))

    def details(
        self, calls: Iterable[DetailCall]
    ) -> Iterator[tuple[DetailCall, Detail | EsiNotFound]]:
        """GET many detail routes, up to `concurrency` at once; yield each call with its
        `Detail`, or its `EsiNotFound` (404: the entity is gone), as the answers arrive.

        A transient failure of one call (`EsiUnavailable`, `RateLimited`, another
        `EsiError`) sends nothing more: the calls in flight finish and are yielded, then the
        first failure is raised. Calls not yielded by then were not answered.
        """
        run = _DetailRun(self, calls)
        try:
            while True:
                run.fill()
                if not run.in_flight:
                    break
                yield from run.collect()
            if run.failure is not None:
                raise run.failure
        finally:
            run.abandon()

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

    def close(self) -> None:
        """Stop the worker threads of `details()` (a new call starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- pacing ------------------------------------------------------------------------------

    def bucket(self, group: str) -> tuple[int, float] | None:
        """A route group's bucket (tokens, window seconds) as far as this client knows, or
        None for a group that announced none (paced by concurrency alone)."""
        return self._buckets.get(group)

    def interval(self, group: str) -> float:
        """Seconds between two requests of a route group (0 for a group without a bucket)."""
        bucket = self._buckets.get(group)
        return bucket_interval(*bucket, self.bucket_share) if bucket else 0.0

    def burst(self, group: str) -> float:
        """Seconds' worth of a group's slots one burst may take after an idle spell."""
        bucket = self._buckets.get(group)
        return bucket_burst(*bucket, self.bucket_share) if bucket else 0.0

    def _knows(self, group: str) -> bool:
        """Whether this client knows if `group` has a bucket (from an answer, or ahead)."""
        return group in self._buckets or group in self._answered

    def _pace(self, group: str) -> None:
        """Take the group's slot (paced when it has a bucket) and pass the error gate."""
        self.limiter.wait_open(ERROR_GATE, self.max_wait)
        started = time.monotonic()
        self.limiter.acquire(f"esi:{group}", self.interval(group), self.max_wait, self.burst(group))
        if time.monotonic() - started > LEASE_POLL:
            # The gate may have closed while this worker waited for its slot.
            self.limiter.wait_open(ERROR_GATE, self.max_wait)

    def _lease(self, *, patient: bool) -> str | None:
        """Lease one of the deployment's concurrency slots (for a group without a bucket).

        Returns the lease token, or None when every slot is held and `patient` is off. A
        patient caller polls up to `max_wait`, re-checking the error gate, then gets
        `RateLimited`.
        """
        deadline = time.monotonic() + self.max_wait
        while True:
            token = self.limiter.lease(CONCURRENCY_LIMIT, self.concurrency, LEASE_SECONDS)
            if token is not None:
                return token
            if not patient:
                return None
            if time.monotonic() + LEASE_POLL > deadline:
                raise RateLimited(BUSY_RETRY_AFTER, f"all {self.concurrency} ESI slots are held")
            time.sleep(LEASE_POLL)
            self.limiter.wait_open(ERROR_GATE, max(0.0, deadline - time.monotonic()))

    def _parallel(self) -> int:
        """Requests `details()` may have in flight: one at a time once errors run low."""
        remain = self._error_remain
        if remain is not None and remain < ERROR_SLOWDOWN_BELOW:
            return 1
        return self.concurrency

    # -- plumbing ----------------------------------------------------------------------------

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
        self._pace(group)
        lease = self._lease(patient=True) if self.bucket(group) is None else None
        try:
            response = self._send(method, path, json=json, headers=headers)
        finally:
            if lease is not None:
                self.limiter.release(lease)
        return self._handle(response, method, path, group)

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """Only the HTTP request, on this thread's session (`details()` runs it on workers)."""
        try:
            return self._thread_session().request(
                method, self.base_url + path, json=json, headers=headers
            )
        except requests.RequestException as exc:
            logger.warning("ESI %s %s failed: %r", method, path, exc)
            raise EsiUnavailable(f"{method} {path}: {exc!r}") from exc

    def _handle(
        self, response: requests.Response, method: str, path: str, group: str
    ) -> requests.Response:
        """Learn from an answer's limit headers; return it, or raise its typed error."""
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
        """Learn the group's bucket; pause the group or every worker when a limit runs low."""
        headers = response.headers
        status = response.status_code
        bucket = parse_limit(headers.get("X-Ratelimit-Limit", ""))
        if status != 420 and status < 500:
            self._answered.add(group)
        if bucket is not None:
            self._buckets[group] = bucket
            self._observe_bucket(group, bucket, _int(headers.get("X-Ratelimit-Remaining")))
        elif status < 400 and group not in KNOWN_BUCKETS and group in self._buckets:
            logger.info("ESI group %s announces no bucket any more", group)
            del self._buckets[group]
        remain = _int(headers.get("X-ESI-Error-Limit-Remain"))
        if remain is None:
            return
        self.limiter.observe(ERROR_GATE, remain, None)
        if status == 420:
            return  # the caller closes the gate until the reset
        self._error_remain = remain
        reset = capped_wait(headers.get("X-ESI-Error-Limit-Reset"), DEFAULT_ERROR_RESET)
        if remain < self.error_floor:
            logger.warning("ESI error limit down to %s; pausing every worker", remain)
            self.limiter.block(ERROR_GATE, reset)
        elif status >= 400 and remain < ERROR_SLOWDOWN_BELOW:
            # Spread the errors left over what is left of the window.
            self.limiter.block(ERROR_GATE, reset / max(remain - self.error_floor, 1))

    def _observe_bucket(self, group: str, bucket: tuple[int, float], remaining: int | None) -> None:
        """Pause a group whose bucket is nearly empty until enough tokens are back."""
        if remaining is None:
            return
        tokens, window = bucket
        self.limiter.observe(f"esi:{group}", remaining, tokens)
        margin = max(tokens * RATE_MARGIN, RATE_MARGIN_MIN_TOKENS)
        if remaining < margin:
            # Spent tokens come back as the window slides, at about tokens/window a second.
            seconds = (margin - remaining) * window / tokens
            logger.info("ESI group %s has %s tokens left; pausing it", group, remaining)
            self.limiter.block(f"esi:{group}", seconds)

    def _detail_of(self, call: DetailCall, response: requests.Response) -> Detail:
        expires = _http_date(response.headers.get("Expires"))
        etag = response.headers.get("ETag") or call.etag
        if response.status_code == 304:
            return Detail(304, None, etag, expires)
        return Detail(200, self._json(response, dict), etag, expires)

    def _new_session(self) -> UpstreamSession:
        return new_session(self.contact, self.timeout, compatibility_date=COMPATIBILITY_DATE)

    def _thread_session(self) -> UpstreamSession:
        """This thread's session: a requests Session is not safe to share between threads."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._new_session()
        return session

    def _executor(self) -> ThreadPoolExecutor:
        """The worker threads of `details()`, started on first use (again after a fork)."""
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="esi")
            self._pool_pid = os.getpid()
        return self._pool

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


class _DetailRun:
    """One `details()` run: the calls in flight, the next one to send, the first failure.

    Runs on the calling thread; the client's pool only sends the requests. The run keeps
    the concurrency slots it leased for its next calls (for at most half a lease) instead of
    giving each back and leasing it again, and a group without a bucket takes its row once:
    its later calls only pass the error gate and are counted at the end. That leaves one
    database read per request.
    """

    def __init__(self, client: EsiClient, calls: Iterable[DetailCall]) -> None:
        self.client = client
        self.pending = iter(calls)
        self.next_call: DetailCall | None = None  # taken from `pending`, not sent yet
        self.paced = False  # whether `next_call` holds its group's slot already
        self.in_flight: dict[Future[requests.Response], tuple[DetailCall, _Lease | None]] = {}
        self.spare: list[_Lease] = []  # leased slots no call holds right now
        self.started: set[str] = set()  # groups without a bucket whose row this run took
        self.uncounted: dict[str, int] = {}  # their calls since, counted at the end
        self.failure: Exception | None = None

    def fill(self) -> None:
        """Send calls until enough are in flight, none are left, or the next one must wait."""
        client = self.client
        while self.failure is None and len(self.in_flight) < client._parallel():
            call = self.next_call = self.next_call or next(self.pending, None)
            if call is None:
                return
            if self.in_flight and not client._knows(call.group):
                return  # the group's first answer tells whether it has a bucket: wait for it
            if any(future.done() for future in self.in_flight):
                return  # read what came back first: it may be a 420, or a low error limit
            try:
                if not self._start(call):
                    return
            except RateLimited as exc:
                self.failure = exc
        self._release_spare(keep=client._parallel() - len(self.in_flight))

    def _start(self, call: DetailCall) -> bool:
        """Take the call's slots and send it; False when no concurrency slot is free yet."""
        client = self.client
        unbucketed = client.bucket(call.group) is None
        if self.paced or (unbucketed and call.group in self.started):
            client.limiter.wait_open(ERROR_GATE, client.max_wait)
        else:
            client._pace(call.group)
            self.paced = True
        lease = None
        if unbucketed:
            lease = self._lease()
            if lease is None:
                return False
        future = client._executor().submit(client._send, "GET", call.path, headers=_etag(call.etag))
        self.in_flight[future] = (call, lease)
        if unbucketed and call.group in self.started and not self.paced:
            self.uncounted[call.group] = self.uncounted.get(call.group, 0) + 1
        elif unbucketed:
            self.started.add(call.group)
        self.next_call, self.paced = None, False
        return True

    def _lease(self) -> _Lease | None:
        """A concurrency slot: a spare one still young enough, or a new lease."""
        while self.spare:
            lease = self.spare.pop()
            if time.monotonic() - lease.since < LEASE_SECONDS / 2:
                return lease
            self.client.limiter.release(lease.token)
        token = self.client._lease(patient=not self.in_flight)
        return _Lease(token, time.monotonic()) if token is not None else None

    def _release_spare(self, keep: int) -> None:
        """Give back the spare slots beyond `keep` (fewer calls may be in flight now)."""
        while len(self.spare) > max(keep, 0):
            self.client.limiter.release(self.spare.pop().token)

    def collect(self) -> Iterator[tuple[DetailCall, Detail | EsiNotFound]]:
        """Wait for at least one answer (or a moment, when a call waits for a slot); yield
        what arrived, noting the first transient failure instead."""
        client = self.client
        timeout = LEASE_POLL if self.paced else None
        done, _ = wait(self.in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            call, lease = self.in_flight.pop(future)
            if lease is not None:
                self.spare.append(lease)
            result: Detail | EsiNotFound
            try:
                response = client._handle(future.result(), "GET", call.path, call.group)
                result = client._detail_of(call, response)
            except EsiNotFound as exc:
                result = exc
            except (EsiError, RateLimited) as exc:
                self.failure = self.failure or exc
                continue
            yield call, result

    def abandon(self) -> None:
        """Let what is still in flight end, give every concurrency slot back and count the
        calls not counted yet (the run ended, or the caller stopped early)."""
        for future, (_, lease) in self.in_flight.items():
            future.exception()
            if lease is not None:
                self.spare.append(lease)
        self.in_flight.clear()
        self._release_spare(keep=0)
        for group, count in self.uncounted.items():
            self.client.limiter.count_calls(f"esi:{group}", count)
        self.uncounted.clear()


@dataclass(frozen=True)
class _Lease:
    """A concurrency slot a `details()` run holds: its token, leased at `since` (monotonic)."""

    token: str
    since: float


def _etag(etag: str | None) -> dict[str, str] | None:
    return {"If-None-Match": etag} if etag else None
