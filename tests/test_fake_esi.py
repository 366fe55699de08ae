"""Tests of the fake ESI's route groups, its newer routes and its report of how a client behaved.

Buckets only where ESI announces them (killmail, char-affiliation), affiliation in bulk, item
groups and categories, systems, constellations and regions, and `esi_report()`: calls,
breaches (rate limit, error limit, calls during a 420), requests in flight and bucket charges.
They talk to a real server on loopback and need neither Django nor a database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from fakeupstream.__main__ import build_parser
from fakeupstream.server import ESI_420_GRACE, FakeUpstream
from fakeupstream.world import (
    ADDED_CHARACTERS,
    ADDED_CORPORATIONS,
    ADDED_TYPES,
    CATEGORIES,
    GROUPS,
    REGIONS,
    SOLAR_SYSTEMS,
    World,
)

PILOT = 2117325769
STRANGER = 90000001  # no character of the world
GOOD_HEADERS = {
    "User-Agent": "killboard-backfill/0.1 (ops@example.com)",
    "X-Compatibility-Date": "2025-12-16",
}
CORPORATIONS = list(ADDED_CORPORATIONS[:20])
PILOTS = list(ADDED_CHARACTERS[:1220])  # the corporations' CEOs, then pilots in corporations
TYPES = list(ADDED_TYPES[:300])
LATENCY = 0.3  # seconds of fake latency where requests must overlap
DETAIL_ROUTES = {
    "universe/groups/25/": {"group_id", "name", "category_id", "published", "types"},
    "universe/categories/6/": {"category_id", "name", "published", "groups"},
    "universe/systems/30000142/": {
        "system_id",
        "name",
        "constellation_id",
        "security_status",
        "star_id",
        "position",
    },
    "universe/constellations/20000020/": {
        "constellation_id",
        "name",
        "region_id",
        "systems",
        "position",
    },
    "universe/regions/10000002/": {"region_id", "name", "description", "constellations"},
}


@pytest.fixture(scope="module")
def world() -> World:
    """A pilot with a few killmails, plus corporations, pilots and types no killmail shows."""
    world = World(seed=11)
    world.add_character(PILOT, 20)
    assert world.add_corporations(20) == CORPORATIONS
    assert world.add_characters(1200) == PILOTS[20:]
    assert world.add_types(300) == TYPES
    return world


@pytest.fixture
def upstream(world: World) -> Iterator[FakeUpstream]:
    """A fresh server per test with ESI's default buckets."""
    with FakeUpstream(world) as server:
        yield server


@pytest.fixture
def client() -> Iterator[requests.Session]:
    """A well-behaved client session."""
    with requests.Session() as session:
        session.headers.update(GOOD_HEADERS)
        yield session


def killmail_url(upstream: FakeUpstream, world: World, index: int = 0) -> str:
    """The ESI URL of one of the pilot's killmails."""
    killmail_id = world.killmail_ids(PILOT)[index]
    return f"{upstream.esi_url}killmails/{killmail_id}/{world.killmail_hash(killmail_id)}/"


def affiliation(client: requests.Session, upstream: FakeUpstream, ids: Any) -> requests.Response:
    """POST ids to /characters/affiliation/."""
    return client.post(upstream.esi_url + "characters/affiliation/", json=ids, timeout=10)


def known(details: dict[str, Any] | None) -> dict[str, Any]:
    """A world lookup's answer, which must exist."""
    assert details is not None
    return details


def rules(upstream: FakeUpstream) -> list[str]:
    """The rules broken so far, in order."""
    return [v["rule"] for v in upstream.stats()["violations"]]


def rate_headers(response: requests.Response) -> set[str]:
    """The X-Ratelimit-* header names of an answer."""
    return {name for name in response.headers if name.lower().startswith("x-ratelimit")}


# -- buckets per route group ----------------------------------------------------------------


