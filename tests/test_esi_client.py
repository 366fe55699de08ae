"""The ESI client against the fake ESI over real HTTP on loopback, with the shared limiter."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from fakeupstream.server import FakeUpstream
from fakeupstream.world import World
from killboard import ratelimit
from tests.conftest import GENEROUS_BUCKETS
from upstream.errors import RateLimited
from upstream.esi import (
    ERROR_GATE,
    EsiClient,
    EsiError,
    EsiNotFound,
    EsiUnavailable,
    bucket_interval,
    parse_limit,
)

pytestmark = pytest.mark.django_db

PILOT = 2117325769
CONTACT = "ops@example.com"


@pytest.fixture(scope="module")
def world() -> World:
    """One pilot with a few killmails, and every entity its bodies reference."""
    world = World(seed=11)
    world.add_character(PILOT, 20)
    return world


@pytest.fixture
def upstream(world: World) -> Iterator[FakeUpstream]:
    """A fresh fake per test."""
    with FakeUpstream(world, esi_buckets=GENEROUS_BUCKETS) as server:
        yield server
    world.unresolvable_ids.clear()


@pytest.fixture
def client(upstream: FakeUpstream) -> EsiClient:
    """A client as a Celery worker has it: waits a few seconds inline at most."""
    return EsiClient(upstream.esi_url, CONTACT, ratelimit, max_wait=5.0)


def violations(upstream: FakeUpstream) -> list[str]:
    """The rules the client broke so far."""
    return [violation["rule"] for violation in upstream.stats()["violations"]]


def test_killmail_body_is_fetched_with_the_required_headers(
    client: EsiClient, upstream: FakeUpstream, world: World
) -> None:
    killmail_id = world.killmail_ids(PILOT)[0]
    body = client.killmail(killmail_id, world.killmail_hash(killmail_id))
    assert body == world.body(killmail_id)
    assert client.session.headers["User-Agent"] == (f"killboard-backfill/0.1 (+contact: {CONTACT})")
    assert upstream.stats()["esi_killmails"] == 1
    assert violations(upstream) == []


def test_wrong_killmail_hash_is_not_found(client: EsiClient, world: World) -> None:
    killmail_id = world.killmail_ids(PILOT)[0]
    with pytest.raises(EsiNotFound) as caught:
        client.killmail(killmail_id, "0" * 40)
    assert caught.value.status == 422


def test_names_come_back_typed(client: EsiClient, world: World) -> None:
    corporation_id = world.tracked_character(PILOT).corporation_id
    names = client.names([PILOT, corporation_id])
    assert {(n.id, n.name, n.category) for n in names} == {
        (PILOT, world.name(PILOT), "character"),
        (corporation_id, world.name(corporation_id), "corporation"),
    }


def test_one_unresolvable_id_fails_the_whole_names_call(client: EsiClient, world: World) -> None:
    world.add_unresolvable([PILOT])
    with pytest.raises(EsiNotFound):
        client.names([PILOT, world.tracked_character(PILOT).corporation_id])


def test_names_refuses_more_than_a_thousand_ids(client: EsiClient) -> None:
    with pytest.raises(ValueError, match="1000"):
        client.names(list(range(1, 1002)))


def test_detail_carries_etag_and_expires_and_answers_304_to_it(
    client: EsiClient, upstream: FakeUpstream, world: World
) -> None:
    first = client.character(PILOT)
    assert first.status == 200
    assert first.body == world.character_details(PILOT)
    assert first.etag
    assert first.expires is not None
    assert first.expires.timestamp() > time.time()

    second = client.character(PILOT, etag=first.etag)
    assert second.status == 304
    assert second.body is None
    assert second.etag == first.etag
    assert upstream.stats()["statuses"]["esi"] == {"200": 1, "304": 1}


def test_every_detail_route_answers(client: EsiClient, world: World) -> None:
    corporation_id = world.tracked_character(PILOT).corporation_id
    alliance_id = world.tracked_character(PILOT).alliance_id
    type_id = world.body(world.killmail_ids(PILOT)[0])["victim"]["ship_type_id"]
    assert client.corporation(corporation_id).body["ceo_id"] == PILOT
    assert client.alliance(alliance_id).body["executor_corporation_id"] == corporation_id
    assert client.item_type(type_id).body["name"] == world.name(type_id)


def test_unknown_character_is_not_found(client: EsiClient) -> None:
    with pytest.raises(EsiNotFound) as caught:
        client.character(1)
    assert caught.value.status == 404


@pytest.mark.parametrize("fault", ["fault_rate_html", "fault_rate_truncated", "fault_rate_5xx"])
def test_html_truncated_or_5xx_answer_is_unavailable(
    client: EsiClient, upstream: FakeUpstream, fault: str
) -> None:
    upstream.configure(**{fault: 1.0})
    with pytest.raises(EsiUnavailable):
        client.character(PILOT)
    with pytest.raises(EsiUnavailable):
        client.names([PILOT])


def test_held_answer_times_out_as_unavailable(upstream: FakeUpstream) -> None:
    client = EsiClient(upstream.esi_url, CONTACT, ratelimit, timeout=0.3)
    upstream.configure(fault_rate_timeout=1.0, timeout_hold=1.0)
    with pytest.raises(EsiUnavailable):
        client.character(PILOT)


def test_unavailable_and_not_found_are_esi_errors() -> None:
    assert issubclass(EsiNotFound, EsiError)
    assert issubclass(EsiUnavailable, EsiError)
    assert not issubclass(RateLimited, EsiError)


def test_429_blocks_its_route_group_for_retry_after(
    client: EsiClient, upstream: FakeUpstream
) -> None:
    upstream.configure(burst_429=1)
    with pytest.raises(RateLimited) as caught:
        client.names([PILOT])
    assert caught.value.retry_after == 1.0
    assert 0 < ratelimit.blocked_for("esi:names") <= 1.0
    assert ratelimit.blocked_for(ERROR_GATE) == 0
    # The next call waits out the block inline and succeeds.
    assert client.names([PILOT])[0].id == PILOT
    assert violations(upstream) == []


def test_420_storm_blocks_every_worker_until_the_reset(
    client: EsiClient, upstream: FakeUpstream
) -> None:
    upstream.configure(storm_420=1.5)
    with pytest.raises(RateLimited) as caught:
        client.character(PILOT)
    assert 1 <= caught.value.retry_after <= 2
    assert ratelimit.blocked_for(ERROR_GATE) > 0.5

    # Another worker with its own client sends nothing while the gate is closed.
    impatient = EsiClient(upstream.esi_url, CONTACT, ratelimit, max_wait=0.1)
    with pytest.raises(RateLimited):
        impatient.names([PILOT])
    assert upstream.stats()["requests"] == 1

    # A patient one waits on the shared gate, then goes through once the storm is over.
    started = time.monotonic()
    assert client.names([PILOT])[0].id == PILOT
    assert time.monotonic() - started > 0.5
    assert upstream.stats()["faults"] == {"storm_420": 1}
    assert violations(upstream) == []


def test_low_error_limit_closes_the_gate_for_every_worker(
    client: EsiClient, upstream: FakeUpstream
) -> None:
    # One error leaves fewer than the floor the client keeps for requests in flight.
    upstream.configure(esi_error_limit=client.error_floor)
    with pytest.raises(EsiNotFound):
        client.character(1)
    assert ratelimit.blocked_for(ERROR_GATE) > 30  # the fake's window is a minute
    impatient = EsiClient(upstream.esi_url, CONTACT, ratelimit, max_wait=1.0)
    with pytest.raises(RateLimited):
        impatient.character(PILOT)
    assert upstream.stats()["requests"] == 1
    assert violations(upstream) == []


def test_bucket_is_learned_from_headers_and_never_overrun(
    client: EsiClient, upstream: FakeUpstream, world: World
) -> None:
    upstream.configure(esi_buckets={"character": (40, 2.0)})
    # A group no answer has named a bucket for yet is not paced; the killmail group is.
    assert client.interval("character") == 0
    assert client.interval("killmail") == bucket_interval(3600, 900.0)
    started = time.monotonic()
    for _ in range(30):
        assert client.character(PILOT).status == 200
    elapsed = time.monotonic() - started
    assert client.interval("character") == bucket_interval(40, 2.0)
    # 30 answers cost 60 tokens of a 40-per-2s bucket: at least a second of pacing.
    assert elapsed > 1.0
    stats = upstream.stats()
    assert stats["statuses"]["esi"] == {"200": 30}
    assert stats["violation_count"] == 0


@pytest.mark.parametrize(
    ("text", "bucket"),
    [
        ("3600/15m", (3600, 900.0)),
        ("150/1m", (150, 60.0)),
        ("10/1h", (10, 3600.0)),
        ("40/2s", (40, 2.0)),
        ("", None),
        ("fast", None),
        ("0/1m", None),
    ],
)
def test_ratelimit_limit_header_is_parsed(text: str, bucket: tuple[int, float] | None) -> None:
    assert parse_limit(text) == bucket
