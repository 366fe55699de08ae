"""The zKillboard API client: one session, one timeout, the User-Agent, the shared rate.

Filters are path segments ending with "/", never a query string or a disabled modifier.
zKillboard answers errors as HTTP 200 with `{"error": ...}` (permanent), 429 when over the
rate (wait as long as it says), and a redirect to /api/blocked.json once a client has made
too many errors (stop). Every request first takes a slot of the deployment-wide limiter.
Its errors are the kinds of `upstream.errors`, under zKillboard's names.

Statistics (`stats/{filter}/{id}/`) tell in one request how many killmails a target has and
how they spread over months; they are read liberally (a missing or odd count is 0, an odd
month is skipped), since they only size a plan.

A page item's hash is passed on only when it is 40 lowercase hex digits, else as "", so one
bad item cannot fail its whole page forever: the caller records it if it came without a body.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests

from upstream.errors import Blocked, Rejected, Unavailable, UpstreamError
from upstream.esi import is_killmail_hash
from upstream.http import PacedClient

logger = logging.getLogger(__name__)

# Seconds to connect and to wait for an answer; zKillboard pages are cached, so answers are fast.
TIMEOUT = (5.0, 30.0)
# Seconds to wait when a 429 comes without a usable Retry-After.
DEFAULT_RETRY_AFTER = 10.0
LIMIT_NAME = "zkillboard"
# Target types (as jobs name them) -> zKillboard's filter segments.
FILTERS = {
    "character": "characterID",
    "corporation": "corporationID",
    "alliance": "allianceID",
    "ship_type": "shipTypeID",
    "solar_system": "solarSystemID",
    "region": "regionID",
}


class ZkillboardError(UpstreamError):
    """Any failure talking to zKillboard."""


class ZkillboardUnavailable(ZkillboardError, Unavailable):
    """A transient failure (network, 5xx, a broken body): retry with backoff."""


class ZkillboardRejected(ZkillboardError, Rejected):
    """zKillboard answered `{"error": ...}`: permanent for this request, never retried."""


class ZkillboardBlocked(ZkillboardError, Blocked):
    """zKillboard redirected to blocked.json: this IP made too many errors; stop."""


@dataclass(frozen=True)
class PageItem:
    """One killmail of a page: its id and zkb, and its ESI body when the page carries it.

    `killmail_hash` is "" when zkb's hash is not 40 lowercase hex digits; `zkb` keeps it as is.
    """

    killmail_id: int
    killmail_hash: str
    zkb: dict[str, Any]
    body: dict[str, Any] | None

    @property
    def record(self) -> dict[str, Any]:
        """The body plus zkb, as ingest takes it (only when the body is there)."""
        assert self.body is not None
        return {**self.body, "zkb": self.zkb}


@dataclass(frozen=True)
class TargetStats:
    """A target's zKillboard statistics: killmails destroyed and lost, and per month."""

    destroyed: int
    lost: int
    months: dict[tuple[int, int], int]  # (year, month) -> shipsDestroyed + shipsLost

    @property
    def total(self) -> int:
        """Killmails destroyed plus lost."""
        return self.destroyed + self.lost


def target_filter(target_type: str) -> str:
    """zKillboard's filter segment for a target type, like "characterID" for "character"."""
    try:
        return FILTERS[target_type]
    except KeyError:
        raise ValueError(f"unknown zKillboard target type {target_type!r}") from None


def page_path(target_type: str, target_id: int, page: int, year: int = 0, month: int = 0) -> str:
    """The API path of one page, e.g. `characterID/90/year/2019/month/5/page/2/`."""
    path = f"{target_filter(target_type)}/{target_id}/"
    if year:
        path += f"year/{year}/month/{month}/"
    return path + f"page/{page}/"


def stats_path(target_type: str, target_id: int) -> str:
    """The API path of a target's statistics, e.g. `stats/characterID/90/`."""
    return f"stats/{target_filter(target_type)}/{target_id}/"