def test_only_killmail_and_affiliation_announce_a_bucket(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    killmail = client.get(killmail_url(upstream, world), timeout=10)
    bulk = affiliation(client, upstream, [PILOT])
    unbucketed = [
        client.post(upstream.esi_url + "universe/names/", json=[PILOT], timeout=10),
        client.get(f"{upstream.esi_url}characters/{PILOT}/", timeout=10),
        client.get(f"{upstream.esi_url}corporations/{CORPORATIONS[0]}/", timeout=10),
        client.get(upstream.esi_url + "universe/types/670/", timeout=10),
        client.get(upstream.esi_url + "universe/systems/30000142/", timeout=10),
    ]
    assert killmail.headers["X-Ratelimit-Limit"] == "3600/15m"
    assert bulk.headers["X-Ratelimit-Group"] == "char-affiliation"
    assert bulk.headers["X-Ratelimit-Limit"] == "1800/15m"
    assert bulk.headers["X-Ratelimit-Used"] == "2"
    for answer in unbucketed:
        assert answer.status_code == 200, answer.url
        assert rate_headers(answer) == set(), answer.url
        assert answer.headers["X-ESI-Error-Limit-Remain"] == "100"
    assert set(upstream.esi_report()["charges"]) == {"killmail", "char-affiliation"}


def test_a_bucket_is_switched_on_and_off_by_configure(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    url = upstream.esi_url + "universe/names/"
    upstream.configure(esi_buckets={"names": [10, 60]})
    limited = [client.post(url, json=[PILOT], timeout=10) for _ in range(6)]
    upstream.configure(esi_buckets={"names": None})
    free = [client.post(url, json=[PILOT], timeout=10) for _ in range(20)]
    assert [a.status_code for a in limited] == [200] * 5 + [429]
    assert limited[0].headers["X-Ratelimit-Limit"] == "10/1m"
    assert {a.status_code for a in free} == {200}
    assert all(rate_headers(a) == set() for a in free)
    assert upstream.current_config()["esi_buckets"]["names"] is None
    assert upstream.esi_report()["breaches"]["rate_limit"] == 1
    assert rules(upstream) == ["esi_rate_limit"]


def test_an_unknown_group_or_an_empty_bucket_is_refused(upstream: FakeUpstream) -> None:
    with pytest.raises(ValueError, match="unknown ESI group"):
        upstream.configure(esi_buckets={"market": [10, 60]})
    with pytest.raises(ValueError, match="at least 2 tokens"):
        upstream.configure(esi_buckets={"names": [0, 60]})


# -- affiliation ----------------------------------------------------------------------------


def test_affiliation_answers_each_unique_character_once(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    pilots = [PILOT, *PILOTS[:997]]  # 1000 ids with the repeats below
    answer = affiliation(client, upstream, [*pilots, PILOT, PILOT])
    assert answer.status_code == 200
    rows = answer.json()
    assert [row["character_id"] for row in rows] == pilots
    for row in rows:
        character_id = row.pop("character_id")
        assert row == world.affiliation(character_id)
        assert set(row) <= {"corporation_id", "alliance_id", "faction_id"}
    assert any("alliance_id" not in row for row in rows)
    assert any("faction_id" in row for row in rows)
    assert upstream.stats()["esi_affiliation"] == 1


def test_affiliation_agrees_with_character_details_and_names(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    pilot = PILOTS[-1]
    row = affiliation(client, upstream, [pilot]).json()[0]
    details = client.get(f"{upstream.esi_url}characters/{pilot}/", timeout=10).json()
    names = client.post(
        upstream.esi_url + "universe/names/", json=[row["corporation_id"]], timeout=10
    )
    assert details["corporation_id"] == row["corporation_id"]
    assert details.get("alliance_id") == row.get("alliance_id")
    assert names.json()[0]["category"] == "corporation"


@pytest.mark.parametrize(
    "ids", [[PILOT, STRANGER], [PILOT, 670], [PILOT, 30000142]], ids=["stranger", "type", "system"]
)
def test_affiliation_404s_when_one_id_is_not_a_known_character(
    upstream: FakeUpstream, client: requests.Session, ids: list[int]
) -> None:
    answer = affiliation(client, upstream, ids)
    assert answer.status_code == 404
    assert answer.json() == {"error": "Character not found"}
    assert upstream.esi_report()["error_answers"] == 1


def test_affiliation_404s_for_an_unresolvable_pilot(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    pilot = PILOTS[-2]
    world.add_unresolvable([pilot])
    try:
        answer = affiliation(client, upstream, [PILOT, pilot])
    finally:
        world.unresolvable_ids.discard(pilot)
    assert answer.status_code == 404


@pytest.mark.parametrize(
    "payload",
    [[], list(range(1, 1002)), {"ids": [PILOT]}, ["x"], [True], "not json"],
    ids=["empty", "1001", "object", "string", "bool", "text"],
)
def test_affiliation_400s_unless_given_1_to_1000_integer_ids(
    upstream: FakeUpstream, client: requests.Session, payload: Any
) -> None:
    url = upstream.esi_url + "characters/affiliation/"
    if payload == "not json":
        answer = client.post(url, data=b"[1,", timeout=10)
    else:
        answer = affiliation(client, upstream, payload)
    assert answer.status_code == 400
    assert "error" in answer.json()


def test_affiliation_is_post_only(upstream: FakeUpstream, client: requests.Session) -> None:
    answer = client.get(upstream.esi_url + "characters/affiliation/", timeout=10)
    assert answer.status_code == 405


# -- universe -------------------------------------------------------------------------------


@pytest.mark.parametrize("route", DETAIL_ROUTES)
def test_universe_detail_has_esi_shape_and_answers_304_to_its_etag(
    upstream: FakeUpstream, client: requests.Session, route: str
) -> None:
    first = client.get(upstream.esi_url + route, timeout=10)
    again = client.get(
        upstream.esi_url + route, headers={"If-None-Match": first.headers["ETag"]}, timeout=10
    )
    assert first.status_code == 200
    assert set(first.json()) == DETAIL_ROUTES[route]
    assert "Expires" in first.headers
    assert again.status_code == 304
    assert again.content == b""
    family = "esi_" + route.split("/")[1]
    assert upstream.esi_report()["calls"]["by_family"] == {family: 2}


@pytest.mark.parametrize(
    "route", ["groups/1/", "categories/1/", "systems/1/", "constellations/1/", "regions/1/"]
)
def test_universe_detail_404s_for_unknown_ids(
    upstream: FakeUpstream, client: requests.Session, route: str
) -> None:
    answer = client.get(upstream.esi_url + "universe/" + route, timeout=10)
    assert answer.status_code == 404
    assert answer.json()["error"].endswith("not found")


def test_every_type_leads_to_its_group_and_category(world: World) -> None:
    type_ids = world.referenced_entities()["inventory_type"] | set(TYPES)
    for type_id in type_ids:
        group = known(world.group_details(known(world.type_details(type_id))["group_id"]))
        category = known(world.category_details(group["category_id"]))
        assert type_id in group["types"]
        assert group["group_id"] in category["groups"]
    assert {known(world.group_details(g))["category_id"] for g in GROUPS} == set(CATEGORIES)


def test_added_types_spread_over_the_groups_the_same_way_for_a_seed() -> None:
    first, second = World(seed=4), World(seed=4)
    ids = first.add_types(400)
    assert ids == second.add_types(400)
    assert [first.type_details(t) for t in ids] == [second.type_details(t) for t in ids]
    assert len({known(first.type_details(t))["group_id"] for t in ids}) > len(GROUPS) // 2


def test_added_corporations_have_details_names_and_a_ceo_in_them(world: World) -> None:
    for corporation_id in CORPORATIONS:
        details = world.corporation_details(corporation_id)
        assert details is not None
        assert world.category(corporation_id) == "corporation"
        assert known(world.affiliation(details["ceo_id"]))["corporation_id"] == corporation_id
        if "alliance_id" in details:
            assert world.alliance_details(details["alliance_id"]) is not None


def test_every_system_leads_to_its_constellation_and_region(world: World) -> None:
    for system_id, region_id in REGIONS.items():
        system = world.system_details(system_id)
        assert system is not None
        constellation = world.constellation_details(system["constellation_id"])
        assert constellation is not None
        assert system_id in constellation["systems"]
        assert constellation["region_id"] == region_id
        region = world.region_details(region_id)
        assert region is not None
        assert system["constellation_id"] in region["constellations"]
        assert system["security_status"] == SOLAR_SYSTEMS[system_id]


def test_names_resolve_constellations_and_regions_but_not_groups(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    url = upstream.esi_url + "universe/names/"
    places = client.post(url, json=[20000020, 10000002], timeout=10)
    group = client.post(url, json=[25], timeout=10)
    category = client.post(url, json=[65], timeout=10)
    assert {(e["id"], e["category"]) for e in places.json()} == {
        (20000020, "constellation"),
        (10000002, "region"),
    }
    assert group.status_code == 404
    assert category.status_code == 404


# -- the report: breaches -------------------------------------------------------------------


def test_a_client_that_stops_after_a_420_is_not_counted(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    upstream.configure(storm_420=0.5)
    first = client.get(upstream.esi_url + "universe/types/670/", timeout=10)
    time.sleep(0.6)
    after = client.get(upstream.esi_url + "universe/types/670/", timeout=10)
    report = upstream.esi_report()
    assert (first.status_code, after.status_code) == (420, 200)
    assert report["breaches"] == {"rate_limit": 0, "error_limit": 0, "during_420": 0}
    assert report["min_error_remain"] == 100  # a forced storm's 0 is not the client's
    assert rules(upstream) == []


def test_a_client_that_keeps_calling_during_a_420_is_counted(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    upstream.configure(storm_420=5)
    first = client.get(upstream.esi_url + "universe/types/670/", timeout=10)
    time.sleep(ESI_420_GRACE * 2)
    more = [client.get(upstream.esi_url + "universe/types/670/", timeout=10) for _ in range(3)]
    assert first.status_code == 420
    assert {a.status_code for a in more} == {420}
    assert upstream.esi_report()["breaches"]["during_420"] == 3
    assert rules(upstream) == ["esi_call_during_420"] * 3


def test_requests_already_on_the_wire_at_the_first_420_are_not_counted(
    upstream: FakeUpstream,
) -> None:
    upstream.configure(storm_420=5, latency_esi=LATENCY)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: get_type(upstream), range(4)))
    assert answers == [420] * 4
    assert upstream.esi_report()["breaches"]["during_420"] == 0


def get_type(upstream: FakeUpstream) -> int:
    """GET a type with a session of its own; return the status."""
    with requests.Session() as session:
        session.headers.update(GOOD_HEADERS)
        return session.get(upstream.esi_url + "universe/types/670/", timeout=10).status_code


def test_calls_after_the_error_limit_is_spent_are_breaches(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    upstream.configure(esi_error_limit=3)
    misses = [client.get(f"{upstream.esi_url}characters/{STRANGER}/") for _ in range(3)]
    first = client.get(f"{upstream.esi_url}characters/{PILOT}/", timeout=10)
    time.sleep(ESI_420_GRACE * 2)
    second = client.get(f"{upstream.esi_url}characters/{PILOT}/", timeout=10)
    report = upstream.esi_report()
    assert [m.headers["X-ESI-Error-Limit-Remain"] for m in misses] == ["2", "1", "0"]
    assert (first.status_code, second.status_code) == (420, 420)
    assert report["breaches"] == {"rate_limit": 0, "error_limit": 2, "during_420": 1}
    assert report["error_answers"] == 3
    assert report["min_error_remain"] == 0
    assert rules(upstream) == ["esi_error_limit", "esi_error_limit", "esi_call_during_420"]


# -- the report: calls, concurrency, charges ------------------------------------------------


def test_report_counts_calls_and_statuses_by_group_and_family(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    client.get(killmail_url(upstream, world), timeout=10)
    client.get(f"{upstream.esi_url}characters/{PILOT}/", timeout=10)
    client.get(f"{upstream.esi_url}characters/{STRANGER}/", timeout=10)
    client.get(upstream.esi_url + "markets/prices/", timeout=10)
    report = client.get(upstream.url + "/_fake/esi", timeout=10).json()
    assert report["calls"] == {
        "total": 4,
        "by_group": {"killmail": 1, "character": 2, "none": 1},
        "by_family": {"esi_killmails": 1, "esi_characters": 2, "esi_other": 1},
    }
    assert report["statuses"] == {
        "killmail": {"200": 1},
        "character": {"200": 1, "404": 1},
        "none": {"404": 1},
    }
    assert report["error_answers"] == 2
    assert report["min_error_remain"] == 98
    assert report["buckets"]["names"] is None


def test_max_in_flight_counts_requests_handled_at_once(upstream: FakeUpstream) -> None:
    upstream.configure(latency_esi=LATENCY)
    paths = ["universe/types/670/", "universe/names/"] * 3
    started = time.monotonic()
    with ThreadPoolExecutor(len(paths)) as pool:
        statuses = list(pool.map(lambda path: call(upstream, path), paths))
    together = time.monotonic() - started
    call(upstream, "universe/types/670/")  # alone: the maximum stays
    report = upstream.esi_report()
    assert statuses == [200] * 6
    assert report["max_in_flight"] == {"overall": 6, "by_group": {"universe": 3, "names": 3}}
    # The latency is slept outside the lock: six at once take about as long as one.
    assert together / LATENCY < 3


def call(upstream: FakeUpstream, path: str) -> int:
    """GET a detail or POST names with a session of its own; return the status."""
    with requests.Session() as session:
        session.headers.update(GOOD_HEADERS)
        if path == "universe/names/":
            return session.post(upstream.esi_url + path, json=[PILOT], timeout=10).status_code
        return session.get(upstream.esi_url + path, timeout=10).status_code


def test_charges_record_each_bucket_spend_until_reset_stats(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    for index in range(3):
        client.get(killmail_url(upstream, world, index), timeout=10)
    killmail_id = world.killmail_ids(PILOT)[0]
    client.get(f"{upstream.esi_url}killmails/{killmail_id}/{'0' * 40}/", timeout=10)
    client.get(f"{upstream.esi_url}characters/{PILOT}/", timeout=10)
    charges = upstream.esi_report()["charges"]
    upstream.reset_stats()
    after = upstream.esi_report()
    moments = [moment for moment, _ in charges["killmail"]["charges"]]
    assert charges["killmail"]["bucket"] == [3600, 900.0]
    assert [tokens for _, tokens in charges["killmail"]["charges"]] == [2, 2, 2, 5]
    assert moments == sorted(moments)
    assert moments[0] >= 0
    assert charges["char-affiliation"] == {"bucket": [1800, 900.0], "charges": []}
    assert "character" not in charges
    assert after["charges"]["killmail"]["charges"] == []
    assert after["calls"]["total"] == 0


def test_command_line_sets_latency_and_buckets_per_group() -> None:
    args = build_parser().parse_args(
        ["--esi-latency", "0.05", "--esi-bucket", "names=100/60", "--esi-bucket", "killmail=none"]
    )
    assert args.latency_esi == 0.05
    assert dict(args.esi_bucket) == {"names": (100, 60.0), "killmail": None}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--esi-bucket", "market=1/1"])
