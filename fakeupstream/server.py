"""The fake zKillboard API, ESI and R2Z2 (day dumps, live feed), over real HTTP on loopback.

``FakeUpstream`` answers like the real services do (see the upstream facts in the design) and
counts every rule a client breaks as a *violation*, so tests can assert that a client is a
good citizen: zero violations. It also injects faults on demand (5xx, held answers, truncated
JSON, HTML error pages, 429 bursts, 420 storms), reproducibly from a seed.

zKillboard (under /zkb/api/) serves pages and statistics (``stats/{type}ID/{id}/``: totals of
destroyed and lost, by month; for a solar system or region every killmail there counts as
destroyed and nothing as lost). R2Z2 (under /r2z2/) serves ``history/totals.json``,
``history/YYYYMMDD.json`` and ``history/raw/YYYYMMDD.json`` for the UTC days before today (a
raw day is streamed in chunks, gzipped when the client accepts it), and the live feed (see
``feed``): ``ephemeral/sequence.json`` (``{"sequence": N}``, updated every 51 packages) and
``ephemeral/{N}.json`` (one package; 404 until appended, after 24 hours, or for a hole; asking
again within 6 seconds of a 404 is a violation). The feed grows on demand (``feed_append``,
``POST /_fake/live/append``) and at ``live_rate`` killmails a second; every fed killmail joins
the world, so the day dumps list it once its day is past. ``GET /_fake/live`` reports it.

ESI (under /esi/) announces a rate-limit bucket (``X-Ratelimit-*`` headers, tokens, 429)
only on the route groups that have one (DEFAULT_ESI_BUCKETS: killmail, ESI's own 3600/15m, and
char-affiliation, an example of a bulk route with one); the others are bound by the error limit
alone, as most routes of the real ESI today. ``esi_report``
(``GET /_fake/esi``) counts calls, breaches of both limits, calls during a 420, requests in
flight at once and every bucket charge.

Standard library only, no Django: it runs in a thread of a pytest process or as its own
process (``python -m fakeupstream``). Other processes read its statistics and change its
configuration through ``GET /_fake/stats`` and ``POST /_fake/config``, read how a client used
ESI (calls, breaches, concurrency, bucket charges) through ``GET /_fake/esi``, and drive the live
feed through ``/_fake/live`` (GET: the report), ``/_fake/live/append`` (POST ``{"count": n}``,
optional ``"late_seconds"``) and ``/_fake/live/expire`` (POST ``{"through": n}``).

Why one long module: the emulations share the rule counters, the fault draws and the lock
that make the violation count exact; they are kept side by side.
"""

from __future__ import annotations

import email.utils
import functools
import gzip
import hashlib
import json
import math
import random
import sys
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from .feed import (
    DEFAULT_FIRST_SEQUENCE,
    DEFAULT_RETENTION_SECONDS,
    DEFAULT_SEQUENCE_EVERY,
    LiveFeed,
    settings_from,
)
from .world import SAMPLES_DIR, World, killmail_id_at, killmail_time

ZKB_PREFIX = "/zkb/api"
ZKB_BLOCKED_PATH = "/zkb/api/blocked.json"
ZKB_STATS_PREFIX = "/zkb/api/stats/"
ESI_PREFIX = "/esi/"
R2Z2_PREFIX = "/r2z2/"
CONTROL_PREFIX = "/_fake/"
R2Z2_PACKAGE_PREFIX = "/r2z2/ephemeral/"

ZKB_PAGE_SIZE = 200
ZKB_MAX_PAGE = 100
ZKB_BURST = 2  # tokens: a client pacing at the rate may send two back to back after a pause
ZKB_ERROR_WINDOW = 300.0  # seconds over which zKillboard counts {"error"} answers
ZKB_WITHHELD_SECONDS = 300  # killmails younger than this are not listed yet
ZKB_PAST_SECONDS_MAX = 604_800
FULL_ITEMS_SINCE = datetime(2026, 6, 27, tzinfo=UTC)  # zKillboard pages carry bodies since
DISABLED_MODIFIERS = frozenset(
    {"limit", "startTime", "endTime", "beforeKillID", "afterKillID", "orderDirection"}
)
ZKB_ID_FILTERS = {
    "characterID": "character_ids",
    "corporationID": "corporation_ids",
    "allianceID": "alliance_ids",
    "shipTypeID": "ship_type_ids",
    "solarSystemID": "solar_system_ids",
    "regionID": "region_ids",
}
# Statistics of these count every killmail as destroyed (there is no side to a place).
ZKB_PLACE_FILTERS = frozenset({"solarSystemID", "regionID"})
ZKB_NUMBER_FILTERS = frozenset({"year", "month", "pastSeconds", "page"})

ESI_ERROR_WINDOW = 60.0  # seconds; ESI's error limit resets every minute
# Requests already on the wire when the first 420 of a period went out are not the client's
# fault; one arriving later than this after it is a call during a 420.
ESI_420_GRACE = 0.05  # seconds
ESI_GROUPS = (
    "killmail",
    "char-affiliation",
    "names",
    "character",
    "corporation",
    "alliance",
    "universe",
)
NO_GROUP = "none"  # the report's key for ESI paths outside every route group
# (limit, window seconds) per route group; None: ESI has not turned rate limiting on there
# yet, so no X-Ratelimit-* headers and only the error limit binds.
DEFAULT_ESI_BUCKETS: dict[str, tuple[int, float] | None] = {
    "killmail": (3600, 900.0),
    "char-affiliation": (1800, 900.0),
    "names": None,
    "character": None,
    "corporation": None,
    "alliance": None,
    "universe": None,
}
ESI_SUCCESS_COST = 2  # a request is refused unless the bucket still holds a 2xx's cost
DETAILS_EXPIRE_SECONDS = 3600
KILLMAIL_EXPIRE_SECONDS = 30 * 86400  # killmails never change
NAMES_MAX_IDS = 1000
AFFILIATION_MAX_IDS = 1000
NAMES_404_BODY = (SAMPLES_DIR / "esi_universe_names_404_issue1181.json").read_bytes()

R2Z2_BURST = 15  # tokens: R2Z2 allows 15 requests a second per IP
DEFAULT_RAW_SINCE = "2026-07-01"  # the first UTC day with a raw dump
RAW_CHUNK_CHARACTERS = 256 * 1024  # a raw day is sent in chunks of about this size
RAW_GZIP_LEVEL = 1  # speed over size: a raw day can be tens of MB and loopback is fast
ZKB_GZIP_LEVEL = 5

JSON_TYPE = "application/json; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad gateway</title></head>"
    b"<body><h1>Bad gateway</h1><p>The web server reported a bad gateway error.</p>"
    b"<p>cloudflare</p></body></html>"
)
RouteHandler = Callable[["Request"], "Response"]
MAX_VIOLATIONS_KEPT = 10_000  # the count keeps going; only the list is bounded

FAMILIES = (
    "zkb_pages",
    "zkb_stats",
    "zkb_blocked_json",
    "esi_killmails",
    "esi_names",
    "esi_characters",
    "esi_corporations",
    "esi_alliances",
    "esi_types",
    "esi_affiliation",
    "esi_groups",
    "esi_categories",
    "esi_systems",
    "esi_constellations",
    "esi_regions",
    "esi_other",
    "r2z2_totals",
    "r2z2_days",
    "r2z2_raw",
    "r2z2_sequence",
    "r2z2_package",
    "control",
    "other",
)
DETAIL_FAMILIES = ("esi_characters", "esi_corporations", "esi_alliances", "esi_types")


@dataclass
class Request:
    """One HTTP request as the emulation sees it (header names in lower case)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    """One HTTP answer; ``hold`` delays it to emulate a hanging upstream.

    With ``stream`` set, the body is those chunks (sent with chunked transfer encoding) and
    ``body`` is ignored.
    """

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    hold: float = 0.0
    stream: Iterable[bytes] | None = None

    @classmethod
    def json(cls, status: int, payload: Any, **headers: str) -> Response:
        """Build a JSON answer."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status, body, JSON_TYPE, dict(headers))


