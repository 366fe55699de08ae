"""zKillboard statistics and the new filters through the zKillboard client, against the fake.

The client takes its slots from the shared limiter (`killboard.ratelimit`, a database row).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from fakeupstream.server import FakeUpstream
from fakeupstream.world import REGIONS, World, killmail_time
from killboard import ratelimit
from upstream.zkillboard import (
    TargetStats,
    ZkillboardClient,
    ZkillboardUnavailable,
    page_path,
    parse_stats,
)

pytestmark = pytest.mark.django_db

PILOT = 2117325769
OTHER_PILOT = 95465499
CONTACT = "ops@example.com"


@pytest.fixture
def pilots(world: World) -> World:
    """Two pilots in one corporation; none of their killmails has both on it."""
    world.add_character(PILOT, 260)
    pilot = world.tracked_character(PILOT)
    assert pilot is not None
    world.add_character(OTHER_PILOT, 90, corporation_id=pilot.corporation_id)
    return world


@pytest.fixture
def client(fake: FakeUpstream) -> ZkillboardClient:
    return ZkillboardClient(fake.zkb_url, CONTACT, 1e6, ratelimit)


def every_page(client: ZkillboardClient, target_type: str, target_id: int) -> list[int]:
    """Every killmail id a target's pages list."""
    ids: list[int] = []
    for page in range(1, 101):
        items = client.fetch_page(target_type, target_id, page)
        ids += [item.killmail_id for item in items]
        if len(items) < 200:
            return ids
    return ids


def test_character_stats_months_sum_to_the_total(
    client: ZkillboardClient, pilots: World, fake: FakeUpstream
) -> None:
    stats = client.stats("character", PILOT)
    by_id = pilots.killmail_ids(PILOT)
    by_month = Counter((killmail_time(i).year, killmail_time(i).month) for i in by_id)
    assert stats.total == 260
    assert sum(stats.months.values()) == stats.total
    assert stats.months == dict(by_month)
    assert stats.lost == sum(pilots.participation(i).victim == PILOT for i in by_id) > 0
    assert fake.stats()["violation_count"] == 0


def test_corporation_listing_count_equals_destroyed_plus_lost(
    client: ZkillboardClient, pilots: World
) -> None:
    pilot = pilots.tracked_character(PILOT)
    assert pilot is not None
    stats = client.stats("corporation", pilot.corporation_id)
    assert stats.total == len(every_page(client, "corporation", pilot.corporation_id)) == 350


@pytest.mark.parametrize(
    ("target_type", "target_id"),
    [("ship_type", 670), ("solar_system", 30000142), ("region", 10000002)],
)
def test_body_filters_list_exactly_the_matching_killmails(
    client: ZkillboardClient, pilots: World, target_type: str, target_id: int
) -> None:
    expected = [
        i for i in pilots.all_killmail_ids() if matches(pilots.body(i), target_type, target_id)
    ]
    assert expected
    assert every_page(client, target_type, target_id) == expected


def matches(body: dict[str, Any], target_type: str, target_id: int) -> bool:
    """Whether a body matches a ship type, solar system or region filter (no side)."""
    if target_type == "ship_type":
        ships = [
            body["victim"]["ship_type_id"],
            *(a.get("ship_type_id") for a in body["attackers"]),
        ]
        return target_id in ships
    if target_type == "solar_system":
        return body["solar_system_id"] == target_id
    return REGIONS[body["solar_system_id"]] == target_id


def test_region_stats_count_every_killmail_once(client: ZkillboardClient, pilots: World) -> None:
    stats = client.stats("region", 10000002)
    assert stats.lost == 0
    assert stats.total == len(every_page(client, "region", 10000002))


def test_stats_of_an_unknown_id_are_empty(client: ZkillboardClient, pilots: World) -> None:
    assert client.stats("alliance", 1) == TargetStats(0, 0, {})


def test_stats_that_are_not_json_are_unavailable(
    client: ZkillboardClient, fake: FakeUpstream
) -> None:
    fake.configure(fault_rate_html=1.0)
    with pytest.raises(ZkillboardUnavailable):
        client.stats("character", PILOT)


def test_page_paths_name_every_target_type() -> None:
    assert page_path("character", 9, 2) == "characterID/9/page/2/"
    assert page_path("ship_type", 670, 1, 2026, 7) == "shipTypeID/670/year/2026/month/7/page/1/"
    assert page_path("solar_system", 30000142, 1) == "solarSystemID/30000142/page/1/"
    assert page_path("region", 10000002, 1) == "regionID/10000002/page/1/"
    with pytest.raises(ValueError, match="planet"):
        page_path("planet", 1, 1)


# -- liberal parsing -------------------------------------------------------------------------

MONTH = {"year": 2026, "month": 7, "shipsDestroyed": 3, "shipsLost": 1}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({}, TargetStats(0, 0, {})),
        ({"shipsDestroyed": 5, "shipsLost": 2}, TargetStats(5, 2, {})),
        ({"shipsDestroyed": "5", "shipsLost": None}, TargetStats(0, 0, {})),
        ({"shipsDestroyed": 5.0, "shipsLost": True}, TargetStats(0, 0, {})),
        ({"shipsDestroyed": -3, "shipsLost": 4}, TargetStats(0, 4, {})),
        ({"shipsLost": 4, "months": None}, TargetStats(0, 4, {})),
        ({"shipsLost": 4, "months": []}, TargetStats(0, 4, {})),
        ({"months": {"202607": MONTH}}, TargetStats(0, 0, {(2026, 7): 4})),
        (
            {"months": {"202607": {"shipsLost": 2, "shipsDestroyed": "x"}}},
            TargetStats(0, 0, {(2026, 7): 2}),
        ),
        ({"months": {"2026-07": MONTH, "202613": MONTH, "2026": MONTH}}, TargetStats(0, 0, {})),
        ({"months": {"202607": [], "202608": None}}, TargetStats(0, 0, {})),
    ],
)
def test_odd_statistics_are_read_liberally(answer: dict[str, Any], expected: TargetStats) -> None:
    assert parse_stats(answer) == expected


def test_empty_answers_are_no_statistics_and_other_shapes_unavailable() -> None:
    assert parse_stats([]) == parse_stats(None) == TargetStats(0, 0, {})
    for answer in ([{"shipsLost": 1}], "stats", 3):
        with pytest.raises(ZkillboardUnavailable):
            parse_stats(answer)


def test_total_is_destroyed_plus_lost() -> None:
    assert TargetStats(7, 3, {(2026, 7): 10}).total == 10
