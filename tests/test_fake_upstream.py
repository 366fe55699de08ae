"""Tests of the fake zKillboard and ESI: the rules it enforces and the data it serves.

R2Z2's day dumps are tested with their client, in tests/test_r2z2.py.

They talk to a real server on loopback with requests and need neither Django nor a database.

Why one long module: it is the fake's whole contract, rule by rule, in one place.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from fakeupstream.server import FakeUpstream
from fakeupstream.world import (
    REGIONS,
    SAMPLES_DIR,
    SOLAR_SYSTEMS,
    STRUCTURE_TYPES,
    World,
    killmail_time,
)

PILOT = 2117325769
OTHER_PILOT = 95465499
STRANGER = 90000001  # never referenced by any killmail
FAST = 1e6  # zKillboard requests per second, where the rate is not what a test is about
GOOD_HEADERS = {
    "User-Agent": "killboard-backfill/0.1 (ops@example.com)",
    "Accept-Encoding": "gzip",
    "X-Compatibility-Date": "2025-12-16",
}


@pytest.fixture(scope="module")
def world() -> World:
    """A small world: one pilot with 450 killmails, another sharing 20 of them."""
    world = World(seed=7)
    world.add_character(PILOT, 450)
    world.add_character(OTHER_PILOT, 30, days=200)
    world.add_shared([PILOT, OTHER_PILOT], 20)
    return world


@pytest.fixture(scope="module")
def big_world() -> World:
    """A world large enough to hold every kind of killmail the generator makes."""
    world = World(seed=1)
    world.add_character(PILOT, 2500)
    return world


@pytest.fixture
def upstream(world: World) -> Iterator[FakeUpstream]:
    """A fresh server per test, fast enough that the zKillboard rate is not in the way."""
    with FakeUpstream(world, zkb_rate=FAST) as server:
        yield server


@pytest.fixture
def client() -> Iterator[requests.Session]:
    """A well-behaved client session."""
    with requests.Session() as session:
        session.headers.update(GOOD_HEADERS)
        yield session


def zkb_get(client: requests.Session, upstream: FakeUpstream, path: str) -> Any:
    """GET a zKillboard path and return the decoded JSON."""
    response = client.get(upstream.zkb_url + path, allow_redirects=False, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def rules(upstream: FakeUpstream) -> list[str]:
    """Return the rules broken so far, in order."""
    return [v["rule"] for v in upstream.stats()["violations"]]


def listing(client: requests.Session, upstream: FakeUpstream, path: str) -> list[int]:
    """Every killmail id a filter path lists, walking its pages."""
    ids: list[int] = []
    for page in range(1, 101):
        items = zkb_get(client, upstream, f"{path}page/{page}/")
        ids += [item["killmail_id"] for item in items]
        if len(items) < 200:
            break
    return ids


def walk(value: Any) -> Iterator[Any]:
    """Yield every value nested in a JSON document."""
    yield value
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list):
        for child in children:
            yield from walk(child)


# -- world ----------------------------------------------------------------------------------


def test_same_seed_builds_the_same_world() -> None:
    first, second = World(seed=3), World(seed=3)
    assert first.add_character(PILOT, 50) == second.add_character(PILOT, 50)
    killmail_id = first.killmail_ids(PILOT)[0]
    assert first.body(killmail_id) == second.body(killmail_id)
    assert first.zkb(killmail_id) == second.zkb(killmail_id)


def test_killmail_ids_increase_with_killmail_time(world: World) -> None:
    ids = world.all_killmail_ids()
    times = [world.body(i)["killmail_time"] for i in ids[:50]]
    assert times == sorted(times, reverse=True)
    assert len(set(ids)) == len(ids) == 500
    assert world.killmail_ids(PILOT)[0] == max(world.killmail_ids(PILOT))


def test_shared_killmails_appear_for_both_characters(world: World) -> None:
    shared = set(world.killmail_ids(PILOT)) & set(world.killmail_ids(OTHER_PILOT))
    assert len(shared) == 20
    for killmail_id in shared:
        body = world.body(killmail_id)
        people = {a.get("character_id") for a in body["attackers"]}
        people.add(body["victim"].get("character_id"))
        assert {PILOT, OTHER_PILOT} <= people


def test_about_a_quarter_of_killmails_are_losses(world: World) -> None:
    ids = world.killmail_ids(PILOT)
    losses = [i for i in ids if world.body(i)["victim"].get("character_id") == PILOT]
    assert 0.15 < len(losses) / len(ids) < 0.35


def test_bodies_follow_the_esi_schema(big_world: World) -> None:
    for killmail_id in big_world.killmail_ids(PILOT):
        body = big_world.body(killmail_id)
        assert {"killmail_id", "killmail_time", "solar_system_id", "victim", "attackers"} <= set(
            body
        )
        assert datetime.strptime(body["killmail_time"], "%Y-%m-%dT%H:%M:%SZ")
        assert {"damage_taken", "ship_type_id"} <= set(body["victim"])
        assert sum(a["final_blow"] for a in body["attackers"]) == 1
        for attacker in body["attackers"]:
            assert {"damage_done", "final_blow", "security_status"} <= set(attacker)
        for item in body["victim"].get("items", []):
            assert {"flag", "item_type_id", "singleton"} <= set(item)
            assert item.get("items", [None]), "empty item arrays must be absent"
            for nested in item.get("items", []):
                assert "items" not in nested
        assert body["victim"].get("items", [None]), "empty item arrays must be absent"
        assert None not in list(walk(body))


def test_generated_killmails_cover_the_edge_cases(big_world: World) -> None:
    bodies = [big_world.body(i) for i in big_world.killmail_ids(PILOT)]
    attacker_counts = sorted(len(b["attackers"]) for b in bodies)
    items = [item for b in bodies for item in b["victim"].get("items", [])]
    assert attacker_counts[len(bodies) // 2] <= 15
    assert attacker_counts[-1] >= 100
    assert any(b["victim"]["ship_type_id"] in STRUCTURE_TYPES for b in bodies)
    assert any("character_id" not in b["victim"] for b in bodies)
    npc_keys = {"damage_done", "final_blow", "faction_id", "security_status", "ship_type_id"}
    assert any(set(a) == npc_keys for b in bodies for a in b["attackers"])
    assert any("items" in item for item in items)
    assert any(item.get("quantity_destroyed", 0) > 2**31 for item in items) or any(
        item.get("quantity_dropped", 0) > 2**31 for item in items
    )
    assert any("items" not in b["victim"] for b in bodies)
    assert any("war_id" in b for b in bodies)


def test_zkb_object_has_the_keys_of_its_era(big_world: World) -> None:
    for killmail_id in big_world.killmail_ids(PILOT)[::7]:
        zkb = big_world.zkb(killmail_id)
        when = killmail_time(killmail_id)
        assert len(zkb["hash"]) == 40
        assert ("labels" in zkb) == (when >= datetime(2024, 1, 1, tzinfo=UTC))
        assert ("totalDroppableValue" in zkb) == (when >= datetime(2026, 1, 1, tzinfo=UTC))
        assert ("locationID" in zkb) == ("position" in big_world.body(killmail_id)["victim"])
        assert zkb["totalValue"] == pytest.approx(zkb["droppedValue"] + zkb["destroyedValue"])


def test_every_solar_system_has_a_region() -> None:
    assert set(REGIONS) == set(SOLAR_SYSTEMS)
    assert REGIONS[30000142] == REGIONS[30000144] == 10000002
    assert REGIONS[30002187] == 10000043


def test_founding_dates_precede_every_killmail_of_tracked_members(world: World) -> None:
    pilot = world.tracked_character(PILOT)
    assert pilot is not None
    assert pilot.alliance_id is not None
    oldest = killmail_time(world.killmail_ids(PILOT)[-1])
    corporation = world.corporation_details(pilot.corporation_id)
    alliance = world.alliance_details(pilot.alliance_id)
    assert corporation is not None
    assert alliance is not None
    for founded in (corporation["date_founded"], alliance["date_founded"]):
        moment = datetime.strptime(founded, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert oldest - timedelta(days=31) < moment < oldest


def test_a_corporation_without_tracked_killmails_is_founded_in_2010(world: World) -> None:
    body = world.body(world.killmail_ids(PILOT)[0])
    filler = next(a["corporation_id"] for a in body["attackers"] if a.get("character_id") != PILOT)
    details = world.corporation_details(filler)
    assert details is not None
    assert details["date_founded"] == "2010-01-01T12:00:00Z"


# -- zKillboard -----------------------------------------------------------------------------


def test_page_has_200_items_newest_first(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    items = zkb_get(client, upstream, f"characterID/{PILOT}/")
    ids = [item["killmail_id"] for item in items]
    assert len(items) == 200
    assert ids == world.killmail_ids(PILOT)[:200]
    assert items[0]["zkb"]["hash"] == world.killmail_hash(ids[0])
    assert upstream.stats()["violation_count"] == 0


def test_last_page_is_short_and_the_next_is_empty(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    pages = [zkb_get(client, upstream, f"page/{n}/characterID/{PILOT}/") for n in (2, 3, 4)]
    assert [len(page) for page in pages] == [200, 70, 0]


def test_kills_and_losses_split_the_character_killmails(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    def every(path: str) -> set[int]:
        found: set[int] = set()
        for page in range(1, 4):
            found |= {i["killmail_id"] for i in zkb_get(client, upstream, f"{path}page/{page}/")}
        return found

    kills = every(f"characterID/{PILOT}/kills/")
    losses = every(f"losses/characterID/{PILOT}/")
    assert kills.isdisjoint(losses)
    assert kills | losses == set(world.killmail_ids(PILOT))
    assert all(world.body(i)["victim"].get("character_id") == PILOT for i in losses)


def test_year_month_filter_keeps_only_that_month(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    items = zkb_get(client, upstream, f"characterID/{PILOT}/year/2025/month/3/")
    assert items
    assert all(i["killmail_time"].startswith("2025-03-") for i in items)


def test_year_without_month_is_ignored(upstream: FakeUpstream, client: requests.Session) -> None:
    with_year = zkb_get(client, upstream, f"characterID/{PILOT}/year/2025/")
    without = zkb_get(client, upstream, f"characterID/{PILOT}/")
    assert with_year == without


def test_killmails_under_five_minutes_old_are_withheld(client: requests.Session) -> None:
    world = World(seed=2)
    now = datetime.now(UTC)
    fresh = world.add_character(PILOT, 3, newest=now, days=0)
    older = world.add_character(PILOT, 3, newest=now - timedelta(hours=1), days=0)
    with FakeUpstream(world, zkb_rate=FAST) as upstream:
        listed = {i["killmail_id"] for i in zkb_get(client, upstream, f"characterID/{PILOT}/")}
        recent = zkb_get(client, upstream, f"characterID/{PILOT}/pastSeconds/7200/")
    assert listed == set(older)
    assert not listed & set(fresh)
    assert {i["killmail_id"] for i in recent} == set(older)


def test_ship_type_filter_lists_victims_for_losses_and_attackers_for_kills(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    bodies = [world.body(i) for i in world.all_killmail_ids()]
    flown = {b["killmail_id"]: {a.get("ship_type_id") for a in b["attackers"]} for b in bodies}
    lost = Counter(b["victim"]["ship_type_id"] for b in bodies)
    ship = max(lost, key=lambda t: min(lost[t], sum(t in f for f in flown.values())))
    losses = [b["killmail_id"] for b in bodies if b["victim"]["ship_type_id"] == ship]
    kills = [i for i, ships in flown.items() if ship in ships]
    assert losses
    assert kills
    assert listing(client, upstream, f"shipTypeID/{ship}/losses/") == losses
    assert listing(client, upstream, f"kills/shipTypeID/{ship}/") == kills
    assert listing(client, upstream, f"shipTypeID/{ship}/") == sorted(
        set(losses) | set(kills), reverse=True
    )


def test_solar_system_and_region_filters_list_the_killmails_there(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    bodies = [world.body(i) for i in world.all_killmail_ids()]
    jita = [b["killmail_id"] for b in bodies if b["solar_system_id"] == 30000142]
    forge = [b["killmail_id"] for b in bodies if b["solar_system_id"] in (30000142, 30000144)]
    other = set(world.killmail_ids(OTHER_PILOT))
    assert jita
    assert len(forge) > len(jita)
    assert listing(client, upstream, "solarSystemID/30000142/") == jita
    assert listing(client, upstream, "solarSystemID/30000142/losses/") == jita
    assert listing(client, upstream, "regionID/10000002/") == forge
    assert listing(client, upstream, f"regionID/10000002/characterID/{OTHER_PILOT}/") == [
        i for i in forge if i in other
    ]
    assert listing(client, upstream, "regionID/10000001/") == []


def stats_get(client: requests.Session, upstream: FakeUpstream, path: str) -> Any:
    return zkb_get(client, upstream, "stats/" + path)


def months_total(stats: dict[str, Any]) -> int:
    return sum(m["shipsDestroyed"] + m["shipsLost"] for m in stats["months"].values())


def test_character_stats_count_kills_and_losses_by_month(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    stats = stats_get(client, upstream, f"characterID/{PILOT}/")
    kills = listing(client, upstream, f"characterID/{PILOT}/kills/")
    losses = listing(client, upstream, f"characterID/{PILOT}/losses/")
    assert (stats["type"], stats["id"]) == ("characterID", PILOT)
    assert (stats["shipsDestroyed"], stats["shipsLost"]) == (len(kills), len(losses))
    assert months_total(stats) == len(world.killmail_ids(PILOT))
    assert list(stats["months"]) == sorted(stats["months"])
    by_month = Counter(killmail_time(i).strftime("%Y%m") for i in world.killmail_ids(PILOT))
    for key, month in stats["months"].items():
        assert key == f"{month['year']}{month['month']:02d}"
        assert month["shipsDestroyed"] + month["shipsLost"] == by_month[key]
    assert upstream.stats()["zkb_stats"] == 1


def test_corporation_listing_counts_destroyed_plus_lost(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    pilot = world.tracked_character(PILOT)
    assert pilot is not None
    stats = stats_get(client, upstream, f"corporationID/{pilot.corporation_id}/")
    listed = listing(client, upstream, f"corporationID/{pilot.corporation_id}/")
    assert len(listed) == stats["shipsDestroyed"] + stats["shipsLost"] == months_total(stats)


def test_place_stats_count_every_killmail_as_destroyed(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    for path in ("regionID/10000002/", "solarSystemID/30002187/"):
        stats = stats_get(client, upstream, path)
        assert stats["shipsLost"] == 0
        assert stats["shipsDestroyed"] == len(listing(client, upstream, path)) > 0


def test_ship_type_stats_count_attackers_and_victims(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    stats = stats_get(client, upstream, "shipTypeID/670/")
    assert stats["shipsLost"] == len(listing(client, upstream, "shipTypeID/670/losses/")) > 0
    assert stats["shipsDestroyed"] == len(listing(client, upstream, "shipTypeID/670/kills/"))


def test_stats_of_an_unknown_id_are_zero(upstream: FakeUpstream, client: requests.Session) -> None:
    stats = stats_get(client, upstream, f"characterID/{STRANGER}/")
    assert stats == {
        "type": "characterID",
        "id": STRANGER,
        "shipsDestroyed": 0,
        "shipsLost": 0,
        "months": {},
    }


def test_stats_leave_out_killmails_under_five_minutes_old(client: requests.Session) -> None:
    world = World(seed=2)
    world.add_character(PILOT, 3, newest=datetime.now(UTC), days=0)
    world.add_character(PILOT, 4, newest=datetime.now(UTC) - timedelta(hours=1), days=0)
    with FakeUpstream(world, zkb_rate=FAST) as upstream:
        stats = stats_get(client, upstream, f"characterID/{PILOT}/")
    assert stats["shipsDestroyed"] + stats["shipsLost"] == months_total(stats) == 4


def test_bad_stats_paths_are_errors(upstream: FakeUpstream, client: requests.Session) -> None:
    for path in ("flavourID/1/", "characterID/", f"characterID/{PILOT}/page/2/", "characterID/x/"):
        assert "error" in stats_get(client, upstream, path), path
    assert upstream.stats()["violation_count"] == 0
    assert "error" in stats_get(client, upstream, f"characterID/{PILOT}")
    assert rules(upstream) == ["zkb_trailing_slash"]


def test_stats_share_the_zkillboard_rate(world: World, client: requests.Session) -> None:
    with FakeUpstream(world, zkb_rate=1.0) as upstream:
        statuses = [
            client.get(upstream.zkb_url + path, timeout=10).status_code
            for path in (f"characterID/{PILOT}/", f"stats/characterID/{PILOT}/") * 2
        ]
    assert statuses[:2] == [200, 200]
    assert 429 in statuses[2:]
    assert rules(upstream)[0] == "zkb_rate"


def test_page_beyond_100_is_an_error_but_not_a_violation(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    answer = zkb_get(client, upstream, f"characterID/{PILOT}/page/101/")
    assert "error" in answer
    assert upstream.stats()["zkb_error_answers"] == 1
    assert upstream.stats()["violation_count"] == 0


def test_query_string_is_forbidden_and_counted(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    response = client.get(upstream.zkb_url + f"characterID/{PILOT}/?page=2", timeout=10)
    assert response.status_code == 403
    assert rules(upstream) == ["zkb_query_string"]


DISABLED = ["limit/10/", "startTime/202501010000/", "endTime/202501010000/"]
DISABLED += ["beforeKillID/1/", "afterKillID/1/", "orderDirection/asc/"]


@pytest.mark.parametrize("modifier", DISABLED)
def test_disabled_modifier_is_an_error_and_counted(
    upstream: FakeUpstream, client: requests.Session, modifier: str
) -> None:
    answer = zkb_get(client, upstream, f"characterID/{PILOT}/{modifier}")
    assert "error" in answer
    assert rules(upstream) == ["zkb_disabled_modifier"]


def test_comma_separated_ids_are_an_error_and_counted(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    answer = zkb_get(client, upstream, f"characterID/{PILOT},{OTHER_PILOT}/")
    assert "error" in answer
    assert rules(upstream) == ["zkb_comma_ids"]


def test_missing_trailing_slash_is_an_error_and_counted(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    answer = zkb_get(client, upstream, f"characterID/{PILOT}")
    assert "error" in answer
    assert rules(upstream) == ["zkb_trailing_slash"]


def test_unknown_segment_is_an_error_but_not_a_violation(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    assert "error" in zkb_get(client, upstream, f"characterID/{PILOT}/flavour/vanilla/")
    assert upstream.stats()["violation_count"] == 0


def test_user_agent_without_contact_is_counted(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    bare = {"User-Agent": "python-requests/2"}
    client.get(upstream.zkb_url + f"characterID/{PILOT}/", headers=bare, timeout=10)
    client.get(upstream.esi_url + f"characters/{PILOT}/", headers=bare, timeout=10)
    assert rules(upstream) == ["zkb_user_agent", "esi_user_agent"]


def test_answer_is_gzipped_only_when_accepted_and_missing_gzip_is_counted(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    gzipped = client.get(upstream.zkb_url + f"characterID/{PILOT}/", timeout=10)
    plain = client.get(
        upstream.zkb_url + f"characterID/{PILOT}/",
        headers={"Accept-Encoding": "identity"},
        timeout=10,
    )
    assert gzipped.headers["Content-Encoding"] == "gzip"
    assert "Content-Encoding" not in plain.headers
    assert gzipped.json() == plain.json()
    assert rules(upstream) == ["zkb_accept_encoding"]


def test_third_request_inside_a_second_gets_429(world: World, client: requests.Session) -> None:
    with FakeUpstream(world, zkb_rate=1.0) as upstream:
        url = upstream.zkb_url + f"characterID/{PILOT}/"
        statuses = [client.get(url, timeout=10) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["Retry-After"]) >= 1
    assert rules(upstream) == ["zkb_rate"]


def test_requests_paced_at_the_rate_are_never_refused(
    world: World, client: requests.Session
) -> None:
    with FakeUpstream(world, zkb_rate=20.0) as upstream:
        for _ in range(8):
            assert client.get(upstream.zkb_url + f"characterID/{PILOT}/", timeout=10).ok
            time.sleep(0.06)
    assert upstream.stats()["violation_count"] == 0


def test_more_than_40_errors_are_redirected_to_blocked_json(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    for _ in range(41):
        zkb_get(client, upstream, f"characterID/{PILOT}/page/0/")
    response = client.get(upstream.zkb_url + f"characterID/{PILOT}/", allow_redirects=False)
    followed = client.get(upstream.zkb_url + f"characterID/{PILOT}/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/zkb/api/blocked.json"
    assert "error" in followed.json()
    assert rules(upstream) == ["zkb_blocked", "zkb_blocked"]


def test_item_shapes_full_zkbonly_and_mixed(world: World, client: requests.Session) -> None:
    cutoff = datetime(2026, 6, 27, tzinfo=UTC)
    with FakeUpstream(world, zkb_rate=FAST, item_shape="zkbonly") as upstream:
        zkb_only = zkb_get(client, upstream, f"characterID/{PILOT}/")
        upstream.configure(item_shape="mixed")
        mixed = zkb_get(client, upstream, f"characterID/{PILOT}/")
        upstream.configure(item_shape="full")
        full = zkb_get(client, upstream, f"characterID/{PILOT}/")
    assert all(set(item) == {"killmail_id", "zkb"} for item in zkb_only)
    for item in mixed:
        has_body = killmail_time(item["killmail_id"]) >= cutoff
        assert ("victim" in item) == has_body
    assert {item.pop("zkb")["hash"] for item in full} == {i["zkb"]["hash"] for i in zkb_only}
    assert full == [world.body(i["killmail_id"]) for i in zkb_only]


def test_a_character_with_25000_killmails_reaches_page_100(client: requests.Session) -> None:
    world = World(seed=5)
    world.add_character(PILOT, 25_000)
    with FakeUpstream(world, zkb_rate=FAST, item_shape="zkbonly") as upstream:
        last = zkb_get(client, upstream, f"characterID/{PILOT}/page/100/")
        beyond = zkb_get(client, upstream, f"characterID/{PILOT}/page/101/")
    assert [i["killmail_id"] for i in last] == world.killmail_ids(PILOT)[19_800:20_000]
    assert "error" in beyond


# -- ESI ------------------------------------------------------------------------------------


def test_killmail_body_is_exactly_the_world_body_with_limit_headers(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    killmail_id = world.killmail_ids(PILOT)[5]
    url = f"{upstream.esi_url}killmails/{killmail_id}/{world.killmail_hash(killmail_id)}/"
    response = client.get(url, timeout=10)
    assert response.status_code == 200
    assert response.json() == world.body(killmail_id)
    assert response.headers["X-Ratelimit-Group"] == "killmail"
    assert response.headers["X-Ratelimit-Limit"] == "3600/15m"
    assert response.headers["X-Ratelimit-Remaining"] == "3598"
    assert response.headers["X-Ratelimit-Used"] == "2"
    assert response.headers["X-ESI-Error-Limit-Remain"] == "100"
    assert int(response.headers["X-ESI-Error-Limit-Reset"]) > 0
    assert upstream.stats()["violation_count"] == 0


def test_wrong_hash_answers_422_and_costs_5_tokens(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    killmail_id = world.killmail_ids(PILOT)[0]
    response = client.get(f"{upstream.esi_url}killmails/{killmail_id}/{'0' * 40}/", timeout=10)
    assert response.status_code == 422
    assert response.json() == {"error": "Invalid killmail_id and/or killmail_hash"}
    assert response.headers["X-Ratelimit-Used"] == "5"
    assert response.headers["X-ESI-Error-Limit-Remain"] == "99"


def test_names_resolve_every_referenced_entity(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    for category, ids in world.referenced_entities().items():
        ordered = sorted(ids)
        for start in range(0, len(ordered), 1000):
            chunk = ordered[start : start + 1000]
            response = client.post(upstream.esi_url + "universe/names/", json=chunk, timeout=10)
            assert response.status_code == 200, category
            assert {e["category"] for e in response.json()} == {category}
            assert sorted(e["id"] for e in response.json()) == chunk


def test_names_404_when_one_id_is_unresolvable(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    world = upstream.world
    world.add_unresolvable([OTHER_PILOT])
    try:
        response = client.post(
            upstream.esi_url + "universe/names/", json=[PILOT, OTHER_PILOT], timeout=10
        )
        detail = client.get(f"{upstream.esi_url}characters/{OTHER_PILOT}/", timeout=10)
    finally:
        world.unresolvable_ids.discard(OTHER_PILOT)
    sample = (SAMPLES_DIR / "esi_universe_names_404_issue1181.json").read_bytes()
    assert response.status_code == 404
    assert response.content == sample
    assert detail.status_code == 404


def test_names_404_for_an_id_nobody_references(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    response = client.post(upstream.esi_url + "universe/names/", json=[STRANGER], timeout=10)
    assert response.status_code == 404


@pytest.mark.parametrize("payload", [list(range(1001)), {"ids": [1]}, [], ["x"]])
def test_names_reject_more_than_1000_ids_or_a_non_list(
    upstream: FakeUpstream, client: requests.Session, payload: Any
) -> None:
    response = client.post(upstream.esi_url + "universe/names/", json=payload, timeout=10)
    assert response.status_code == 400


def test_details_do_not_repeat_the_id(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    pilot = world.tracked_character(PILOT)
    assert pilot is not None
    assert pilot.alliance_id is not None
    routes = {
        f"characters/{PILOT}/": {"name", "corporation_id", "birthday", "security_status"},
        f"corporations/{pilot.corporation_id}/": {"name", "ticker", "ceo_id", "member_count"},
        f"alliances/{pilot.alliance_id}/": {"name", "ticker", "executor_corporation_id"},
        "universe/types/670/": {"name", "group_id"},
    }
    own_id_keys = ("character_id", "corporation_id", "alliance_id", "type_id")
    for (route, keys), own_id in zip(routes.items(), own_id_keys, strict=True):
        body = client.get(upstream.esi_url + route, timeout=10).json()
        assert keys <= set(body), route
        assert "id" not in body, route
        assert own_id not in body, route
    assert upstream.stats()["esi_details"] == 4


def test_details_404_for_unknown_ids(upstream: FakeUpstream, client: requests.Session) -> None:
    for route in (
        f"characters/{STRANGER}/",
        "corporations/1/",
        "alliances/1/",
        "universe/types/1/",
    ):
        response = client.get(upstream.esi_url + route, timeout=10)
        assert response.status_code == 404
        assert response.json()["error"].endswith("not found")


def test_etag_refresh_answers_304(upstream: FakeUpstream, client: requests.Session) -> None:
    upstream.configure(esi_buckets={"character": (3600, 900.0)})  # no bucket by default
    url = f"{upstream.esi_url}characters/{PILOT}/"
    first = client.get(url, timeout=10)
    again = client.get(url, headers={"If-None-Match": first.headers["ETag"]}, timeout=10)
    expires = datetime.strptime(first.headers["Expires"], "%a, %d %b %Y %H:%M:%S GMT")
    assert expires.replace(tzinfo=UTC) > datetime.now(UTC) + timedelta(minutes=50)
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["X-Ratelimit-Used"] == "3"


def test_killmail_bucket_exhaustion_answers_429_with_retry_after(
    world: World, client: requests.Session
) -> None:
    killmail_id = world.killmail_ids(PILOT)[0]
    with FakeUpstream(world, esi_killmail_bucket=(10, 60.0)) as upstream:
        url = f"{upstream.esi_url}killmails/{killmail_id}/{world.killmail_hash(killmail_id)}/"
        answers = [client.get(url, timeout=10) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert answers[4].headers["X-Ratelimit-Remaining"] == "0"
    assert answers[4].headers["X-Ratelimit-Limit"] == "10/1m"
    assert 1 <= int(answers[5].headers["Retry-After"]) <= 60
    assert rules(upstream) == ["esi_rate_limit"]


def test_error_limit_exhaustion_answers_420(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    url = f"{upstream.esi_url}characters/{STRANGER}/"
    answers = [client.get(url, timeout=10) for _ in range(100)]
    remains = [int(a.headers["X-ESI-Error-Limit-Remain"]) for a in answers]
    after = client.get(f"{upstream.esi_url}characters/{PILOT}/", timeout=10)
    assert remains[0] == 99
    assert remains[-1] == 0
    assert after.status_code == 420
    assert rules(upstream) == ["esi_error_limit"]


def test_missing_compatibility_date_is_counted(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    headers = {"X-Compatibility-Date": ""}
    assert client.get(f"{upstream.esi_url}characters/{PILOT}/", headers=headers).ok
    assert rules(upstream) == ["esi_compatibility_date"]


def test_storm_420_and_burst_429_are_not_the_clients_fault(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    upstream.configure(burst_429=2)
    burst = [client.get(upstream.zkb_url + f"characterID/{PILOT}/") for _ in range(3)]
    upstream.configure(storm_420=0.5)
    storm = client.get(f"{upstream.esi_url}characters/{PILOT}/")
    time.sleep(0.6)
    calm = client.get(f"{upstream.esi_url}characters/{PILOT}/")
    assert [r.status_code for r in burst] == [429, 429, 200]
    assert burst[0].headers["Retry-After"] == "1"
    assert storm.status_code == 420
    assert storm.headers["X-ESI-Error-Limit-Remain"] == "0"
    assert calm.status_code == 200
    assert upstream.stats()["violation_count"] == 0
    assert upstream.stats()["faults"] == {"burst_429": 2, "storm_420": 1}


# -- faults ---------------------------------------------------------------------------------


def statuses_with_seed(world: World, client: requests.Session, seed: int) -> list[int]:
    """Return the statuses of 40 detail requests under a 30% 5xx rate."""
    with FakeUpstream(world, fault_seed=seed) as upstream:
        upstream.configure(fault_rate_5xx=0.3)
        url = f"{upstream.esi_url}characters/{PILOT}/"
        return [client.get(url, timeout=10).status_code for _ in range(40)]


def test_5xx_faults_are_reproducible_with_a_seed(world: World, client: requests.Session) -> None:
    first = statuses_with_seed(world, client, seed=11)
    assert first == statuses_with_seed(world, client, seed=11)
    assert first != statuses_with_seed(world, client, seed=12)
    assert {502, 503, 504} & set(first)
    assert 200 in first


def test_truncated_fault_sends_half_a_json_body(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    upstream.configure(fault_rate_truncated=1.0)
    for url in (
        upstream.zkb_url + f"characterID/{PILOT}/",
        f"{upstream.esi_url}universe/types/670/",
    ):
        response = client.get(url, timeout=10)
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)


def test_html_fault_sends_an_html_page(upstream: FakeUpstream, client: requests.Session) -> None:
    upstream.configure(fault_rate_html=1.0)
    response = client.get(f"{upstream.esi_url}characters/{PILOT}/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")


def test_timeout_fault_holds_the_answer(upstream: FakeUpstream, client: requests.Session) -> None:
    upstream.configure(fault_rate_timeout=1.0, timeout_hold=0.5)
    with pytest.raises(requests.Timeout):
        client.get(f"{upstream.esi_url}characters/{PILOT}/", timeout=0.1)
    assert upstream.stats()["faults"] == {"timeout": 1}


# -- serving --------------------------------------------------------------------------------


def test_dozens_of_concurrent_clients_are_all_answered(
    upstream: FakeUpstream, world: World
) -> None:
    ids = world.killmail_ids(PILOT)[:120]

    def fetch(killmail_id: int) -> int:
        url = f"{upstream.esi_url}killmails/{killmail_id}/{world.killmail_hash(killmail_id)}/"
        return requests.get(url, headers=GOOD_HEADERS, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=40) as pool:
        assert set(pool.map(fetch, ids)) == {200}
    stats = upstream.stats()
    assert stats["esi_killmails"] == 120
    assert stats["violation_count"] == 0


def test_refetching_a_killmail_is_counted(
    upstream: FakeUpstream, client: requests.Session, world: World
) -> None:
    killmail_id = world.killmail_ids(PILOT)[0]
    zkb_get(client, upstream, f"characterID/{PILOT}/")
    url = f"{upstream.esi_url}killmails/{killmail_id}/{world.killmail_hash(killmail_id)}/"
    client.get(url, timeout=10)
    client.get(url, timeout=10)
    stats = upstream.stats()
    assert stats["esi_killmail_refetches"] == 1
    assert stats["esi_killmail_fetched_despite_body"] == 2


def test_control_endpoints_configure_and_report(
    upstream: FakeUpstream, client: requests.Session
) -> None:
    changed = client.post(upstream.url + "/_fake/config", json={"item_shape": "zkbonly"})
    rejected = client.post(upstream.url + "/_fake/config", json={"no_such_key": 1})
    client.get(upstream.zkb_url + f"characterID/{PILOT}/?x=1")
    stats = client.get(upstream.url + "/_fake/stats").json()
    world = client.get(upstream.url + "/_fake/world").json()
    assert changed.json()["item_shape"] == "zkbonly"
    assert rejected.status_code == 400
    assert stats["violation_count"] == 1
    assert stats["violations"][0]["rule"] == "zkb_query_string"
    assert world["characters"][str(PILOT)]["killmails"] == 470
    client.post(upstream.url + "/_fake/reset_stats")
    assert upstream.stats()["violation_count"] == 0


def test_main_prints_its_urls_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "fakeupstream", "--port", "0"]
    command += ["--character", f"{PILOT}:250", "--item-shape", "mixed", "--zkb-rate", "100"]
    command += ["--raw-since", "2026-08-01"]
    project = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(project)}
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        urls = json.loads(process.stdout.readline())
        response = requests.get(urls["zkb_url"] + f"characterID/{PILOT}/", headers=GOOD_HEADERS)
        assert len(response.json()) == 200
        totals = requests.get(urls["r2z2_url"] + "history/totals.json", headers=GOOD_HEADERS)
        assert sum(totals.json().values()) == 250
        config = requests.get(urls["url"] + "/_fake/config").json()
        assert config["raw_since"] == "2026-08-01"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