@dataclass
class FakeConfig:
    """Tunable behaviour; every field can be changed with ``FakeUpstream.configure``."""

    zkb_rate: float = 1.0  # requests per second refilled into zKillboard's bucket
    r2z2_rate: float = 15.0  # requests per second refilled into R2Z2's bucket (burst 15)
    raw_since: str = DEFAULT_RAW_SINCE  # ISO date: R2Z2 raw dumps 404 for earlier days
    item_shape: str = "full"  # "full", "zkbonly" or "mixed" (bodies from 2026-06-27 on)
    latency_zkb: float = 0.0  # seconds slept before every zKillboard answer
    latency_esi: float = 0.0  # seconds slept before every ESI answer
    zkb_error_limit: int = 40  # more {"error"} answers than this in 5 minutes: blocked
    esi_error_limit: int = 100  # non-2xx/3xx answers allowed per minute before 420
    fault_rate_5xx: float = 0.0  # probability of a 502/503/504
    fault_rate_timeout: float = 0.0  # probability of holding the answer timeout_hold seconds
    fault_rate_truncated: float = 0.0  # probability of a 200 with half a JSON body
    fault_rate_html: float = 0.0  # probability of a 200 with an HTML error page
    timeout_hold: float = 15.0
    fault_seed: int = 0
    # R2Z2's live feed (see fakeupstream.feed):
    live_first_sequence: int = DEFAULT_FIRST_SEQUENCE  # the first package's number
    live_rate: float = 0.0  # killmails a second appended as time passes; 0: on demand only
    live_late_rate: float = 0.0  # share of new killmails 1 to 72 hours old
    live_reprocess_rate: float = 0.0  # share of packages republishing an earlier killmail
    live_hole_rate: float = 0.0  # share of sequence numbers skipped for good (below 1)
    live_sequence_every: int = DEFAULT_SEQUENCE_EVERY  # packages per sequence.json update
    live_retention: float = DEFAULT_RETENTION_SECONDS  # seconds a package is served


@dataclass(frozen=True)
class ZkbQuery:
    """A parsed zKillboard filter path."""

    character_ids: tuple[int, ...] = ()
    corporation_ids: tuple[int, ...] = ()
    alliance_ids: tuple[int, ...] = ()
    ship_type_ids: tuple[int, ...] = ()
    solar_system_ids: tuple[int, ...] = ()
    region_ids: tuple[int, ...] = ()
    side: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    page: int = 1


@dataclass(frozen=True)
class StatsQuery:
    """A parsed zKillboard statistics path: ``stats/{filter}/{id}/``."""

    filter: str  # like "characterID"
    entity_id: int


@dataclass(frozen=True)
class ZkbError:
    """A zKillboard error answer, and the rule it breaks if the client should have known."""

    message: str
    rule: str | None = None


class TokenBucket:
    """zKillboard's rate: tokens refill continuously up to a small burst capacity."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        """Create a full bucket."""
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def take(self, now: float) -> float:
        """Take a token; return 0 on success, else the seconds until one is available."""
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last call."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now


class SlidingWindow:
    """An ESI rate-limit group: tokens spent return to the bucket a window later."""

    def __init__(self, limit: int, window: float) -> None:
        """Create an unused group bucket of limit tokens per window seconds."""
        self.limit = limit
        self.window = window
        self._spent: deque[tuple[float, int]] = deque()
        self._used = 0

    def used(self, now: float) -> int:
        """Return the tokens spent in the last window."""
        while self._spent and self._spent[0][0] <= now - self.window:
            self._used -= self._spent.popleft()[1]
        return self._used

    def remaining(self, now: float) -> int:
        """Return the tokens left."""
        return self.limit - self.used(now)

    def charge(self, now: float, cost: int) -> None:
        """Spend tokens."""
        if cost:
            self._spent.append((now, cost))
            self._used += cost

    def retry_after(self, now: float, need: int) -> int:
        """Return whole seconds (at least 1) until need tokens are back."""
        available = self.remaining(now)
        for spent_at, cost in self._spent:
            available += cost
            if available >= need:
                return max(1, math.ceil(spent_at + self.window - now))
        return max(1, math.ceil(self.window))

    def describe(self) -> str:
        """Return the limit as ESI's X-Ratelimit-Limit shows it, like "3600/15m"."""
        seconds = int(self.window)
        if seconds % 3600 == 0:
            return f"{self.limit}/{seconds // 3600}h"
        if seconds % 60 == 0:
            return f"{self.limit}/{seconds // 60}m"
        return f"{self.limit}/{seconds}s"


class ErrorWindow:
    """ESI's error limit: a one-minute window opened by the first error, plus forced storms."""

    def __init__(self, limit: int) -> None:
        """Create a window with no errors."""
        self.limit = limit
        self.started: float | None = None
        self.errors = 0
        self.storm_until = 0.0

    def _roll(self, now: float) -> None:
        if self.started is not None and now >= self.started + ESI_ERROR_WINDOW:
            self.started = None
            self.errors = 0

    def add(self, now: float) -> None:
        """Count one error answer."""
        self._roll(now)
        if self.started is None:
            self.started = now
        self.errors += 1

    def in_storm(self, now: float) -> bool:
        """Tell whether a forced 420 storm is going on."""
        return now < self.storm_until

    def exhausted(self, now: float) -> bool:
        """Tell whether the client has used up its errors for this window."""
        self._roll(now)
        return self.started is not None and self.errors >= self.limit

    def remain(self, now: float) -> int:
        """Return X-ESI-Error-Limit-Remain."""
        self._roll(now)
        if self.in_storm(now):
            return 0
        return max(0, self.limit - self.errors)

    def reset(self, now: float) -> int:
        """Return X-ESI-Error-Limit-Reset: whole seconds until the window ends."""
        self._roll(now)
        if self.in_storm(now):
            return max(1, math.ceil(self.storm_until - now))
        if self.started is None:
            return int(ESI_ERROR_WINDOW)
        return max(1, math.ceil(self.started + ESI_ERROR_WINDOW - now))


