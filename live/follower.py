"""Follow R2Z2's live feed: read packages N, N+1, ... and store each one, once, as it comes.

Rules (R2Z2's and ours):
- The first start begins at the published position (`sequence.json`); afterwards the
  follower resumes at `FollowerState.sequence`. Each package is stored and the cursor moved
  to N+1 in one transaction (a compare-and-set on the cursor), so a kill at any moment costs
  at most one refetch; ingest is idempotent, so nothing is stored twice.
- Files are read ahead as far as they should exist: up to the published head, and beyond it
  one at a time when the feed's own pace says the next one is there (its upload time, by
  the recent packages' spacing, a second ago: `uploaded_at` counts whole seconds), or when
  the head has stood still for LIVE_PROBE_AFTER_SECONDS. Caught up, the follower polls
  `sequence.json` every LIVE_POLL_SECONDS. A sequence that answered 404 is never asked
  again before LIVE_NOT_FOUND_WAIT_SECONDS (R2Z2 asks for 6), so probing early is costly:
  the pace keeps it rare.
- A 404 below the published head: the file was never there (a hole: the next one is, and
  it is skipped) or has expired (the follower was down longer than R2Z2 keeps files). For
  the latter, a binary search finds the first file still there, the stretch before it
  becomes a `backfill.models.CoverageGap` for the coverage ledger, and reading goes on there.
- A killmail processed again reappears under a new sequence: its zkb is refreshed. A
  package that breaks meaning is quarantined by ingest, never dropped.
- Errors never end the loop: network errors, 5xx and garbage back off (capped at
  LIVE_MAX_BACKOFF_SECONDS), a 429 waits as long as R2Z2 says, a lost database connection
  is closed and retried. `stop` (SIGTERM, SIGINT) ends it after the current package.

Enrichment follows every committed batch through `killboard.signals.killmails_stored`,
exactly as for backfills (same queues, same limits).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from django.utils import timezone

from backfill.models import CoverageGap
from killboard.ingest import ingest_killmails, update_zkb
from live.models import FollowerState
from upstream.errors import RateLimited, UpstreamError
from upstream.r2z2 import LivePackage, R2z2Client

logger = logging.getLogger(__name__)

FEED = "r2z2"
# The window of the killmails-per-minute rate (seconds).
RATE_WINDOW = 60.0
# The first wait after an error (seconds); doubled with each error in a row, up to the cap.
FIRST_BACKOFF = 0.5
# Seconds after its expected upload that the next package beyond the head is asked for:
# `uploaded_at` counts whole seconds, so an expectation may be up to one second early.
PACE_MARGIN = 1.0
# Weight of the newest spacing in the feed's pace (an exponential moving average).
PACE_WEIGHT = 0.2
# The shortest sleep of the loop (seconds), so a clock at its edge cannot spin it.
MIN_SLEEP = 0.02
DATABASE_ERRORS = (OperationalError, InterfaceError)


class Overtaken(Exception):
    """The cursor moved under this follower: another follower runs on the same feed."""


@dataclass
class RunTotals:
    """What one run of the follower did (the state row keeps the totals of all runs)."""

    read: int = 0
    stored: int = 0
    already_stored: int = 0
    zkb_refreshed: int = 0
    rejected: int = 0
    holes: int = 0
    gaps: int = 0
    errors: int = 0
    last_sequence: int | None = None
    lag_seconds: float | None = None

    def summary(self) -> str:
        """One line for humans."""
        lag = "unknown" if self.lag_seconds is None else f"{self.lag_seconds:.1f}s"
        return (
            f"Read {self.read} package(s): {self.stored} stored, {self.already_stored} "
            f"already stored, {self.zkb_refreshed} zkb refreshed, {self.rejected} rejected, "
            f"{self.holes} hole(s) skipped, {self.gaps} gap(s), {self.errors} error(s); "
            f"last sequence {self.last_sequence if self.last_sequence is not None else 'none'}"
            f", lag {lag}."
        )


@dataclass(frozen=True)
class Gap:
    """Sequences first..last whose files expired, and the package read after them."""

    first: int
    last: int
    after: LivePackage | None


class Follower:
    """The loop over one feed; `run()` until a limit is reached or `stop` is set."""

    def __init__(self, client: R2z2Client, stop: threading.Event | None = None) -> None:
        self.client = client
        self.stop = stop or threading.Event()
        self.poll_seconds = settings.LIVE_POLL_SECONDS
        self.probe_after = settings.LIVE_PROBE_AFTER_SECONDS
        self.not_found_wait = settings.LIVE_NOT_FOUND_WAIT_SECONDS
        self.max_backoff = settings.LIVE_MAX_BACKOFF_SECONDS
        self.totals = RunTotals()
        self.state: FollowerState | None = None
        self.head: int | None = None
        self.head_moved_at = 0.0
        self.polled_at = -float("inf")
        # Sequence -> monotonic time of its last 404: R2Z2's 6-second rule.
        self.not_found: dict[int, float] = {}
        # Numbers below the head a gap search found missing (holes among files still there).
        self.gone: set[int] = set()
        self.recent: deque[float] = deque()
        # Seconds between the feed's packages, from their upload times (None: not known yet).
        self.pace: float | None = None
        self.failures = 0
        self.started = False
        self.deadline: float | None = None
        self.max_killmails: int | None = None

    # -- the loop --------------------------------------------------------------------------

    def run(self, max_killmails: int | None = None, seconds: float | None = None) -> RunTotals:
        """Follow the feed until `max_killmails` packages were read, `seconds` passed or
        `stop` is set; return what this run did."""
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.max_killmails = max_killmails
        self.totals = RunTotals()
        while not self._done():
            try:
                self._step()
                self.failures = 0
            except RateLimited as exc:
                self._failed(exc)
                self._sleep(exc.retry_after)
            except (UpstreamError, Overtaken) as exc:
                self._failed(exc)
                self._sleep(self._backoff())
            except DATABASE_ERRORS as exc:
                self.state = None  # read again from the database once it is back
                connections.close_all()
                self._failed(exc)  # on a new connection, if the database is back already
                self._sleep(self._backoff())
        return self.totals

    def _done(self) -> bool:
        if self.stop.is_set():
            return True
        if self.max_killmails is not None and self.totals.read >= self.max_killmails:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _step(self) -> None:
        """One move: poll the head, read the next package, or wait for one of those."""
        state = self._state()
        sequence = state.sequence
        if self.head is None or sequence > self.head:
            if time.monotonic() - self.polled_at >= self.poll_seconds:
                self._poll()
                if sequence <= self.head:
                    return
            if self._probe_due(sequence):
                self._read(sequence, probe=True)
            else:
                self._sleep(self._next_event(sequence) - time.monotonic())
            return
        if sequence in self.gone:
            # A search found it missing moments ago: that answer stands, unasked again.
            self.gone.discard(sequence)
            self._missing(sequence)
            return
        now = time.monotonic()
        wait = self._asked_again_at(sequence) - now
        if wait > 0:
            # Keep the head fresh meanwhile: once it has moved on, a number still missing
            # is a hole to skip rather than a file that lags its announcement.
            if now - self.polled_at >= self.poll_seconds:
                self._poll()
            else:
                self._sleep(min(wait, self.polled_at + self.poll_seconds - now))
            return
        self._read(sequence, probe=False)

    def _state(self) -> FollowerState:
        """The feed's row, created and placed at the published head on the first start."""
        if self.state is None:
            state, _ = FollowerState.objects.get_or_create(name=FEED)
            if state.sequence is None:
                self._poll()
                state.sequence = self.head
                logger.info("Live follower starts at the published sequence %s", self.head)
            if not self.started:
                state.started_at = timezone.now()
                self.started = True
                self._remember_not_found(state)
            state.save()
            self.state = state
        return self.state

    def _remember_not_found(self, state: FollowerState) -> None:
        """Keep R2Z2's wait for the last 404 at the head across a restart."""
        if state.not_found_sequence is None or state.not_found_at is None:
            return
        age = (timezone.now() - state.not_found_at).total_seconds()
        if 0 <= age < self.not_found_wait:
            self.not_found[state.not_found_sequence] = time.monotonic() - age

    # -- the head ----------------------------------------------------------------------------

    def _poll(self) -> None:
        """Read the published head, and beat."""
        head = self.client.sequence()
        now = time.monotonic()
        self.polled_at = now
        if self.head is None or head > self.head:
            self.head, self.head_moved_at = head, now
        if self.state is not None:
            self._beat(head_sequence=self.head)

    def _probe_due(self, sequence: int) -> bool:
        """Whether to ask beyond the head: R2Z2's wait for a sequence that answered 404 has
        passed, and the feed's pace says the package is there or the head stood still long
        enough."""
        return time.monotonic() >= self._probe_at(sequence)

    def _probe_at(self, sequence: int) -> float:
        """The monotonic time from which `sequence`, beyond the head, may be probed."""
        probe_at = self.head_moved_at + self.probe_after
        expected = self._expected_upload(sequence)
        if expected is not None:
            probe_at = min(probe_at, time.monotonic() + expected + PACE_MARGIN - time.time())
        return max(probe_at, self._asked_again_at(sequence))

    def _expected_upload(self, sequence: int) -> float | None:
        """When `sequence` should have been uploaded (unix seconds), by the feed's pace."""
        state = self.state
        if self.pace is None or state is None or state.last_uploaded_at is None:
            return None
        ahead = sequence - (state.last_sequence or sequence)
        return state.last_uploaded_at.timestamp() + ahead * self.pace

    def _asked_again_at(self, sequence: int) -> float:
        """The monotonic time from which `sequence` may be asked (again)."""
        return self.not_found.get(sequence, -float("inf")) + self.not_found_wait

    def _next_event(self, sequence: int) -> float:
        """When the caught-up loop has something to do: the next poll or the next probe."""
        return min(self.polled_at + self.poll_seconds, self._probe_at(sequence))

    # -- reading -----------------------------------------------------------------------------

    def _read(self, sequence: int, *, probe: bool) -> None:
        """Ask for one package; store it, or make sense of its absence."""
        package = self.client.package(sequence)
        if package is not None:
            self._store(package, expected=sequence)
            return
        asked_before = sequence in self.not_found
        self._not_found(sequence)
        # Not published yet, as far as the head tells (at the head itself a file may lag its
        # announcement); missing on its second ask while the next one is there: a hole.
        not_yet = probe or self.head is None or sequence >= self.head
        if not_yet and asked_before and self._skip_hole(sequence):
            return
        if not_yet:
            self._count_not_yet(sequence)
            return
        self._missing(sequence)

    def _skip_hole(self, sequence: int) -> bool:
        """Beyond the head, a number still missing on its second ask while the next one is
        there is a hole: skip it rather than wait for sequence.json to move past it."""
        following = self._fetch(sequence + 1)
        if following is None:
            return False
        logger.warning("Live sequence %s was never published (a hole): skipped", sequence)
        self._store(following, expected=sequence, holes=1)
        return True

    def _fetch(self, sequence: int) -> LivePackage | None:
        """The package at `sequence`, or None on 404 (noted). One that answered 404 moments
        ago counts as missing without asking: R2Z2's 6-second rule."""
        if time.monotonic() < self._asked_again_at(sequence):
            return None
        package = self.client.package(sequence)
        if package is None:
            self._not_found(sequence)
        return package

    def _not_found(self, sequence: int) -> None:
        now = time.monotonic()
        self.not_found[sequence] = now
        if len(self.not_found) > 1000:
            # Only the last few seconds matter for R2Z2's rule.
            cutoff = now - self.not_found_wait
            self.not_found = {n: at for n, at in self.not_found.items() if at >= cutoff}
            self.gone &= self.not_found.keys()

    def _count_not_yet(self, sequence: int) -> None:
        logger.debug("Live sequence %s: not there yet", sequence)
        state = self._state()
        changes = {
            "not_found_waits": state.not_found_waits + 1,
            "not_found_sequence": sequence,
            "not_found_at": timezone.now(),
        }
        with transaction.atomic():
            self._advance(state, sequence, changes)

    def _missing(self, sequence: int) -> None:
        """A 404 below the published head: a hole to skip, or an expired stretch."""
        if self._skip_hole(sequence):
            return
        gap = self._search_gap(sequence)
        logger.warning(
            "Live sequences %s..%s expired before they were read: a coverage gap",
            gap.first,
            gap.last,
        )
        if gap.after is not None:
            self._store(gap.after, expected=sequence, gap=gap)
        else:
            self._skip_gap(gap)

    def _search_gap(self, first: int) -> Gap:
        """Binary search for the first file still there after `first` and `first + 1`, both
        gone: files expire oldest first, so the gone ones come before the others.

        A missing middle may be a hole among files still there: its next number is asked
        too, so one hole cannot send the search past files that are there.
        """
        low, high, found = first + 1, self.head + 1, None  # low is gone; high is "there"
        while high - low > 1:
            middle = (low + high) // 2
            package = self._fetch(middle)
            if package is None:
                self.gone.add(middle)
                if middle + 1 < high:
                    middle += 1  # the next number decides
                    package = self._fetch(middle)
                    if package is None:
                        self.gone.add(middle)
            if package is None:
                low = middle
            else:
                high, found = middle, package
        return Gap(first, high - 1, found)

    # -- writing -----------------------------------------------------------------------------

    def _store(
        self, package: LivePackage, *, expected: int, holes: int = 0, gap: Gap | None = None
    ) -> None:
        """Store a package and move the cursor past it, in one transaction."""
        state = self._state()
        source = f"R2Z2 live sequence {package.sequence}"
        with transaction.atomic():
            if gap is not None:
                self._record_gap(state, gap, package.uploaded_at)
            result = ingest_killmails([package.raw], source=source)
            refreshed = 0
            if result.existing_ids and isinstance(package.zkb, dict):
                refreshed = update_zkb(dict.fromkeys(result.existing_ids, package.zkb))
            lag = self._lag(package.uploaded_at)
            self._learn_pace(state, package)
            changes = {
                "sequence": package.sequence + 1,
                "last_sequence": package.sequence,
                "last_killmail_id": package.killmail_id,
                "last_uploaded_at": package.uploaded_at or state.last_uploaded_at,
                "lag_seconds": lag,
                "killmails_per_minute": self._rate(add=True),
                "packages_read": state.packages_read + 1,
                "stored": state.stored + result.new,
                "already_stored": state.already_stored + result.existing,
                "zkb_refreshed": state.zkb_refreshed + refreshed,
                "rejected": state.rejected + len(result.rejected),
                "holes": state.holes + holes,
                "gaps": state.gaps + (gap is not None),
            }
            self._advance(state, expected, changes)
        totals = self.totals
        totals.read += 1
        totals.stored += result.new
        totals.already_stored += result.existing
        totals.zkb_refreshed += refreshed
        totals.rejected += len(result.rejected)
        totals.holes += holes
        totals.gaps += gap is not None
        totals.last_sequence, totals.lag_seconds = package.sequence, lag

    def _skip_gap(self, gap: Gap) -> None:
        """Every file up to the head expired: note the gap and go on after the head."""
        state = self._state()
        with transaction.atomic():
            self._record_gap(state, gap, None)
            changes = {"sequence": gap.last + 1, "gaps": state.gaps + 1}
            self._advance(state, gap.first, changes)
        self.totals.gaps += 1

    def _record_gap(self, state: FollowerState, gap: Gap, end: datetime | None) -> None:
        now = timezone.now()
        CoverageGap.objects.create(
            first_sequence=gap.first,
            last_sequence=gap.last,
            start=state.last_uploaded_at or now,
            end=end or now,
        )

    def _advance(self, state: FollowerState, expected: int, changes: dict[str, Any]) -> None:
        """Write `changes` to the row if its cursor is still at `expected` (inside the
        caller's transaction), then to the instance; `Overtaken` rolls the caller back."""
        changes = {**changes, "heartbeat_at": timezone.now()}
        updated = FollowerState.objects.filter(pk=state.pk, sequence=expected).update(**changes)
        if not updated:
            self.state = None
            raise Overtaken(f"the live cursor left sequence {expected}: another follower runs")
        for name, value in changes.items():
            setattr(state, name, value)

    def _beat(self, **changes: Any) -> None:
        """Mark the follower alive (outside any package's transaction)."""
        changes = {
            **changes,
            "heartbeat_at": timezone.now(),
            "killmails_per_minute": self._rate(),
        }
        FollowerState.objects.filter(pk=FEED).update(**changes)
        if self.state is not None:
            for name, value in changes.items():
                setattr(self.state, name, value)

    # -- health ------------------------------------------------------------------------------

    def _lag(self, uploaded_at: datetime | None) -> float | None:
        if uploaded_at is None:
            return self.state.lag_seconds if self.state else None
        return max(0.0, (timezone.now() - uploaded_at).total_seconds())

    def _learn_pace(self, state: FollowerState, package: LivePackage) -> None:
        """Fold the spacing between the last package and this one into the feed's pace."""
        last, uploaded = state.last_uploaded_at, package.uploaded_at
        if last is None or uploaded is None or state.last_sequence is None:
            return
        ahead = package.sequence - state.last_sequence
        if ahead <= 0:
            return
        spacing = max(0.0, (uploaded - last).total_seconds()) / ahead
        self.pace = (
            spacing if self.pace is None else (1 - PACE_WEIGHT) * self.pace + PACE_WEIGHT * spacing
        )

    def _rate(self, *, add: bool = False) -> float:
        """Packages read in the last RATE_WINDOW seconds, per minute."""
        now = time.monotonic()
        if add:
            self.recent.append(now)
        while self.recent and self.recent[0] < now - RATE_WINDOW:
            self.recent.popleft()
        return len(self.recent) * 60.0 / RATE_WINDOW

    def _failed(self, exc: Exception) -> None:
        """Log and record an error; the database being away too must not end the loop."""
        logger.warning("Live follower at sequence %s: %s", self._position(), exc)
        self.totals.errors += 1
        try:
            state = FollowerState.objects.filter(pk=FEED).first()
            if state is not None:
                self._beat(
                    last_error=str(exc)[:2000],
                    last_error_at=timezone.now(),
                    errors=state.errors + 1,
                )
        except DATABASE_ERRORS as db_exc:
            logger.warning("Live follower could not record its error: %s", db_exc)
            self.state = None
            connections.close_all()

    def _position(self) -> int | None:
        return self.state.sequence if self.state is not None else None

    def _backoff(self) -> float:
        """The wait after one more error in a row: doubling, capped, with jitter."""
        self.failures += 1
        ceiling = min(self.max_backoff, FIRST_BACKOFF * 2 ** min(self.failures - 1, 20))
        return random.uniform(ceiling / 2, ceiling)

    def _sleep(self, seconds: float) -> None:
        """Wait, but not past the deadline and not once asked to stop."""
        if self.deadline is not None:
            seconds = min(seconds, self.deadline - time.monotonic())
        if seconds > 0:
            self.stop.wait(max(seconds, MIN_SLEEP))
