"""The R2Z2 client (zKillboard's static host): one session, one timeout, the shared rate.

Day dumps live under `history/`: `totals.json` (killmails per UTC day), `YYYYMMDD.json` (the
day's ids and hashes) and, since 2026-07, `raw/YYYYMMDD.json` (the day's ESI bodies, tens of
MB: streamed, never loaded whole). A 404 means "not there": the current day is not dumped
yet, and a day without a raw dump takes its bodies from ESI. R2Z2 allows 15 requests a
second per IP; every request first takes a slot of the deployment-wide limiter, and a 429
blocks every process for the capped Retry-After.

The live feed lives under `ephemeral/`: `sequence.json` (`{"sequence": N}`, a recent
position, updated about every 51 killmails) and `{N}.json` (one package: the killmail's id,
hash, ESI body, zkb, upload time). A 404 there means "not yet" (or gone: files live about a
day); R2Z2 asks for at least 6 seconds before the same N is asked again, which the caller
keeps (`live.follower`).

The parsing is liberal where one bad entry must not fail a whole day: entries that are not
what they should be are skipped and logged; the caller checks the hashes it keeps. A live
package missing its id or hash is still returned whole (`LivePackage.raw`), so ingest can
quarantine it rather than lose it; only an answer that is no JSON object is an error.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import IO, Any

import requests
import urllib3

from upstream.errors import Rejected, Unavailable, UpstreamError
from upstream.http import PacedClient

logger = logging.getLogger(__name__)

# Seconds to connect and to wait for each read; a raw day streams for longer than this.
TIMEOUT = (5.0, 60.0)
# Seconds to wait when a 429 comes without a usable Retry-After.
DEFAULT_RETRY_AFTER = 10.0
LIMIT_NAME = "r2z2"


class R2z2Error(UpstreamError):
    """Any failure talking to R2Z2."""


class R2z2Unavailable(R2z2Error, Unavailable):
    """A transient failure (network, 5xx, an answer that is not JSON): retry with backoff."""


class R2z2Rejected(R2z2Error, Rejected):
    """A 4xx other than 404 and 429: permanent for this request, never retried."""


@dataclass(frozen=True)
class LivePackage:
    """One package of the live feed, as liberal as it came.

    `killmail_id`, `hash` and `uploaded_at` are None when missing or out of shape; `esi` and
    `zkb` are whatever the package held under those keys (None when absent). `raw` is the
    whole package, which is what ingest reads and quarantines if it breaks meaning.
    """

    sequence: int
    killmail_id: int | None
    hash: str | None
    esi: Any
    zkb: Any
    uploaded_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)


def parse_sequence(data: Any) -> int:
    """The position in `{"sequence": N}`; `R2z2Unavailable` for anything else."""
    value = data.get("sequence") if isinstance(data, dict) else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is not int or value < 0:
        raise R2z2Unavailable(f"ephemeral/sequence.json: no sequence in {str(data)[:80]!r}")
    return value


def parse_package(sequence: int, data: Any) -> LivePackage:
    """A live package from its decoded JSON; `R2z2Unavailable` if it is not an object."""
    if not isinstance(data, dict):
        raise R2z2Unavailable(
            f"ephemeral/{sequence}.json: expected an object, got {type(data).__name__}"
        )
    killmail_id = data.get("killmail_id")
    killmail_hash = data.get("hash")
    return LivePackage(
        sequence=sequence,
        killmail_id=killmail_id if type(killmail_id) is int and killmail_id > 0 else None,
        hash=killmail_hash if isinstance(killmail_hash, str) else None,
        esi=data.get("esi"),
        zkb=data.get("zkb"),
        uploaded_at=_unix_time(data.get("uploaded_at")),
        raw=data,
    )


def _unix_time(value: Any) -> datetime | None:
    """Unix seconds as an aware UTC datetime; None when missing or not a sane number."""
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def day_name(day: date) -> str:
    """A day's file name in the dumps, like `20260715.json`."""
    return f"{day:%Y%m%d}.json"


def parse_totals(data: Any) -> dict[date, int]:
    """`{"YYYYMMDD": count}` as {day: count}, ascending; bad entries are skipped (logged)."""
    if not isinstance(data, dict):
        raise R2z2Unavailable(f"totals.json: expected an object, got {type(data).__name__}")
    totals: dict[date, int] = {}
    skipped = []
    for key, count in data.items():
        day = _day(key)
        if day is None or type(count) is not int or count < 0:
            skipped.append(key)
            continue
        totals[day] = count
    if skipped:
        logger.warning("Skipped %d bad totals.json entries, like %.40r", len(skipped), skipped[0])
    return dict(sorted(totals.items()))