class EsiStats:
    """What the ESI report counts; every method is called with the fake's lock held.

    Calls, statuses and concurrency are kept by route group (NO_GROUP outside every group);
    a 420 period is a forced storm or an exhausted error limit, known by when it ends.
    """

    def __init__(self, started: float) -> None:
        """Start counting from a monotonic time."""
        self.started = started
        self.calls_by_group: Counter[str] = Counter()
        self.calls_by_family: Counter[str] = Counter()
        self.statuses: dict[str, Counter[str]] = {}
        self.breaches = dict.fromkeys(("rate_limit", "error_limit", "during_420"), 0)
        self.min_error_remain: int | None = None
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self.overall_in_flight = 0
        self.max_overall_in_flight = 0
        self.charges: dict[str, list[list[float]]] = {}
        self._period: tuple[str, float] | None = None
        self._first_420_at = 0.0

    def arrive(self, group: str, family: str) -> None:
        """Count a request as it arrives and while it is being handled."""
        self.calls_by_group[group] += 1
        self.calls_by_family[family] += 1
        self.in_flight[group] += 1
        self.max_in_flight[group] = max(self.max_in_flight[group], self.in_flight[group])
        self.overall_in_flight += 1
        self.max_overall_in_flight = max(self.max_overall_in_flight, self.overall_in_flight)

    def leave(self, group: str) -> None:
        """Count a request as handled (its answer is built)."""
        self.in_flight[group] -= 1
        self.overall_in_flight -= 1

    def answered(self, group: str, status: int, error_remain: int | None) -> None:
        """Count an answer's status and the error-limit remain it shows (None: a storm)."""
        self.statuses.setdefault(group, Counter())[str(status)] += 1
        if error_remain is not None and (
            self.min_error_remain is None or error_remain < self.min_error_remain
        ):
            self.min_error_remain = error_remain

    def charge(self, group: str, now: float, tokens: int) -> None:
        """Record tokens taken from a group's bucket."""
        if tokens:
            moment = round(now - self.started, 4)
            self.charges.setdefault(group, []).append([moment, tokens])

    def refused_420(self, period: tuple[str, float], arrived: float, now: float) -> bool:
        """Note a 420 sent now; tell whether its request came too long after the first one."""
        if period != self._period:
            self._period = period
            self._first_420_at = now
            return False
        if arrived - self._first_420_at > ESI_420_GRACE:
            self.breaches["during_420"] += 1
            return True
        return False

    def report(
        self,
        bucket_sizes: dict[str, tuple[int, float] | None],
        error_answers: int,
        error_limit: int,
        now: float,
    ) -> dict[str, Any]:
        """Return the report as plain JSON-able data (see FakeUpstream.esi_report)."""
        buckets = {group: list(size) for group, size in bucket_sizes.items() if size}
        return {
            "elapsed": round(now - self.started, 4),
            "buckets": {group: buckets.get(group) for group in bucket_sizes},
            "calls": {
                "total": sum(self.calls_by_group.values()),
                "by_group": dict(self.calls_by_group),
                "by_family": dict(self.calls_by_family),
            },
            "statuses": {group: dict(counts) for group, counts in self.statuses.items()},
            "breaches": dict(self.breaches),
            "error_answers": error_answers,
            "min_error_remain": (
                error_limit if self.min_error_remain is None else self.min_error_remain
            ),
            "max_in_flight": {
                "overall": self.max_overall_in_flight,
                "by_group": dict(self.max_in_flight),
            },
            "charges": {
                group: {"bucket": size, "charges": [list(c) for c in self.charges.get(group, [])]}
                for group, size in buckets.items()
            },
        }