def parse_stats(data: Any, path: str = "stats") -> TargetStats:
    """Read a statistics answer liberally: odd counts are 0, odd months are skipped.

    `[]` and `null` (what an unknown entity may get) are no statistics; any other answer that
    is not an object is `ZkillboardUnavailable`.
    """
    if data is None or data == []:
        return TargetStats(0, 0, {})
    if not isinstance(data, dict):
        raise ZkillboardUnavailable(f"{path}: expected an object, got {type(data).__name__}")
    months: dict[tuple[int, int], int] = {}
    raw_months = data.get("months")
    for key, month in raw_months.items() if isinstance(raw_months, dict) else ():
        when = _month_key(key)
        if when is None or not isinstance(month, dict):
            logger.debug("Skipped statistics month %.20r", key)
            continue
        months[when] = _count(month, "shipsDestroyed") + _count(month, "shipsLost")
    return TargetStats(_count(data, "shipsDestroyed"), _count(data, "shipsLost"), months)


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    return value if type(value) is int and value >= 0 else 0


def _month_key(key: Any) -> tuple[int, int] | None:
    """(year, month) of a "YYYYMM" key, or None."""
    if not (isinstance(key, str) and len(key) == 6 and key.isascii() and key.isdigit()):
        return None
    year, month = int(key[:4]), int(key[4:])
    return (year, month) if 1 <= month <= 12 else None


def _item(raw: Any) -> PageItem:
    if not isinstance(raw, dict):
        raise ZkillboardUnavailable(f"page item is not an object: {raw!r:.60}")
    zkb = raw.get("zkb")
    killmail_id = raw.get("killmail_id")
    if type(killmail_id) is not int or not isinstance(zkb, dict):
        raise ZkillboardUnavailable(f"page item lacks killmail_id or zkb: {raw!r:.80}")
    killmail_hash = zkb.get("hash")
    if not is_killmail_hash(killmail_hash):
        killmail_hash = ""
    body = {key: value for key, value in raw.items() if key != "zkb"}
    # Pages before 2026-06-27 hold only {"killmail_id", "zkb"}: the body comes from ESI.
    return PageItem(killmail_id, killmail_hash, zkb, body if len(body) > 1 else None)


class ZkillboardClient(PacedClient):
    """Fetches pages of zKillboard's API within the deployment-wide request rate."""

    LIMIT_NAME = LIMIT_NAME
    TIMEOUT = TIMEOUT
    DEFAULT_RETRY_AFTER = DEFAULT_RETRY_AFTER

    def fetch_page(
        self, target_type: str, target_id: int, page: int, year: int = 0, month: int = 0
    ) -> list[PageItem]:
        """One page of killmails, newest first; fewer than 200 items means the last page."""
        path = page_path(target_type, target_id, page, year, month)
        data = self._get(path)
        if not isinstance(data, list):
            raise ZkillboardUnavailable(f"{path}: expected a list, got {type(data).__name__}")
        return [_item(raw) for raw in data]

    def stats(self, target_type: str, target_id: int) -> TargetStats:
        """A target's statistics: killmails destroyed and lost, in total and per month.

        An unknown id has zeros and no months.
        """
        path = stats_path(target_type, target_id)
        return parse_stats(self._get(path), path)

    def _get(self, path: str) -> Any:
        """The decoded JSON answer of a path, after a slot of the shared rate."""
        self.take_slot()
        try:
            response = self.session.get(self.base_url + path, allow_redirects=False)
        except requests.RequestException as exc:
            raise ZkillboardUnavailable(f"{path}: {exc}") from exc
        return self._parse(path, response)

    def _parse(self, path: str, response: requests.Response) -> Any:
        if response.is_redirect:
            location = response.headers.get("Location", "")
            if "blocked" in location:
                raise ZkillboardBlocked(
                    "zKillboard has blocked this IP for too many errors (redirect to "
                    f"{location}); wait before any new backfill"
                )
            raise ZkillboardUnavailable(f"{path}: unexpected redirect to {location}")
        if response.status_code == 429:
            raise self.too_many_requests(response, "zKillboard")
        if response.status_code != 200:
            raise ZkillboardUnavailable(f"{path}: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise ZkillboardUnavailable(f"{path}: the answer is not JSON") from exc
        if isinstance(data, dict) and "error" in data:
            raise ZkillboardRejected(f"{path}: zKillboard says {data['error']!r}")
        return data