def parse_day(day: date, data: Any) -> dict[int, str]:
    """`{"<killmail_id>": "<hash>"}` as {id: hash}, ids ascending; bad entries are skipped."""
    if isinstance(data, list) and not data:
        return {}  # an empty object may come as []
    if not isinstance(data, dict):
        raise R2z2Unavailable(f"{day_name(day)}: expected an object, got {type(data).__name__}")
    hashes: dict[int, str] = {}
    skipped = []
    for key, killmail_hash in data.items():
        if not (key.isascii() and key.isdigit()) or not isinstance(killmail_hash, str):
            skipped.append(key)
            continue
        hashes[int(key)] = killmail_hash
    if skipped:
        logger.warning(
            "Skipped %d bad entries of day %s, like %.40r", len(skipped), day, skipped[0]
        )
    return dict(sorted(hashes.items()))


def _day(key: str) -> date | None:
    if len(key) != 8 or not (key.isascii() and key.isdigit()):
        return None
    try:
        return datetime.strptime(key, "%Y%m%d").date()
    except ValueError:
        return None


class R2z2Client(PacedClient):
    """Reads R2Z2's day dumps and live feed within the deployment-wide request rate."""

    LIMIT_NAME = LIMIT_NAME
    TIMEOUT = TIMEOUT
    DEFAULT_RETRY_AFTER = DEFAULT_RETRY_AFTER

    def sequence(self) -> int:
        """The live feed's published position (`ephemeral/sequence.json`)."""
        data = self._get_json("ephemeral/sequence.json")
        if data is None:
            raise R2z2Unavailable("ephemeral/sequence.json: HTTP 404")
        return parse_sequence(data)

    def package(self, sequence: int) -> LivePackage | None:
        """The live package at `sequence`; None on 404 (not yet, gone, or never there)."""
        data = self._get_json(f"ephemeral/{sequence}.json")
        return None if data is None else parse_package(sequence, data)

    def totals(self) -> dict[date, int]:
        """Killmails per UTC day, for every dumped day (the current day is not), ascending."""
        data = self._get_json("history/totals.json")
        if data is None:
            raise R2z2Unavailable("history/totals.json: HTTP 404")
        return parse_totals(data)

    def day(self, day: date) -> dict[int, str] | None:
        """One UTC day's {killmail_id: hash}, ids ascending; None when it is not dumped yet."""
        data = self._get_json("history/" + day_name(day))
        return None if data is None else parse_day(day, data)

    @contextlib.contextmanager
    def raw_day(self, day: date) -> Iterator[IO[bytes] | None]:
        """One UTC day's `{"<killmail_id>": <ESI body>}` as a decompressed binary stream.

        Yields None when the day has no raw dump (404). The answer is read as the caller
        reads the stream, never whole, and the connection is closed on leaving the block. A
        connection that breaks while the block reads raises `R2z2Unavailable`.
        """
        path = "history/raw/" + day_name(day)
        response = self._send(path, stream=True)
        try:
            if not self._checked(path, response):
                yield None
                return
            if "html" in response.headers.get("Content-Type", "").lower():
                raise R2z2Unavailable(f"{path}: the answer is an HTML page, not JSON")
            response.raw.decode_content = True
            # urllib3 closes a body read to its end; the reader above it may look once more.
            response.raw.auto_close = False
            yield response.raw
        except (urllib3.exceptions.HTTPError, requests.RequestException) as exc:
            raise R2z2Unavailable(f"{path}: {exc}") from exc
        finally:
            response.close()

    def _get_json(self, path: str) -> Any:
        """The decoded JSON of a path, or None on 404."""
        response = self._send(path)
        if not self._checked(path, response):
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise R2z2Unavailable(f"{path}: the answer is not JSON") from exc

    def _send(self, path: str, *, stream: bool = False) -> requests.Response:
        self.take_slot()
        try:
            return self.session.get(self.base_url + path, stream=stream)
        except requests.RequestException as exc:
            raise R2z2Unavailable(f"{path}: {exc}") from exc

    def _checked(self, path: str, response: requests.Response) -> bool:
        """True for a 200, False for a 404; raise for anything else (the response closed)."""
        status = response.status_code
        if status == 200:
            return True
        response.close()
        if status == 404:
            return False
        if status == 429:
            raise self.too_many_requests(response, "R2Z2")
        if 400 <= status < 500:
            raise R2z2Rejected(f"{path}: HTTP {status}", status)
        raise R2z2Unavailable(f"{path}: HTTP {status}", status)