class FakeUpstream:
    """zKillboard's API under /zkb/api/, ESI under /esi/ and R2Z2 under /r2z2/, on 127.0.0.1."""

    def __init__(
        self,
        world: World,
        *,
        zkb_rate: float = 1.0,
        r2z2_rate: float = 15.0,
        esi_killmail_bucket: tuple[int, float] | None = None,
        item_shape: str = "full",
        latency_zkb: float = 0.0,
        latency_esi: float = 0.0,
        esi_buckets: dict[str, tuple[int, float] | None] | None = None,
        fault_seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Prepare a server for a world; nothing listens until start().

        ``esi_buckets`` overrides DEFAULT_ESI_BUCKETS per group (None: no bucket there);
        ``esi_killmail_bucket``, when given, overrides the killmail group's.
        """
        self.world = world
        self.host = host
        self.port = port
        self.config = FakeConfig()
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._bucket_sizes: dict[str, tuple[int, float] | None] = dict(DEFAULT_ESI_BUCKETS)
        for group, size in (esi_buckets or {}).items():
            self._bucket_sizes[_esi_group(group)] = _bucket_size(size)
        if esi_killmail_bucket is not None:
            self._bucket_sizes["killmail"] = _bucket_size(esi_killmail_bucket)
        self._esi_routes = self._build_esi_routes()
        self.feed = LiveFeed(world, fault_seed)
        self.reset_limits()
        self.reset_stats()
        self.configure(
            zkb_rate=zkb_rate,
            r2z2_rate=r2z2_rate,
            item_shape=item_shape,
            latency_zkb=latency_zkb,
            latency_esi=latency_esi,
            fault_seed=fault_seed,
        )

    # -- life cycle --------------------------------------------------------------------------

    def start(self, port: int | None = None) -> FakeUpstream:
        """Listen on 127.0.0.1 (port 0: any free port) and serve from a daemon thread."""
        self._httpd = _Server((self.host, self.port if port is None else port), _Handler)
        self._httpd.upstream = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"fake-upstream-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; answers still held by timeout faults die with their threads."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    @property
    def url(self) -> str:
        """Return the server's base URL, like http://127.0.0.1:PORT."""
        return f"http://{self.host}:{self.port}"

    @property
    def zkb_url(self) -> str:
        """Return the zKillboard API base URL (ends with /)."""
        return self.url + ZKB_PREFIX + "/"

    @property
    def esi_url(self) -> str:
        """Return the ESI base URL (ends with /)."""
        return self.url + ESI_PREFIX

    @property
    def r2z2_url(self) -> str:
        """Return the R2Z2 base URL (ends with /)."""
        return self.url + R2Z2_PREFIX

    # -- configuration and statistics --------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change behaviour at run time (thread-safe); unknown keys raise ValueError.

        Besides the FakeConfig fields: ``esi_killmail_bucket`` (limit, window seconds),
        ``esi_buckets`` {group: (limit, window) or None} (a fresh bucket, or none: no
        X-Ratelimit-* headers and no 429 there), ``burst_429`` (answer the next N requests
        with 429, no violation) and ``storm_420`` (ESI answers 420 for N seconds, no violation).
        """
        names = {f.name for f in fields(FakeConfig)}
        special = {"esi_killmail_bucket", "esi_buckets", "burst_429", "storm_420"}
        unknown = set(changes) - names - special
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        if changes.get("item_shape", "full") not in ("full", "zkbonly", "mixed"):
            raise ValueError("item_shape must be full, zkbonly or mixed")
        if "raw_since" in changes:
            date.fromisoformat(str(changes["raw_since"]))  # ValueError when malformed
        live = {
            name: type(getattr(self.config, name))(changes[name])
            for name in names & set(changes)
            if name.startswith("live_")
        }
        if live:
            self.feed.check(settings_from(replace(self.config, **live)))
        buckets = {
            _esi_group(group): _bucket_size(size)
            for group, size in dict(changes.get("esi_buckets") or {}).items()
        }
        if "esi_killmail_bucket" in changes:
            buckets["killmail"] = _bucket_size(changes["esi_killmail_bucket"])
        now = time.monotonic()
        with self._lock:
            for name in names & set(changes):
                setattr(self.config, name, type(getattr(self.config, name))(changes[name]))
            if "zkb_rate" in changes:
                self._zkb_bucket.refill(now)
                self._zkb_bucket.rate = self.config.zkb_rate
            if "r2z2_rate" in changes:
                self._r2z2_bucket.refill(now)
                self._r2z2_bucket.rate = self.config.r2z2_rate
            if "fault_seed" in changes:
                self._faults = random.Random(self.config.fault_seed)
            if "esi_error_limit" in changes:
                self._esi_errors.limit = self.config.esi_error_limit
            for group, size in buckets.items():
                self._bucket_sizes[group] = size
                if size is None:
                    self._esi_buckets.pop(group, None)
                else:
                    self._esi_buckets[group] = SlidingWindow(*size)
            if "burst_429" in changes:
                self._burst_429 = int(changes["burst_429"])
            if "storm_420" in changes:
                self._esi_errors.storm_until = now + float(changes["storm_420"])
            settings, seed = settings_from(self.config), self.config.fault_seed
        if live or "fault_seed" in changes:
            self.feed.configure(settings, seed)

    def current_config(self) -> dict[str, Any]:
        """Return the configuration as plain JSON-able data."""
        with self._lock:
            config = asdict(self.config)
            config["esi_buckets"] = {
                group: None if size is None else list(size)
                for group, size in self._bucket_sizes.items()
            }
            config["burst_429"] = self._burst_429
            return config

    def reset_limits(self) -> None:
        """Refill every bucket and forget errors and blocks, as if time had passed."""
        now = time.monotonic()
        with self._lock:
            self._zkb_bucket = TokenBucket(self.config.zkb_rate, ZKB_BURST, now)
            self._r2z2_bucket = TokenBucket(self.config.r2z2_rate, R2Z2_BURST, now)
            self._zkb_errors: deque[float] = deque()
            self._esi_buckets = {
                group: SlidingWindow(*size)
                for group, size in self._bucket_sizes.items()
                if size is not None
            }
            self._esi_errors = ErrorWindow(self.config.esi_error_limit)
            self._burst_429 = 0
        self.feed.reset_waits()

    def reset_stats(self) -> None:
        """Forget request counts and violations."""
        with self._lock:
            self._requests: Counter[str] = Counter()
            self._statuses: dict[str, Counter[str]] = {
                "zkb": Counter(),
                "esi": Counter(),
                "r2z2": Counter(),
            }
            self._fault_counts: Counter[str] = Counter()
            self._violations: list[dict[str, Any]] = []
            self._violation_count = 0
            self._violations_by_rule: Counter[str] = Counter()
            self._zkb_error_answers = 0
            self._esi_error_answers = 0
            self._served_killmails: set[int] = set()
            self._delivered_bodies: set[int] = set()
            self._killmail_refetches = 0
            self._killmail_fetched_despite_body = 0
            self._esi_stats = EsiStats(time.monotonic())
        self.feed.reset_counts()

    def stats(self) -> dict[str, Any]:
        """Return request counts per route family, statuses, faults and violations."""
        with self._lock:
            stats: dict[str, Any] = {family: self._requests[family] for family in FAMILIES}
            stats["esi_details"] = sum(self._requests[f] for f in DETAIL_FAMILIES)
            stats["requests"] = sum(self._requests.values())
            stats["statuses"] = {k: dict(v) for k, v in self._statuses.items()}
            stats["faults"] = dict(self._fault_counts)
            stats["zkb_error_answers"] = self._zkb_error_answers
            stats["esi_error_answers"] = self._esi_error_answers
            stats["esi_killmail_refetches"] = self._killmail_refetches
            stats["esi_killmail_fetched_despite_body"] = self._killmail_fetched_despite_body
            stats["violations"] = list(self._violations)
            stats["violation_count"] = self._violation_count
            stats["violations_by_rule"] = dict(self._violations_by_rule)
            return stats

    def esi_report(self) -> dict[str, Any]:
        """Return how a client used ESI since the start or reset_stats().

        Keys: ``calls`` {total, by_group, by_family} (group "none" for paths outside every
        group); ``statuses`` {group: {status: count}}; ``breaches`` {rate_limit: refused with
        429 for an exhausted bucket, error_limit: arrived while the error limit was
        exhausted, during_420: arrived during a 420 period more than ESI_420_GRACE seconds
        after its first 420 went out}; ``error_answers`` (answers the error limit counted);
        ``min_error_remain`` (the lowest X-ESI-Error-Limit-Remain sent outside forced storms,
        the limit itself if none); ``max_in_flight`` {overall, by_group} (most requests
        handled at once, counted from arrival, before the latency, to the built answer);
        ``charges`` {group with a bucket: {bucket: [limit, window], charges: [[seconds since
        the start, tokens], ...]}}; ``buckets`` {group: [limit, window] or None}; ``elapsed``.
        """
        with self._lock:
            return self._esi_stats.report(
                self._bucket_sizes,
                self._esi_error_answers,
                self.config.esi_error_limit,
                time.monotonic(),
            )

    # -- live feed ---------------------------------------------------------------------------

    def feed_append(self, count: int, *, late_seconds: float | None = None) -> list[int]:
        """Append count packages to R2Z2's live feed now; return their sequence numbers.

        With late_seconds every new killmail is that many seconds old (a late arrival);
        otherwise ``live_late_rate`` decides. ``live_reprocess_rate`` and ``live_hole_rate``
        apply either way.
        """
        return self.feed.append(count, late_seconds=late_seconds)

    def feed_expire_through(self, sequence: int) -> None:
        """Expire every live package numbered up to sequence (404 from now on)."""
        self.feed.expire_through(sequence)

    def feed_report(self) -> dict[str, Any]:
        """Return the live feed: numbers, holes, killmails, latest zkb and fetch counts.

        Keys: first, newest, published, holes, expired_through, packages ([sequence,
        killmail_id] for every package), latest_zkb ({killmail id: zkb}), fetches ({sequence:
        200 answers}), requests ({sequence: answers of any status}), late (killmail ids fed
        as late arrivals), reprocessed (sequences that republished a killmail).
        """
        self.feed.grow()
        return self.feed.report()

    # -- dispatch ----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer one request (called from the HTTP handler threads)."""
        self.feed.grow()
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            return self._control(request)
        if path == ZKB_BLOCKED_PATH:
            return self._zkb_blocked_json(request)
        if path.startswith(ZKB_PREFIX):
            return self._zkb(request)
        if path.startswith(ESI_PREFIX):
            return self._esi(request)
        if path.startswith(R2Z2_PREFIX):
            return self._r2z2(request)
        self._count("other")
        return Response.json(404, {"error": "not found"})

    def _count(self, family: str) -> None:
        with self._lock:
            self._requests[family] += 1

    def _violate(self, rule: str, request: Request) -> None:
        """Record a broken rule; call with the lock held."""
        self._violation_count += 1
        self._violations_by_rule[rule] += 1
        if len(self._violations) < MAX_VIOLATIONS_KEPT:
            moment = datetime.now(UTC).isoformat(timespec="milliseconds")
            path = request.path + ("?" + request.query if request.query else "")
            self._violations.append({"rule": rule, "path": path, "time": moment})

    def _check_user_agent(self, request: Request, rule: str) -> None:
        """Count a violation for a User-Agent without contact details; call with the lock."""
        agent = request.headers.get("user-agent", "")
        if "@" not in agent and "http" not in agent.lower():
            self._violate(rule, request)

    def _draw_fault(self) -> str | None:
        """Draw this request's fault; always four draws, so a seed replays the same faults."""
        config = self.config
        draws = [self._faults.random() for _ in range(4)]
        rates = (
            ("5xx", config.fault_rate_5xx),
            ("timeout", config.fault_rate_timeout),
            ("truncated", config.fault_rate_truncated),
            ("html", config.fault_rate_html),
        )
        for draw, (fault, rate) in zip(draws, rates, strict=True):
            if draw < rate:
                self._fault_counts[fault] += 1
                return fault
        return None

    def _fault_status(self) -> int:
        return self._faults.choice((502, 503, 504))

    # -- zKillboard --------------------------------------------------------------------------

    def _zkb(self, request: Request) -> Response:
        gzip_accepted = _accepts_gzip(request)
        family = "zkb_stats" if request.path.startswith(ZKB_STATS_PREFIX) else "zkb_pages"
        with self._lock:
            self._requests[family] += 1
            self._check_user_agent(request, "zkb_user_agent")
            if not gzip_accepted:
                self._violate("zkb_accept_encoding", request)
        _sleep(self.config.latency_zkb)
        with self._lock:
            response = self._zkb_admission(request, time.monotonic())
            fault = None if response is not None else self._draw_fault()
            status = self._fault_status() if fault == "5xx" else 200
        if response is None:
            response = self._zkb_answer(request, fault, status)
        with self._lock:
            self._statuses["zkb"][str(response.status)] += 1
        if gzip_accepted and response.body and response.content_type == JSON_TYPE:
            response.body = gzip.compress(response.body, compresslevel=ZKB_GZIP_LEVEL)
            response.headers["Content-Encoding"] = "gzip"
        return response

    def _zkb_admission(self, request: Request, now: float) -> Response | None:
        """Refuse a request the way Cloudflare and zKillboard would; call with the lock."""
        while self._zkb_errors and self._zkb_errors[0] <= now - ZKB_ERROR_WINDOW:
            self._zkb_errors.popleft()
        if len(self._zkb_errors) > self.config.zkb_error_limit:
            self._violate("zkb_blocked", request)
            return Response(302, headers={"Location": ZKB_BLOCKED_PATH})
        if self._burst_429 > 0:
            self._burst_429 -= 1
            self._fault_counts["burst_429"] += 1
            return _too_many_requests(1)
        wait = self._zkb_bucket.take(now)
        if wait > 0:
            self._violate("zkb_rate", request)
            return _too_many_requests(max(1, math.ceil(wait)))
        if request.query:
            self._violate("zkb_query_string", request)
            return Response(403, b"Forbidden: query strings are not allowed", HTML_TYPE)
        return None

    def _zkb_answer(self, request: Request, fault: str | None, status: int) -> Response:
        if fault == "5xx":
            return Response(status, HTML_ERROR_PAGE, HTML_TYPE)
        if fault == "html":
            return Response(200, HTML_ERROR_PAGE, HTML_TYPE)
        parsed: ZkbQuery | StatsQuery | ZkbError
        if request.path.startswith(ZKB_STATS_PREFIX):
            parsed = parse_zkb_stats_path(request.path)
        else:
            parsed = parse_zkb_path(request.path, datetime.now(UTC))
        if isinstance(parsed, ZkbError):
            with self._lock:
                self._zkb_errors.append(time.monotonic())
                self._zkb_error_answers += 1
                if parsed.rule:
                    self._violate(parsed.rule, request)
            response = Response.json(200, {"error": parsed.message})
        elif isinstance(parsed, StatsQuery):
            response = Response.json(200, self._zkb_stats(parsed))
        else:
            response = Response(200, self._zkb_page(parsed).encode())
        if fault == "truncated":
            response.body = _truncate(response.body)
        if fault == "timeout":
            response.hold = self.config.timeout_hold
        return response

    def _zkb_page(self, query: ZkbQuery) -> str:
        """Return the JSON text of one page: up to 200 items, newest killmail first."""
        newest_listed = _newest_listed()
        ids = self.world.search(
            character_ids=query.character_ids,
            corporation_ids=query.corporation_ids,
            alliance_ids=query.alliance_ids,
            ship_type_ids=query.ship_type_ids,
            solar_system_ids=query.solar_system_ids,
            region_ids=query.region_ids,
            side=query.side,
            start=query.start,
            end=query.end,
        )
        ids = [killmail_id for killmail_id in ids if killmail_id <= newest_listed]
        first = (query.page - 1) * ZKB_PAGE_SIZE
        page = ids[first : first + ZKB_PAGE_SIZE]
        shape = self.config.item_shape
        items = []
        with_body = []
        for killmail_id in page:
            full = shape == "full" or (
                shape == "mixed" and killmail_time(killmail_id) >= FULL_ITEMS_SINCE
            )
            zkb = self.world.zkb_json(killmail_id)
            if full:
                with_body.append(killmail_id)
                items.append(self.world.body_json(killmail_id)[:-1] + ',"zkb":' + zkb + "}")
            else:
                items.append(f'{{"killmail_id":{killmail_id},"zkb":{zkb}}}')
        with self._lock:
            self._delivered_bodies.update(with_body)
        return "[" + ",".join(items) + "]"

    def _zkb_stats(self, query: StatsQuery) -> dict[str, Any]:
        """Return one entity's statistics: destroyed and lost, in total and by month.

        Destroyed: the entity is on the attackers' side (for a ship type: an attacker flew
        it); lost: it is the victim. For a solar system or a region every killmail there
        counts once, as destroyed. Killmails pages withhold are not counted either.
        """
        search = functools.partial(
            self.world.search, **{ZKB_ID_FILTERS[query.filter]: (query.entity_id,)}
        )
        if query.filter in ZKB_PLACE_FILTERS:
            sides = {"shipsDestroyed": search(), "shipsLost": []}
        else:
            sides = {"shipsDestroyed": search(side="kills"), "shipsLost": search(side="losses")}
        newest_listed = _newest_listed()
        totals = dict.fromkeys(sides, 0)
        months: dict[str, dict[str, int]] = {}
        for key, ids in sides.items():
            for killmail_id in ids:
                if killmail_id > newest_listed:
                    continue
                when = killmail_time(killmail_id)
                month = months.setdefault(
                    f"{when.year:04d}{when.month:02d}",
                    {"year": when.year, "month": when.month, "shipsDestroyed": 0, "shipsLost": 0},
                )
                month[key] += 1
                totals[key] += 1
        return {
            "type": query.filter,
            "id": query.entity_id,
            **totals,
            "months": dict(sorted(months.items())),
        }

    def _zkb_blocked_json(self, request: Request) -> Response:
        self._count("zkb_blocked_json")
        return Response.json(200, {"error": "You have been blocked for too many errors."})

    # -- ESI ---------------------------------------------------------------------------------

    def _esi(self, request: Request) -> Response:
        family, group, route = self._esi_route(request)
        arrived = time.monotonic()
        with self._lock:
            self._requests[family] += 1
            self._esi_stats.arrive(group or NO_GROUP, family)
            stats = self._esi_stats  # reset_stats may replace it while this one is handled
            self._check_user_agent(request, "esi_user_agent")
            if not request.headers.get("x-compatibility-date"):
                self._violate("esi_compatibility_date", request)
        try:
            _sleep(self.config.latency_esi)
            with self._lock:
                response = self._esi_admission(request, group, arrived, time.monotonic())
                refused = response is not None
                fault = None if refused else self._draw_fault()
                status = self._fault_status() if fault == "5xx" else 200
            if response is None:
                response = self._esi_answer(request, route, fault, status)
            with self._lock:
                self._esi_account(response, group, charge=not refused)
        finally:
            with self._lock:
                stats.leave(group or NO_GROUP)
        return response

    def _esi_route(self, request: Request) -> tuple[str, str | None, RouteHandler]:
        """Return (stats family, rate-limit group, handler) for an ESI path."""
        parts = [p for p in request.path[len(ESI_PREFIX) :].split("/") if p]
        routes = self._esi_routes
        for pattern, (family, group, method, handler) in routes.items():
            if len(pattern) == len(parts) and all(
                p in ("*", part) for p, part in zip(pattern, parts, strict=True)
            ):
                if request.method != method:
                    return family, group, _method_not_allowed
                return family, group, handler
        return "esi_other", None, _esi_not_found

    def _build_esi_routes(self) -> dict[tuple[str, ...], tuple[str, str, str, RouteHandler]]:
        """Map path patterns to (stats family, rate-limit group, method, handler).

        The first pattern that matches wins, so fixed segments go before wildcards.
        """
        world = self.world
        return {
            ("characters", "affiliation"): (
                "esi_affiliation",
                "char-affiliation",
                "POST",
                self._esi_affiliation,
            ),
            ("killmails", "*", "*"): ("esi_killmails", "killmail", "GET", self._esi_killmail),
            ("universe", "names"): ("esi_names", "names", "POST", self._esi_names),
            ("characters", "*"): (
                "esi_characters",
                "character",
                "GET",
                _details(world.character_details, "Character not found"),
            ),
            ("corporations", "*"): (
                "esi_corporations",
                "corporation",
                "GET",
                _details(world.corporation_details, "Corporation not found"),
            ),
            ("alliances", "*"): (
                "esi_alliances",
                "alliance",
                "GET",
                _details(world.alliance_details, "Alliance not found"),
            ),
            ("universe", "types", "*"): (
                "esi_types",
                "universe",
                "GET",
                _details(world.type_details, "Type not found"),
            ),
            ("universe", "groups", "*"): (
                "esi_groups",
                "universe",
                "GET",
                _details(world.group_details, "Group not found"),
            ),
            ("universe", "categories", "*"): (
                "esi_categories",
                "universe",
                "GET",
                _details(world.category_details, "Category not found"),
            ),
            ("universe", "systems", "*"): (
                "esi_systems",
                "universe",
                "GET",
                _details(world.system_details, "Solar system not found"),
            ),
            ("universe", "constellations", "*"): (
                "esi_constellations",
                "universe",
                "GET",
                _details(world.constellation_details, "Constellation not found"),
            ),
            ("universe", "regions", "*"): (
                "esi_regions",
                "universe",
                "GET",
                _details(world.region_details, "Region not found"),
            ),
        }

    def _esi_admission(
        self, request: Request, group: str | None, arrived: float, now: float
    ) -> Response | None:
        """Refuse a request over ESI's error limit or rate limit; call with the lock."""
        errors = self._esi_errors
        if errors.in_storm(now):
            self._fault_counts["storm_420"] += 1
            self._refuse_420(request, ("storm", errors.storm_until), arrived, now)
            return Response.json(420, {"error": "This software has exceeded the error limit."})
        if errors.exhausted(now):
            self._violate("esi_error_limit", request)
            self._esi_stats.breaches["error_limit"] += 1
            self._refuse_420(request, ("errors", errors.started or now), arrived, now)
            return Response.json(420, {"error": "This software has exceeded the error limit."})
        if self._burst_429 > 0:
            self._burst_429 -= 1
            self._fault_counts["burst_429"] += 1
            return Response.json(429, {"error": "Too many requests"}, **{"Retry-After": "1"})
        bucket = self._esi_buckets.get(group or "")
        if bucket is not None and bucket.remaining(now) < ESI_SUCCESS_COST:
            self._violate("esi_rate_limit", request)
            self._esi_stats.breaches["rate_limit"] += 1
            retry = str(bucket.retry_after(now, ESI_SUCCESS_COST))
            return Response.json(429, {"error": "Too many requests"}, **{"Retry-After": retry})
        return None

    def _refuse_420(
        self, request: Request, period: tuple[str, float], arrived: float, now: float
    ) -> None:
        """Count a request answered 420 that the client sent after seeing a 420; with the lock."""
        if self._esi_stats.refused_420(period, arrived, now):
            self._violate("esi_call_during_420", request)

    def _esi_answer(
        self, request: Request, route: RouteHandler, fault: str | None, status: int
    ) -> Response:
        if fault == "5xx":
            return Response.json(status, {"error": "Upstream is unavailable"})
        if fault == "html":
            return Response(200, HTML_ERROR_PAGE, HTML_TYPE)
        response: Response = route(request)
        if fault == "truncated" and response.status == 200:
            response.body = _truncate(response.body)
        if fault == "timeout":
            response.hold = self.config.timeout_hold
        return response

    def _esi_account(self, response: Response, group: str | None, *, charge: bool) -> None:
        """Spend tokens, count errors and add ESI's limit headers; call with the lock."""
        now = time.monotonic()
        status = response.status
        self._statuses["esi"][str(status)] += 1
        bucket = self._esi_buckets.get(group or "")
        if bucket is not None and charge:
            bucket.charge(now, _esi_cost(status))
            self._esi_stats.charge(group or NO_GROUP, now, _esi_cost(status))
        # A 420 is the limit itself speaking; counting it would prolong a storm past its end.
        if status >= 400 and status != 420:
            self._esi_errors.add(now)
            self._esi_error_answers += 1
        if bucket is not None:
            used = bucket.used(now)
            response.headers["X-Ratelimit-Group"] = group or ""
            response.headers["X-Ratelimit-Limit"] = bucket.describe()
            response.headers["X-Ratelimit-Remaining"] = str(max(0, bucket.limit - used))
            response.headers["X-Ratelimit-Used"] = str(used)
        remain = self._esi_errors.remain(now)
        response.headers["X-ESI-Error-Limit-Remain"] = str(remain)
        response.headers["X-ESI-Error-Limit-Reset"] = str(self._esi_errors.reset(now))
        storm = self._esi_errors.in_storm(now)
        self._esi_stats.answered(group or NO_GROUP, status, None if storm else remain)

    def _esi_killmail(self, request: Request) -> Response:
        _, id_text, given_hash = [p for p in request.path[len(ESI_PREFIX) :].split("/") if p]
        if not id_text.isdigit():
            return Response.json(400, {"error": "killmail_id must be an integer"})
        killmail_id = int(id_text)
        world = self.world
        if not world.has_killmail(killmail_id) or world.killmail_hash(killmail_id) != given_hash:
            return Response.json(422, {"error": "Invalid killmail_id and/or killmail_hash"})
        answered = world.misfiled.get(killmail_id, killmail_id)
        response = _cacheable(request, world.body_json(answered), KILLMAIL_EXPIRE_SECONDS)
        if response.status == 200:
            with self._lock:
                if killmail_id in self._served_killmails:
                    self._killmail_refetches += 1
                if killmail_id in self._delivered_bodies:
                    self._killmail_fetched_despite_body += 1
                self._served_killmails.add(killmail_id)
        return response

    def _esi_names(self, request: Request) -> Response:
        ids = _id_list(request, NAMES_MAX_IDS)
        if isinstance(ids, Response):
            return ids
        unique = list(dict.fromkeys(ids))
        if not all(self.world.is_resolvable(i) for i in unique):
            return Response(404, NAMES_404_BODY)
        answer = [
            {"category": self.world.category(i), "id": i, "name": self.world.name(i)}
            for i in unique
        ]
        return Response.json(200, answer)

    def _esi_affiliation(self, request: Request) -> Response:
        """Corporation, alliance and faction of up to 1000 characters; 404 if one is unknown."""
        ids = _id_list(request, AFFILIATION_MAX_IDS)
        if isinstance(ids, Response):
            return ids
        answer = []
        for character_id in dict.fromkeys(ids):
            affiliation = self.world.affiliation(character_id)
            if affiliation is None:
                return Response.json(404, {"error": "Character not found"})
            answer.append({"character_id": character_id, **affiliation})
        return Response.json(200, answer)

    # -- R2Z2 --------------------------------------------------------------------------------

    def _r2z2(self, request: Request) -> Response:
        family, route = self._r2z2_route(request)
        sequence = _package_sequence(request.path) if family == "r2z2_package" else None
        too_soon = sequence is not None and self.feed.asked_too_soon(sequence)
        with self._lock:
            self._requests[family] += 1
            self._check_user_agent(request, "r2z2_user_agent")
            if too_soon:
                self._violate("r2z2_404_wait", request)
            response = self._r2z2_admission(request, time.monotonic())
            fault = None if response is not None else self._draw_fault()
            status = self._fault_status() if fault == "5xx" else 200
        if response is None:
            response = self._r2z2_answer(request, route, fault, status)
        with self._lock:
            self._statuses["r2z2"][str(response.status)] += 1
        if sequence is not None:
            self.feed.note_request(sequence)
        if _accepts_gzip(request) and response.content_type == JSON_TYPE:
            _gzip(response, RAW_GZIP_LEVEL if response.stream is not None else ZKB_GZIP_LEVEL)
        return response

    def _r2z2_route(self, request: Request) -> tuple[str, RouteHandler]:
        """Return (stats family, handler) for an R2Z2 path."""
        parts = request.path[len(R2Z2_PREFIX) :].split("/")
        if parts == ["history", "totals.json"]:
            family, handler = "r2z2_totals", self._r2z2_totals
        elif len(parts) == 2 and parts[0] == "history":
            family, handler = "r2z2_days", self._r2z2_day
        elif len(parts) == 3 and parts[:2] == ["history", "raw"]:
            family, handler = "r2z2_raw", self._r2z2_raw
        elif parts == ["ephemeral", "sequence.json"]:
            family, handler = "r2z2_sequence", self._r2z2_sequence
        elif len(parts) == 2 and parts[0] == "ephemeral":
            family, handler = "r2z2_package", self._r2z2_package
        else:
            return "other", _r2z2_not_found
        if request.method != "GET":
            return family, _method_not_allowed
        return family, handler

    def _r2z2_admission(self, request: Request, now: float) -> Response | None:
        """Refuse a request over R2Z2's rate (15 a second per IP); call with the lock."""
        if self._burst_429 > 0:
            self._burst_429 -= 1
            self._fault_counts["burst_429"] += 1
            return _too_many_requests(1)
        wait = self._r2z2_bucket.take(now)
        if wait > 0:
            self._violate("r2z2_rate", request)
            return _too_many_requests(max(1, math.ceil(wait)))
        return None

    def _r2z2_answer(
        self, request: Request, route: RouteHandler, fault: str | None, status: int
    ) -> Response:
        if fault == "5xx":
            return Response(status, HTML_ERROR_PAGE, HTML_TYPE)
        if fault == "html":
            return Response(200, HTML_ERROR_PAGE, HTML_TYPE)
        response = route(request)
        if fault == "truncated" and response.status == 200:
            if response.stream is not None:
                response.body, response.stream = b"".join(response.stream), None
            response.body = _truncate(response.body)
        if fault == "timeout":
            response.hold = self.config.timeout_hold
        return response

    def _r2z2_totals(self, request: Request) -> Response:
        """``{"YYYYMMDD": count}`` from the oldest killmail's day to yesterday, zeros too."""
        counts = self.world.day_counts()
        yesterday = datetime.now(UTC).date() - timedelta(days=1)
        day = min(counts, default=yesterday + timedelta(days=1))
        entries = []
        while day <= yesterday:
            entries.append(f'"{day:%Y%m%d}":{counts.get(day, 0)}')
            day += timedelta(days=1)
        return Response(200, ("{" + ",".join(entries) + "}").encode())

    def _r2z2_day(self, request: Request) -> Response:
        """``{"<killmail_id>": "<hash>"}`` of a past UTC day, ids ascending."""
        day = _dumped_day(request.path)
        if day is None:
            return _r2z2_not_found(request)
        world = self.world
        entries = [f'"{i}":"{world.killmail_hash(i)}"' for i in world.killmail_ids_on(day)]
        return Response(200, ("{" + ",".join(entries) + "}").encode())

    def _r2z2_raw(self, request: Request) -> Response:
        """``{"<killmail_id>": <ESI body>}`` of a past UTC day, streamed; 404 without a dump."""
        day = _dumped_day(request.path)
        raw_since = date.fromisoformat(self.config.raw_since)
        if day is None or day < raw_since or day in self.world.days_without_raw:
            return _r2z2_not_found(request)
        ids = self.world.killmail_ids_on(day)
        with self._lock:
            self._delivered_bodies.update(ids)
        return Response(200, stream=self._raw_chunks(ids))

    def _r2z2_sequence(self, request: Request) -> Response:
        """``{"sequence": N}``: the newest package as of sequence.json's last update."""
        return Response.json(200, {"sequence": self.feed.published()})

    def _r2z2_package(self, request: Request) -> Response:
        """One live package as its JSON text; 404 when absent, expired or a hole."""
        sequence = _package_sequence(request.path)
        text = None if sequence is None else self.feed.package(sequence)
        if text is None:
            return _r2z2_not_found(request)
        return Response(200, text.encode())

    def _raw_chunks(self, ids: list[int]) -> Iterator[bytes]:
        """Yield a raw day's JSON in chunks, joining the bodies' JSON texts as they are."""
        pieces = ["{"]
        size = 0
        for position, killmail_id in enumerate(ids):
            body = self.world.body_json(killmail_id)
            pieces.append(f',"{killmail_id}":' if position else f'"{killmail_id}":')
            pieces.append(body)
            size += len(body)
            if size >= RAW_CHUNK_CHARACTERS:
                yield "".join(pieces).encode()
                pieces, size = [], 0
        pieces.append("}")
        yield "".join(pieces).encode()

    # -- control -----------------------------------------------------------------------------

    def _control(self, request: Request) -> Response:
        self._count("control")
        action = request.path[len(CONTROL_PREFIX) :].strip("/")
        if action == "stats" and request.method == "GET":
            return Response.json(200, self.stats())
        if action == "config" and request.method == "GET":
            return Response.json(200, self.current_config())
        if action == "config" and request.method == "POST":
            try:
                self.configure(**json.loads(request.body or b"{}"))
            except (TypeError, ValueError) as error:
                return Response.json(400, {"error": str(error)})
            return Response.json(200, self.current_config())
        if action == "reset_stats" and request.method == "POST":
            self.reset_stats()
            return Response.json(200, {"ok": True})
        if action == "reset_limits" and request.method == "POST":
            self.reset_limits()
            return Response.json(200, {"ok": True})
        if action == "world" and request.method == "GET":
            return Response.json(200, self._describe_world())
        if action == "esi" and request.method == "GET":
            return Response.json(200, self.esi_report())
        if action.startswith("live"):
            return self._control_live(action, request)
        return Response.json(404, {"error": f"no control action {action!r}"})

    def _control_live(self, action: str, request: Request) -> Response:
        """``GET live``: the report; ``POST live/append`` and ``POST live/expire``."""
        if action == "live" and request.method == "GET":
            return Response.json(200, self.feed_report())
        try:
            payload = json.loads(request.body or b"{}")
            if action == "live/append" and request.method == "POST":
                late = payload.get("late_seconds")
                late_seconds = None if late is None else float(late)
                appended = self.feed_append(int(payload.get("count", 1)), late_seconds=late_seconds)
                return Response.json(200, {"appended": appended})
            if action == "live/expire" and request.method == "POST":
                self.feed_expire_through(int(payload["through"]))
                return Response.json(200, {"expired_through": int(payload["through"])})
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            return Response.json(400, {"error": str(error)})
        return Response.json(404, {"error": f"no control action {action!r}"})

    def _describe_world(self) -> dict[str, Any]:
        characters = {
            str(character_id): {
                "killmails": len(self.world.killmail_ids(character_id)),
                "corporation_id": character.corporation_id,
                "alliance_id": character.alliance_id,
            }
            for character_id, character in self.world.tracked_characters().items()
        }
        return {
            "seed": self.world.seed,
            "characters": characters,
            "unresolvable_ids": sorted(self.world.unresolvable_ids),
        }


def parse_zkb_path(path: str, now: datetime) -> ZkbQuery | ZkbError:
    """Parse a zKillboard API path (starting with /zkb/api) into a query or an error."""
    rest = path[len(ZKB_PREFIX) :]
    if not rest.endswith("/"):
        return ZkbError("Invalid request: the URL must end with /", "zkb_trailing_slash")
    segments = [s for s in rest.split("/") if s]
    ids: dict[str, tuple[int, ...]] = {}
    numbers: dict[str, int] = {}
    sides: set[str] = set()
    index = 0
    while index < len(segments):
        key = segments[index]
        if key in DISABLED_MODIFIERS:
            return ZkbError(f"{key} is no longer supported", "zkb_disabled_modifier")
        if key in ("kills", "losses"):
            sides.add(key)
            index += 1
            continue
        if key not in ZKB_ID_FILTERS and key not in ZKB_NUMBER_FILTERS:
            return ZkbError(f"Unknown or unsupported filter: {key}")
        value = segments[index + 1] if index + 1 < len(segments) else ""
        if "," in value:
            return ZkbError("Multiple ids are no longer supported", "zkb_comma_ids")
        if not value.isdigit():
            return ZkbError(f"{key} needs a numeric value")
        if key in ZKB_ID_FILTERS:
            ids[ZKB_ID_FILTERS[key]] = (int(value),)
        else:
            numbers[key] = int(value)
        index += 2
    return _zkb_query(ids, numbers, sides, now)


def parse_zkb_stats_path(path: str) -> StatsQuery | ZkbError:
    """Parse a zKillboard statistics path (``/zkb/api/stats/characterID/N/``)."""
    rest = path[len(ZKB_STATS_PREFIX) :]
    if not rest.endswith("/"):
        return ZkbError("Invalid request: the URL must end with /", "zkb_trailing_slash")
    segments = rest.split("/")[:-1]
    if len(segments) != 2 or segments[0] not in ZKB_ID_FILTERS:
        return ZkbError("Statistics need one of " + ", ".join(ZKB_ID_FILTERS) + " and an id")
    if "," in segments[1]:
        return ZkbError("Multiple ids are no longer supported", "zkb_comma_ids")
    if not segments[1].isdigit():
        return ZkbError(f"{segments[0]} needs a numeric value")
    return StatsQuery(segments[0], int(segments[1]))


def _zkb_query(
    ids: dict[str, tuple[int, ...]], numbers: dict[str, int], sides: set[str], now: datetime
) -> ZkbQuery | ZkbError:
    if not ids:
        return ZkbError("One of the filters " + ", ".join(ZKB_ID_FILTERS) + " is required")
    if len(sides) > 1:
        return ZkbError("kills and losses cannot be combined")
    page = numbers.get("page", 1)
    if not 1 <= page <= ZKB_MAX_PAGE:
        return ZkbError(f"page must be between 1 and {ZKB_MAX_PAGE}")
    start: datetime | None = None
    end: datetime | None = None
    # zKillboard ignores a year without a month (and a month without a year).
    if "year" in numbers and "month" in numbers:
        year, month = numbers["year"], numbers["month"]
        if not (1 <= month <= 12 and 2003 <= year <= 9999):
            return ZkbError("Invalid year or month")
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    if "pastSeconds" in numbers:
        seconds = numbers["pastSeconds"]
        if seconds == 0 or seconds % 3600 or seconds > ZKB_PAST_SECONDS_MAX:
            return ZkbError("pastSeconds must be a multiple of 3600, at most 604800")
        since = now - timedelta(seconds=seconds)
        start = max(start, since) if start else since
    side = sides.pop() if sides else None
    return ZkbQuery(**ids, side=side, start=start, end=end, page=page)


def _newest_listed() -> int:
    """The newest killmail id zKillboard lists now (younger ones are withheld)."""
    return killmail_id_at(datetime.now(UTC) - timedelta(seconds=ZKB_WITHHELD_SECONDS))


def _accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def _details(lookup: Callable[[int], dict[str, Any] | None], not_found: str) -> RouteHandler:
    """Make a detail-route handler from a world lookup (id -> body or None)."""

    def handler(request: Request) -> Response:
        id_text = [p for p in request.path.split("/") if p][-1]
        details = lookup(int(id_text)) if id_text.isdigit() else None
        if details is None:
            return Response.json(404, {"error": not_found})
        text = json.dumps(details, sort_keys=True, separators=(",", ":"))
        return _cacheable(request, text, DETAILS_EXPIRE_SECONDS)

    return handler


def _cacheable(request: Request, text: str, expires_in: int) -> Response:
    """Answer 200 with ETag and Expires, or 304 when If-None-Match names the same ETag."""
    etag = '"' + hashlib.sha1(text.encode()).hexdigest() + '"'
    headers = {
        "ETag": etag,
        "Expires": email.utils.formatdate(time.time() + expires_in, usegmt=True),
    }
    given = request.headers.get("if-none-match", "")
    tags = {tag.strip().removeprefix("W/") for tag in given.split(",")}
    if etag in tags:
        return Response(304, b"", JSON_TYPE, headers)
    return Response(200, text.encode(), JSON_TYPE, headers)


def _dumped_day(path: str) -> date | None:
    """The UTC day a path's last segment ``YYYYMMDD.json`` names, if it is dumped already."""
    name = path.rsplit("/", 1)[-1]
    digits = name.removesuffix(".json")
    if not (name.endswith(".json") and len(digits) == 8 and digits.isdigit()):
        return None
    try:
        day = date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None
    return day if day < datetime.now(UTC).date() else None


def _package_sequence(path: str) -> int | None:
    """The sequence number a path ``/r2z2/ephemeral/{N}.json`` names, if it names one."""
    digits = path[len(R2Z2_PACKAGE_PREFIX) :].removesuffix(".json")
    if not path.endswith(".json") or not digits.isdigit():
        return None
    return int(digits)


def _r2z2_not_found(request: Request) -> Response:
    return Response(404, b"<html><body><h1>404 Not Found</h1></body></html>", HTML_TYPE)


def _gzip(response: Response, level: int) -> None:
    """Compress an answer in place, streamed ones chunk by chunk."""
    if response.stream is not None:
        response.stream = _gzip_chunks(response.stream, level)
    elif response.body:
        response.body = gzip.compress(response.body, compresslevel=level)
    else:
        return
    response.headers["Content-Encoding"] = "gzip"


def _gzip_chunks(chunks: Iterable[bytes], level: int) -> Iterator[bytes]:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    for chunk in chunks:
        yield compressor.compress(chunk)
    yield compressor.flush()


def _id_list(request: Request, most: int) -> list[int] | Response:
    """Read a POST body of 1 to `most` integer ids, or the 400 answer ESI gives instead."""
    try:
        ids = json.loads(request.body or b"null")
    except ValueError:
        return Response.json(400, {"error": "Request body is not valid JSON"})
    valid = isinstance(ids, list) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    )
    if not valid or not ids:
        return Response.json(400, {"error": "ids must be a non-empty list of integers"})
    if len(ids) > most:
        return Response.json(400, {"error": f"Maximum of {most} ids allowed"})
    return ids


