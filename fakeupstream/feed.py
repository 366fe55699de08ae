"""R2Z2's live feed for the fake upstream: numbered packages, one killmail each.

Like the real ``ephemeral/`` files:
- a package is ``{"killmail_id", "hash", "esi", "zkb" (plus "attackerCount" and "href"),
  "uploaded_at", "sequence_id"}``, its JSON text built once when it is appended;
- ``sequence.json`` names the newest package as of its last update, updated at the first
  package and then every ``sequence_every`` packages, so it lags up to that many behind;
- a package 404s before it exists, once ``retention`` seconds have passed since its upload
  (or it was expired on purpose, standing in for a day of downtime), and forever when its
  number is a hole; a client must wait ``NOT_YET_WAIT_SECONDS`` before asking again for a
  number that got a 404;
- a killmail processed again reappears under a new number: same id, hash and body, changed
  zkb values; late arrivals carry a killmail_time 1 to 72 hours old.

Every appended killmail is registered in the World, so the day dumps show it once its day is
past. Ids stand for seconds, so a burst of n fresh killmails spreads over about n seconds back.
Packages come on demand (``append``) and, at ``rate`` a second, from the wall-clock time
elapsed since the last call (``grow``): no thread. The draws come from one random generator
seeded from the world seed and the fault seed, so the same calls give the same feed; ``clock``
is the seam tests replace to move time.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from .world import World

NOT_YET_WAIT_SECONDS = 6.0  # R2Z2: after a 404, wait at least this long before asking again
DEFAULT_FIRST_SEQUENCE = 96_600_000
DEFAULT_SEQUENCE_EVERY = 51  # packages between two updates of sequence.json
DEFAULT_RETENTION_SECONDS = 86_400.0  # files live about 24 hours
LATE_SECONDS = (3600 + 60, 72 * 3600 - 3600)  # late arrivals: 1 to 72 hours old, with margin
FRESH_SECONDS_MAX = 30  # a fresh killmail happened up to this long before its upload
VALUE_KEYS = ("fittedValue", "droppedValue", "destroyedValue", "totalValue", "totalDroppableValue")
ESI_KILLMAIL_URL = "https://esi.evetech.net/killmails/{id}/{hash}/"


@dataclass(frozen=True)
class FeedSettings:
    """How the feed grows; the server's ``live_*`` configuration fields."""

    first_sequence: int = DEFAULT_FIRST_SEQUENCE
    rate: float = 0.0  # killmails a second appended from elapsed time; 0: only on demand
    late_rate: float = 0.0  # share of new killmails that are 1 to 72 hours old
    reprocess_rate: float = 0.0  # share of packages that republish an earlier killmail
    hole_rate: float = 0.0  # share of sequence numbers skipped for good
    sequence_every: int = DEFAULT_SEQUENCE_EVERY
    retention: float = DEFAULT_RETENTION_SECONDS

    def check(self) -> None:
        """Raise ValueError for settings the feed cannot follow."""
        if self.rate < 0:
            raise ValueError("live_rate must be at least 0")
        for name in ("late_rate", "reprocess_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"live_{name} must be between 0 and 1")
        if not 0 <= self.hole_rate < 1:
            raise ValueError("live_hole_rate must be at least 0 and below 1")
        if self.sequence_every < 1:
            raise ValueError("live_sequence_every must be at least 1")
        if self.retention <= 0:
            raise ValueError("live_retention must be above 0")


@dataclass
class _Package:
    killmail_id: int
    uploaded: float  # clock seconds
    text: str | None  # None once expired on purpose (frees the memory)


class LiveFeed:
    """The packages of R2Z2's ``ephemeral/`` folder, and who fetched which (thread-safe)."""

    def __init__(
        self,
        world: World,
        seed: int,
        settings: FeedSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create an empty feed; its numbers start at ``settings.first_sequence``."""
        self.world = world
        self.clock = clock
        self.settings = settings or FeedSettings()
        self._lock = threading.Lock()
        self._seed = seed
        self._rng = random.Random(f"{world.seed}:{seed}:live")
        self._next = self.settings.first_sequence
        self._published = self.settings.first_sequence - 1
        self._expired_through = self.settings.first_sequence - 1
        self._packages: dict[int, _Package] = {}
        self._holes: list[int] = []
        self._fed: list[int] = []  # killmail ids, in the order first fed
        self._latest_zkb: dict[int, dict[str, Any]] = {}
        self._late: list[int] = []
        self._reprocessed: list[int] = []
        self._rate_since = clock()
        self._carry = 0.0
        self.reset_counts()
        self.reset_waits()

    # -- configuration -----------------------------------------------------------------------

    def check(self, settings: FeedSettings) -> None:
        """Raise ValueError if the feed cannot take these settings now."""
        settings.check()
        with self._lock:
            started = bool(self._packages or self._holes)
        if started and settings.first_sequence != self.settings.first_sequence:
            raise ValueError("live_first_sequence cannot change once packages were appended")

    def configure(self, settings: FeedSettings, seed: int) -> None:
        """Take new settings; what elapsed so far grows at the old rate, the new one from now."""
        self.check(settings)
        with self._lock:
            self._grow(self.clock())
            if not (self._packages or self._holes):
                self._next = settings.first_sequence
                self._published = self._expired_through = settings.first_sequence - 1
            self.settings = settings
            if seed != self._seed:
                self._seed = seed
                self._rng = random.Random(f"{self.world.seed}:{seed}:live")

    def reset_counts(self) -> None:
        """Forget how often each number was asked for."""
        with self._lock:
            self._fetches: Counter[int] = Counter()
            self._requests: Counter[int] = Counter()

    def reset_waits(self) -> None:
        """Forget the 404s answered, as if the 6-second waits had passed."""
        with self._lock:
            self._last_404: dict[int, float] = {}

    # -- growth ------------------------------------------------------------------------------

    def grow(self) -> None:
        """Append the packages due at ``rate`` since the last call."""
        with self._lock:
            self._grow(self.clock())

    def append(self, count: int, *, late_seconds: float | None = None) -> list[int]:
        """Append count packages now; return their sequence numbers.

        With late_seconds every new killmail is that old; otherwise ``late_rate`` decides.
        """
        if count < 0:
            raise ValueError("count must be at least 0")
        with self._lock:
            now = self.clock()
            self._grow(now)
            return [self._append_one(now, late_seconds) for _ in range(count)]

    def expire_through(self, sequence: int) -> None:
        """Expire every package numbered up to sequence at once (a day of downtime)."""
        with self._lock:
            self._grow(self.clock())
            self._expired_through = max(self._expired_through, sequence)
            for number, package in self._packages.items():
                if number <= sequence:
                    package.text = None

    def _grow(self, now: float) -> None:
        rate = self.settings.rate
        if rate <= 0:
            self._rate_since, self._carry = now, 0.0
            return
        due = max(0.0, now - self._rate_since) * rate + self._carry
        count = int(due)
        self._carry = due - count
        self._rate_since = now
        # Spread the uploads over the elapsed time, the newest now.
        for position in range(count):
            self._append_one(now - (count - 1 - position) / rate, None)

    def _append_one(self, now: float, late_seconds: float | None) -> int:
        rng = self._rng
        sequence = self._next
        while rng.random() < self.settings.hole_rate:
            self._holes.append(sequence)
            sequence += 1
        self._next = sequence + 1
        if self._fed and rng.random() < self.settings.reprocess_rate:
            killmail_id = rng.choice(self._fed)
            zkb = _reprocessed(self._latest_zkb[killmail_id], rng)
            self._reprocessed.append(sequence)
        else:
            killmail_id = self._new_killmail(now, late_seconds)
            zkb = self._first_zkb(killmail_id)
        self._latest_zkb[killmail_id] = zkb
        uploaded_at = int(now)
        text = self._package_text(killmail_id, zkb, uploaded_at, sequence)
        self._packages[sequence] = _Package(killmail_id, now, text)
        if (len(self._packages) - 1) % self.settings.sequence_every == 0:
            self._published = sequence
        return sequence

    def _new_killmail(self, now: float, late_seconds: float | None) -> int:
        rng = self._rng
        if late_seconds is None and rng.random() < self.settings.late_rate:
            late_seconds = rng.randint(*LATE_SECONDS)
        age = late_seconds if late_seconds is not None else rng.randint(0, FRESH_SECONDS_MAX)
        killmail_id = self.world.add_feed_killmail(datetime.fromtimestamp(now - age, UTC))
        self._fed.append(killmail_id)
        if late_seconds is not None:
            self._late.append(killmail_id)
        return killmail_id

    def _first_zkb(self, killmail_id: int) -> dict[str, Any]:
        """The zkb object of a first publication: the world's, plus what R2Z2 adds."""
        zkb = self.world.zkb(killmail_id)
        zkb["attackerCount"] = len(self.world.body(killmail_id)["attackers"])
        zkb["href"] = ESI_KILLMAIL_URL.format(id=killmail_id, hash=zkb["hash"])
        return zkb

    def _package_text(
        self, killmail_id: int, zkb: dict[str, Any], uploaded_at: int, sequence: int
    ) -> str:
        # The body is ESI's compact JSON text already: join texts, as R2Z2 stores them.
        return (
            f'{{"killmail_id":{killmail_id},"hash":"{self.world.killmail_hash(killmail_id)}",'
            f'"esi":{self.world.body_json(killmail_id)},'
            f'"zkb":{json.dumps(zkb, separators=(",", ":"))},'
            f'"uploaded_at":{uploaded_at},"sequence_id":{sequence}}}'
        )

    # -- answers -----------------------------------------------------------------------------

    def published(self) -> int:
        """Return what sequence.json says now (first_sequence - 1 before any package)."""
        with self._lock:
            return self._published

    def package(self, sequence: int) -> str | None:
        """Return a package's JSON text, or None for a 404 (remembered for the 6-second rule)."""
        with self._lock:
            now = self.clock()
            package = self._packages.get(sequence)
            if (
                package is None
                or package.text is None
                or sequence <= self._expired_through
                or now >= package.uploaded + self.settings.retention
            ):
                self._last_404[sequence] = now
                return None
            self._fetches[sequence] += 1
            return package.text

    def asked_too_soon(self, sequence: int) -> bool:
        """Tell whether a number got a 404 less than NOT_YET_WAIT_SECONDS ago."""
        with self._lock:
            answered = self._last_404.get(sequence)
            return answered is not None and self.clock() - answered < NOT_YET_WAIT_SECONDS

    def note_request(self, sequence: int) -> None:
        """Count one request for a number, whatever its answer."""
        with self._lock:
            self._requests[sequence] += 1

    def report(self) -> dict[str, Any]:
        """Return everything appended and fetched, as JSON-able data (see the server docs)."""
        with self._lock:
            packages = self._packages
            return {
                "first": self.settings.first_sequence,
                "newest": self._next - 1 if packages else self.settings.first_sequence - 1,
                "published": self._published,
                "holes": list(self._holes),
                "expired_through": self._expired_through,
                "packages": [[number, p.killmail_id] for number, p in packages.items()],
                # Upload times to the fraction of a second (the packages' are whole seconds).
                "uploaded": {str(number): p.uploaded for number, p in packages.items()},
                "latest_zkb": {str(k): zkb for k, zkb in self._latest_zkb.items()},
                "fetches": {str(number): n for number, n in self._fetches.items()},
                "requests": {str(number): n for number, n in self._requests.items()},
                "late": list(self._late),
                "reprocessed": list(self._reprocessed),
            }


def _reprocessed(zkb: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Return zkb as reprocessing changes it: other values, other points."""
    factor = rng.choice((rng.uniform(0.5, 0.95), rng.uniform(1.05, 1.5)))
    changed = dict(zkb)
    for key in VALUE_KEYS:
        if key in changed:
            changed[key] = round(changed[key] * factor, 2)
    changed["points"] = changed["points"] + rng.randint(1, 10)
    return changed


def settings_from(config: Any) -> FeedSettings:
    """Return the feed settings held in the server's ``live_*`` configuration fields."""
    return FeedSettings(**{f.name: getattr(config, f"live_{f.name}") for f in fields(FeedSettings)})


__all__ = ["NOT_YET_WAIT_SECONDS", "FeedSettings", "LiveFeed", "settings_from"]
