"""R2Z2's day dumps: the fake's routes and the R2Z2 client, over real HTTP on loopback.

The client takes its slots from the shared limiter (`killboard.ratelimit`, a database row).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests

from fakeupstream.server import FakeUpstream
from fakeupstream.world import World
from killboard import ratelimit
from upstream import clients
from upstream.errors import RateLimited
from upstream.r2z2 import (
    LIMIT_NAME,
    R2z2Client,
    R2z2Unavailable,
    parse_day,
    parse_totals,
)

pytestmark = pytest.mark.django_db

PILOT = 2117325769
CONTACT = "ops@example.com"
GOOD_HEADERS = {"User-Agent": f"killboard-backfill/0.1 (+contact: {CONTACT})"}


def today() -> date:
    return datetime.now(UTC).date()


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.fixture
def days(world: World) -> dict[str, date]:
    """Killmails 6 and 3 days ago and today; none on the days between."""
    named = {"first": today() - timedelta(days=6), "second": today() - timedelta(days=3)}
    world.add_character(PILOT, 40, newest=at(named["first"], 12), days=0)
    world.add_character(PILOT, 30, newest=at(named["second"], 18), days=0)
    world.add_character(PILOT, 5, newest=at(today(), 0) + timedelta(minutes=10), days=0)
    return named


@pytest.fixture
def client(fake: FakeUpstream) -> R2z2Client:
    """A client as a worker has it, fast enough that the rate is not in the way."""
    return R2z2Client(fake.r2z2_url, CONTACT, 1e6, ratelimit, max_wait=5.0)


def get(fake: FakeUpstream, path: str, **headers: str) -> requests.Response:
    """GET an R2Z2 path with a contact User-Agent (and requests' gzip)."""
    return requests.get(fake.r2z2_url + path, headers={**GOOD_HEADERS, **headers}, timeout=10)


def esi_text(fake: FakeUpstream, world: World, killmail_id: int) -> bytes:
    """The body as the fake ESI's killmail route serves it."""
    url = f"{fake.esi_url}killmails/{killmail_id}/{world.killmail_hash(killmail_id)}/"
    headers = {**GOOD_HEADERS, "X-Compatibility-Date": "2025-12-16"}
    response = requests.get(url, headers=headers, timeout=10)
    assert response.status_code == 200
    return response.content


# -- totals and day lists --------------------------------------------------------------------


def test_totals_count_every_day_up_to_yesterday_with_zero_days(
    fake: FakeUpstream, client: R2z2Client, days: dict[str, date]
) -> None:
    totals = client.totals()
    first = days["first"]
    assert list(totals) == [first + timedelta(days=n) for n in range(6)]
    assert totals[first] == 40
    assert totals[days["second"]] == 30
    assert sum(totals.values()) == 70
    assert today() not in totals
    assert fake.stats()["r2z2_totals"] == 1


def test_totals_keys_are_ascending_day_strings(fake: FakeUpstream, days: dict[str, date]) -> None:
    keys = list(get(fake, "history/totals.json").json())
    assert keys == sorted(keys)
    assert keys[0] == f"{days['first']:%Y%m%d}"


def test_day_lists_ids_ascending_with_their_hashes(
    fake: FakeUpstream, client: R2z2Client, world: World, days: dict[str, date]
) -> None:
    hashes = client.day(days["first"])
    assert hashes is not None
    assert list(hashes) == world.killmail_ids_on(days["first"])
    assert len(hashes) == 40
    assert all(hashes[i] == world.killmail_hash(i) for i in hashes)
    text = get(fake, f"history/{days['first']:%Y%m%d}.json").json(object_pairs_hook=list)
    assert [key for key, _ in text] == [str(i) for i in hashes]


def test_a_past_day_without_killmails_is_an_empty_object(
    client: R2z2Client, days: dict[str, date]
) -> None:
    assert client.day(days["first"] + timedelta(days=1)) == {}


def test_today_and_malformed_days_answer_404(
    fake: FakeUpstream, client: R2z2Client, days: dict[str, date]
) -> None:
    assert client.day(today()) is None
    assert client.day(today() + timedelta(days=1)) is None
    for name in ("2026130.json", "20261301.json", "yesterday.json", f"{days['first']:%Y%m%d}"):
        assert get(fake, "history/" + name).status_code == 404, name
    assert fake.stats()["statuses"]["r2z2"] == {"404": 6}
    assert fake.stats()["r2z2_days"] == 6


# -- raw days --------------------------------------------------------------------------------


def read_raw(client: R2z2Client, day: date) -> bytes | None:
    with client.raw_day(day) as stream:
        return None if stream is None else stream.read()


def test_raw_day_holds_the_esi_bodies_byte_for_byte(
    fake: FakeUpstream, client: R2z2Client, world: World, days: dict[str, date]
) -> None:
    ids = world.killmail_ids_on(days["second"])
    served = world.body(ids[3])
    served["victim"]["items"] = []
    world.served_bodies[ids[3]] = served
    raw = read_raw(client, days["second"])
    assert raw is not None
    parsed = json.loads(raw)
    assert list(parsed) == [str(i) for i in ids]
    for killmail_id in ids:
        body = esi_text(fake, world, killmail_id)
        assert parsed[str(killmail_id)] == json.loads(body)
        assert f'"{killmail_id}":'.encode() + body in raw
    assert parsed[str(ids[3])]["victim"]["items"] == []


def test_raw_day_is_404_before_raw_since_and_on_days_without_raw(
    fake: FakeUpstream, client: R2z2Client, world: World, days: dict[str, date]
) -> None:
    fake.configure(raw_since=days["second"].isoformat())
    assert read_raw(client, days["first"]) is None
    assert read_raw(client, days["second"]) is not None
    world.days_without_raw.add(days["second"])
    assert read_raw(client, days["second"]) is None
    assert read_raw(client, today()) is None
    assert fake.stats()["r2z2_raw"] == 4


def test_raw_day_of_an_empty_past_day_is_an_empty_object(
    client: R2z2Client, days: dict[str, date]
) -> None:
    assert read_raw(client, days["first"] + timedelta(days=1)) == b"{}"


def test_answers_are_gzipped_when_accepted(fake: FakeUpstream, days: dict[str, date]) -> None:
    raw_path = f"history/raw/{days['first']:%Y%m%d}.json"
    for path in ("history/totals.json", f"history/{days['first']:%Y%m%d}.json", raw_path):
        gzipped = get(fake, path)
        plain = get(fake, path, **{"Accept-Encoding": "identity"})
        assert gzipped.headers["Content-Encoding"] == "gzip", path
        assert "Content-Encoding" not in plain.headers, path
        assert gzipped.json() == plain.json(), path
    assert get(fake, raw_path).headers["Transfer-Encoding"] == "chunked"
    assert fake.stats()["violation_count"] == 0


def test_raw_day_streams_instead_of_loading_the_answer_whole(
    fake: FakeUpstream, client: R2z2Client, world: World
) -> None:
    day = today() - timedelta(days=2)
    world.add_character(PILOT, 2000, newest=at(day, 20), days=0)
    chunks = []
    with client.raw_day(day) as stream:
        assert stream is not None
        assert stream.headers["Content-Encoding"] == "gzip"
        chunks.append(stream.read(100))
        pulled_first = stream.tell()
        while chunk := stream.read(64 * 1024):
            chunks.append(chunk)
        pulled_all = stream.tell()
    assert len(chunks[0]) == 100
    assert pulled_first < pulled_all / 10
    assert len(json.loads(b"".join(chunks))) == 2000


def test_leaving_a_raw_day_early_closes_the_connection(
    fake: FakeUpstream, client: R2z2Client, world: World
) -> None:
    day = today() - timedelta(days=2)
    world.add_character(PILOT, 2000, newest=at(day, 20), days=0)
    with client.raw_day(day) as stream:
        assert stream is not None
        stream.read(10)
    assert stream.closed
    assert client.totals()  # the session still works


# -- rules and faults ------------------------------------------------------------------------


def burst(client: R2z2Client, requests: int) -> None:
    """Ask for totals.json as fast as the client goes."""
    for _ in range(requests):
        client.totals()


def test_bursting_past_15_a_second_is_a_violation_and_rate_limited(
    world: World, days: dict[str, date]
) -> None:
    with FakeUpstream(world) as fake:
        client = R2z2Client(fake.r2z2_url, CONTACT, 1e6, ratelimit, max_wait=5.0)
        with pytest.raises(RateLimited) as caught:
            burst(client, 30)
        stats = fake.stats()
    assert stats["r2z2_totals"] > 15
    assert stats["violations_by_rule"] == {"r2z2_rate": 1}
    assert caught.value.retry_after >= 1
    assert ratelimit.blocked_for(LIMIT_NAME) > 0


def test_a_client_pacing_at_10_a_second_breaks_no_rule(world: World, days: dict[str, date]) -> None:
    with FakeUpstream(world) as fake:
        client = R2z2Client(fake.r2z2_url, CONTACT, 10.0, ratelimit, max_wait=5.0)
        started = time.monotonic()
        for _ in range(22):
            client.day(days["first"])
        elapsed = time.monotonic() - started
        stats = fake.stats()
    assert elapsed > 2.0
    assert stats["r2z2_days"] == 22
    assert stats["violation_count"] == 0


def test_a_user_agent_without_contact_is_counted(fake: FakeUpstream) -> None:
    requests.get(fake.r2z2_url + "history/totals.json", timeout=10)
    assert fake.stats()["violations_by_rule"] == {"r2z2_user_agent": 1}


def test_a_5xx_is_unavailable(
    fake: FakeUpstream, client: R2z2Client, days: dict[str, date]
) -> None:
    fake.configure(fault_rate_5xx=1.0)
    with pytest.raises(R2z2Unavailable) as caught:
        client.totals()
    assert caught.value.status in (502, 503, 504)
    with pytest.raises(R2z2Unavailable), client.raw_day(days["first"]):
        pass
    assert fake.stats()["faults"] == {"5xx": 2}


@pytest.mark.parametrize("fault", ["fault_rate_html", "fault_rate_truncated"])
def test_an_answer_that_is_not_json_is_unavailable(
    fake: FakeUpstream, client: R2z2Client, days: dict[str, date], fault: str
) -> None:
    fake.configure(**{fault: 1.0})
    with pytest.raises(R2z2Unavailable):
        client.day(days["first"])


def test_a_truncated_raw_day_is_half_a_json_document(
    fake: FakeUpstream, client: R2z2Client, days: dict[str, date]
) -> None:
    fake.configure(fault_rate_truncated=1.0)
    raw = read_raw(client, days["first"])
    assert raw is not None
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


def test_the_deployment_client_follows_the_settings(
    fake: FakeUpstream, days: dict[str, date]
) -> None:
    client = clients.r2z2_client(ratelimit)
    assert client.base_url == fake.r2z2_url
    assert sum(client.totals().values()) == 70
    assert fake.stats()["violation_count"] == 0


# -- liberal parsing -------------------------------------------------------------------------


def test_totals_skip_bad_keys_and_counts() -> None:
    data: dict[str, Any] = {
        "20260702": 5,
        "20260701": 0,
        "20260230": 1,
        "2026070": 1,
        "latest": 1,
        "20260703": -1,
        "20260704": "7",
        "20260705": True,
        "20260706": 2.5,
    }
    assert parse_totals(data) == {date(2026, 7, 1): 0, date(2026, 7, 2): 5}


def test_totals_that_are_not_an_object_are_unavailable() -> None:
    with pytest.raises(R2z2Unavailable):
        parse_totals(["20260701"])


def test_day_skips_non_numeric_ids_and_non_string_hashes() -> None:
    data = {"12": "b" * 40, "3": "a" * 40, "x1": "c" * 40, "4": None, "5": "short"}
    assert parse_day(date(2026, 7, 1), data) == {3: "a" * 40, 5: "short", 12: "b" * 40}
    assert parse_day(date(2026, 7, 1), []) == {}
    with pytest.raises(R2z2Unavailable):
        parse_day(date(2026, 7, 1), "{}")