def _esi_group(group: str) -> str:
    """Check an ESI route group's name."""
    if group not in ESI_GROUPS:
        raise ValueError(f"unknown ESI group {group!r}")
    return group


def _bucket_size(size: Any) -> tuple[int, float] | None:
    """Read a bucket size given as (limit, window seconds), or None for no bucket."""
    if size is None:
        return None
    limit, window = size
    if int(limit) < ESI_SUCCESS_COST or float(window) <= 0:
        raise ValueError(f"a bucket needs at least {ESI_SUCCESS_COST} tokens and a window")
    return int(limit), float(window)


def _esi_not_found(request: Request) -> Response:
    return Response.json(404, {"error": "Not found"})


def _method_not_allowed(request: Request) -> Response:
    return Response.json(405, {"error": "Method not allowed"})


def _esi_cost(status: int) -> int:
    """Return the tokens an answer costs in its ESI rate-limit group."""
    if status < 300:
        return 2
    if status < 400:
        return 1
    if status < 500:
        return 5
    return 0


def _too_many_requests(retry_after: int) -> Response:
    body = b"<html><body><h1>429 Too Many Requests</h1></body></html>"
    return Response(429, body, HTML_TYPE, {"Retry-After": str(retry_after)})


def _truncate(body: bytes) -> bytes:
    return body[: max(1, len(body) // 2)]


def _sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that keeps quiet about clients hanging up."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    upstream: FakeUpstream

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore broken connections (clients time out on held answers on purpose)."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP/1.1 keep-alive requests into Request objects for FakeUpstream."""

    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 120  # seconds an idle keep-alive connection may stay open
    # Headers and body go out in separate writes; with Nagle on, small answers wait ~40 ms
    # for the client's delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        """Serve a GET."""
        self._serve()

    def do_POST(self) -> None:
        """Serve a POST."""
        self._serve()

    def do_PUT(self) -> None:
        """Serve a PUT (answered 405 or 404 by the emulation)."""
        self._serve()

    def do_DELETE(self) -> None:
        """Serve a DELETE (answered 405 or 404 by the emulation)."""
        self._serve()

    def _serve(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(self.command, split.path, split.query, headers, body)
        response = self.server.upstream.handle(request)
        _sleep(response.hold)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.status == 304:
            self.end_headers()
            return
        self.send_header("Content-Type", response.content_type)
        if response.stream is None:
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in response.stream:
            if chunk:
                self.wfile.write(b"%x\r\n" % len(chunk))
                self.wfile.write(chunk)
                self.wfile.write(b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: Any) -> None:
        """Keep test output clean: no access log."""


__all__ = [
    "DEFAULT_ESI_BUCKETS",
    "FakeConfig",
    "FakeUpstream",
    "Request",
    "Response",
    "parse_zkb_path",
    "parse_zkb_stats_path",
]
