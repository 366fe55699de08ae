"""Killmails filtered by the victim's ship class and category, by constellation and region,
from the stored entities: the queryset methods, the admin's list filters and entity lists,
and the GraphQL arguments and nested fields."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from killboard.ingest import ingest_killmails
from killboard.models import Constellation, ItemGroup, Killmail, SolarSystem
from tests.conftest import logged_in_client
from tests.factories import (
    AttackerFactory,
    ConstellationFactory,
    ItemCategoryFactory,
    ItemGroupFactory,
    ItemTypeFactory,
    KillmailFactory,
    RegionFactory,
    SolarSystemFactory,
    VictimFactory,
)

pytestmark = pytest.mark.django_db

KILLMAILS = reverse("admin:killboard_killmail_changelist")
# EVE's ids, so the admin offers the ship classes of its Ship category by default.
SHIP, STRUCTURE = 6, 65
FRIGATE, BATTLESHIP, CITADEL = 25, 27, 1657
RIFTER, RAVEN, ASTRAHUS = 587, 638, 35832
THE_FORGE, DOMAIN = 10_000_002, 10_000_043
KIMOTORO, OTAMA, THRONE_WORLDS = 20_000_020, 20_000_021, 20_000_322
JITA, UKKALEN, AMARR = 30_000_142, 30_000_154, 30_002_187
UNKNOWN = 77_777  # an id no stored row has, and no stored row references
GRAPHQL = """
query Killmails(
  $shipTypeId: BigInt, $shipGroupId: BigInt, $shipCategoryId: BigInt,
  $constellationId: BigInt, $regionId: BigInt, $characterId: BigInt
) {
  killmails(
    shipTypeId: $shipTypeId, shipGroupId: $shipGroupId, shipCategoryId: $shipCategoryId,
    constellationId: $constellationId, regionId: $regionId, characterId: $characterId
  ) {
    items {
      killmailId
      solarSystem {
        id name securityStatus
        constellation { id name region { id name } }
      }
      victim { shipType { id name group { id name category { id name } } } }
      attackers { shipType { id group { name } } }
    }
  }
}
"""


@dataclass
class Losses:
    """One killmail per victim ship: a frigate and a battleship in The Forge, a citadel in
    Domain; the frigate's killer flew a battleship."""

    frigate: int
    battleship: int
    citadel: int
    killer: int


def universe() -> None:
    """The categories, groups, types, regions, constellations and systems, named."""
    ship = ItemCategoryFactory(id=SHIP, name="Ship")
    structure = ItemCategoryFactory(id=STRUCTURE, name="Structure")
    frigate = ItemGroupFactory(id=FRIGATE, name="Frigate", category=ship)
    battleship = ItemGroupFactory(id=BATTLESHIP, name="Battleship", category=ship)
    citadel = ItemGroupFactory(id=CITADEL, name="Citadel", category=structure)
    ItemTypeFactory(id=RIFTER, name="Rifter", group=frigate)
    ItemTypeFactory(id=RAVEN, name="Raven", group=battleship)
    ItemTypeFactory(id=ASTRAHUS, name="Astrahus", group=citadel)
    forge = RegionFactory(id=THE_FORGE, name="The Forge")
    domain = RegionFactory(id=DOMAIN, name="Domain")
    kimotoro = ConstellationFactory(id=KIMOTORO, name="Kimotoro", region=forge)
    otama = ConstellationFactory(id=OTAMA, name="Otama", region=forge)
    throne_worlds = ConstellationFactory(id=THRONE_WORLDS, name="Throne Worlds", region=domain)
    SolarSystemFactory(id=JITA, name="Jita", constellation=kimotoro, security_status=0.95)
    SolarSystemFactory(id=UKKALEN, name="Ukkalen", constellation=otama, security_status=0.6)
    SolarSystemFactory(id=AMARR, name="Amarr", constellation=throne_worlds, security_status=1.0)


def loss(ship_type_id: int, system_id: int, **body: Any) -> dict[str, Any]:
    """A killmail body: the victim flew `ship_type_id` in `system_id`, a Raven killed it."""
    return KillmailFactory(
        solar_system_id=system_id,
        victim=VictimFactory(ship_type_id=ship_type_id),
        attackers=[AttackerFactory(ship_type_id=RAVEN)],
        **body,
    )


def stored_losses() -> Losses:
    universe()
    bodies = [
        loss(RIFTER, JITA, killmail_time="2025-03-01T12:00:00Z"),
        loss(RAVEN, UKKALEN, killmail_time="2025-03-02T12:00:00Z"),
        loss(ASTRAHUS, AMARR, killmail_time="2025-03-03T12:00:00Z"),
    ]
    assert ingest_killmails(bodies).new == 3
    frigate, battleship, citadel = (body["killmail_id"] for body in bodies)
    return Losses(frigate, battleship, citadel, bodies[0]["attackers"][0]["character_id"])


def ids(queryset: Any) -> list[int]:
    return list(queryset.order_by("killmail_id").values_list("killmail_id", flat=True))


# -- the queryset ----------------------------------------------------------------------------


def test_killmails_are_filtered_by_the_victims_ship_class():
    losses = stored_losses()

    assert ids(Killmail.objects.of_ship_group(FRIGATE)) == [losses.frigate]
    # The frigate's killer flew a battleship: the attackers' ships do not count.
    assert ids(Killmail.objects.of_ship_group(BATTLESHIP)) == [losses.battleship]
    assert ids(Killmail.objects.of_ship_group(CITADEL)) == [losses.citadel]


def test_killmails_are_filtered_by_the_victims_ship_type():
    losses = stored_losses()

    assert ids(Killmail.objects.of_ship_type(RIFTER)) == [losses.frigate]
    # Every killmail's attacker flew a Raven: only the battleship's victim counts.
    assert ids(Killmail.objects.of_ship_type(RAVEN)) == [losses.battleship]
    assert not Killmail.objects.of_ship_type(UNKNOWN).exists()


def test_a_pilots_killmails_come_once_each_newest_first_whatever_their_role():
    """Victim and attacker of one killmail (their own bomb), attacker in an older one, and
    quiet since while others fight on: each of their killmails once, newest first, and a
    page taken anywhere in the list holds what the whole list holds there."""
    pilot = 90_000_001
    own_bomb = KillmailFactory(
        killmail_time="2025-02-01T00:00:00Z",
        victim=VictimFactory(character_id=pilot),
        attackers=[AttackerFactory(character_id=pilot), AttackerFactory()],
    )
    older = KillmailFactory(
        killmail_time="2025-01-01T00:00:00Z",
        attackers=[AttackerFactory(), AttackerFactory(character_id=pilot)],
    )
    since = [KillmailFactory(killmail_time=f"2025-03-{day:02}T00:00:00Z") for day in (1, 2, 3)]
    assert ingest_killmails([older, own_bomb, *since]).new == 5

    killmails = Killmail.objects.involving_character(pilot)

    newest_first = [own_bomb["killmail_id"], older["killmail_id"]]
    assert list(killmails.values_list("killmail_id", flat=True)) == newest_first
    assert killmails.count() == 2
    assert [k.killmail_id for k in killmails[1:2]] == newest_first[1:]
    assert not Killmail.objects.involving_character(UNKNOWN).exists()


def test_killmails_are_filtered_by_the_victims_ship_category():
    losses = stored_losses()

    assert ids(Killmail.objects.of_ship_category(SHIP)) == [losses.frigate, losses.battleship]
    assert ids(Killmail.objects.of_ship_category(STRUCTURE)) == [losses.citadel]


def test_killmails_are_filtered_by_region_and_constellation():
    losses = stored_losses()

    assert ids(Killmail.objects.in_region(THE_FORGE)) == [losses.frigate, losses.battleship]
    assert ids(Killmail.objects.in_region(DOMAIN)) == [losses.citadel]
    assert ids(Killmail.objects.in_constellation(KIMOTORO)) == [losses.frigate]
    assert ids(Killmail.objects.in_constellation(OTAMA)) == [losses.battleship]


def test_ids_nothing_stored_knows_filter_to_nothing():
    stored_losses()

    assert not Killmail.objects.of_ship_group(UNKNOWN).exists()
    assert not Killmail.objects.of_ship_category(UNKNOWN).exists()
    assert not Killmail.objects.in_constellation(UNKNOWN).exists()
    assert not Killmail.objects.in_region(UNKNOWN).exists()


def test_killmails_of_types_and_systems_not_enriched_yet_are_in_no_class_or_region():
    stored_losses()
    ingest_killmails([loss(11_111, 30_045_349)])  # neither type nor system known beyond its id
    # A type whose group is known, but not the group itself: a class, but no category yet.
    ItemTypeFactory(id=22_222, group_id=UNKNOWN)
    [unknown_group] = [loss(22_222, JITA)]
    ingest_killmails([unknown_group])

    assert ids(Killmail.objects.of_ship_group(UNKNOWN)) == [unknown_group["killmail_id"]]
    assert Killmail.objects.of_ship_category(SHIP).count() == 2
    assert Killmail.objects.in_region(THE_FORGE).count() == 3
    assert Killmail.objects.count() == 5


def test_filters_combine_with_each_other_and_with_character_and_dates():
    losses = stored_losses()

    in_forge = Killmail.objects.in_region(THE_FORGE)
    assert ids(in_forge.of_ship_category(SHIP).of_ship_group(BATTLESHIP)) == [losses.battleship]
    assert ids(in_forge.of_ship_group(CITADEL)) == []
    assert ids(in_forge.involving_character(losses.killer)) == [losses.frigate]
    assert ids(Killmail.objects.involving_character(losses.killer).in_region(DOMAIN)) == []
    assert ids(in_forge.of_ship_type(RAVEN).involving_character(losses.killer)) == []
    assert ids(Killmail.objects.of_ship_type(RIFTER).involving_character(losses.killer)) == [
        losses.frigate
    ]
    assert ids(in_forge.between(date(2025, 3, 2), None)) == [losses.battleship]


# -- the admin -------------------------------------------------------------------------------


@pytest.fixture
def staff(django_user_model: Any) -> Client:
    return logged_in_client(django_user_model, "killboard.view_killmail")


def listed(client: Client, **filters: Any) -> list[int]:
    response = client.get(KILLMAILS, filters)
    assert response.status_code == 200
    return sorted(k.killmail_id for k in response.context["cl"].result_list)


def choices(client: Client, title: str, **filters: Any) -> list[str]:
    """The names a list filter offers, in order ("All" left out)."""
    specs = client.get(KILLMAILS, filters).context["cl"].filter_specs
    [spec] = [spec for spec in specs if spec.title == title]
    return [name for _, name in spec.lookup_choices]


def test_admin_filters_killmails_by_ship_class_category_and_region(staff: Client):
    losses = stored_losses()

    assert listed(staff, ship_group=FRIGATE) == [losses.frigate]
    assert listed(staff, ship_category=STRUCTURE) == [losses.citadel]
    assert listed(staff, region=THE_FORGE) == [losses.frigate, losses.battleship]
    assert listed(staff, region=THE_FORGE, ship_group=BATTLESHIP) == [losses.battleship]
    assert listed(staff) == [losses.frigate, losses.battleship, losses.citadel]


@pytest.mark.parametrize("value", [str(UNKNOWN), "frigate", "-25", "9" * 30])
def test_admin_filter_values_that_name_nothing_list_nothing(staff: Client, value: str):
    stored_losses()

    assert listed(staff, ship_group=value) == []
    assert listed(staff, region=value) == []


def test_admin_offers_the_stored_named_classes_categories_and_regions_by_name(staff: Client):
    stored_losses()
    ItemGroup.objects.create(id=UNKNOWN, category_id=SHIP)  # not named yet: not offered
    RegionFactory(name="")

    assert choices(staff, "ship category") == ["Ship", "Structure"]
    assert choices(staff, "region") == ["Domain", "The Forge"]
    # The classes of ships, or of the category chosen.
    assert choices(staff, "ship class") == ["Battleship", "Frigate"]
    assert choices(staff, "ship class", ship_category=STRUCTURE) == ["Citadel"]


def test_admin_killmail_list_takes_the_same_queries_for_more_killmails(staff: Client):
    def queries(filters: dict[str, int]) -> int:
        with CaptureQueriesContext(connection) as context:
            assert staff.get(KILLMAILS, filters).status_code == 200
        return len(context)

    stored_losses()
    few = {name: queries(filters) for name, filters in FILTERINGS.items()}
    ingest_killmails(
        [loss(ship, system) for ship in (RIFTER, RAVEN) for system in (JITA, AMARR)] * 5
    )
    many = {name: queries(filters) for name, filters in FILTERINGS.items()}

    assert many == few


FILTERINGS: dict[str, dict[str, int]] = {
    "none": {},
    "class": {"ship_group": FRIGATE},
    "category and region": {"ship_category": SHIP, "region": THE_FORGE},
}


def test_admin_lists_item_groups_and_categories_with_their_references(admin_client: Client):
    universe()
    ItemGroup.objects.create(id=UNKNOWN, name="Mystery", category_id=99)  # category not stored

    groups = admin_client.get(reverse("admin:killboard_itemgroup_changelist")).content.decode()
    categories = admin_client.get(reverse("admin:killboard_itemcategory_changelist"))

    assert "Battleship" in groups
    assert "Structure" in groups
    assert "#99" in groups
    assert "Structure" in categories.content.decode()


def test_admin_shows_a_types_group_and_category_and_a_systems_constellation_and_region(
    admin_client: Client,
):
    universe()
    ItemTypeFactory(id=22_222, name="Unknown Hull", group_id=UNKNOWN)

    types = admin_client.get(reverse("admin:killboard_itemtype_changelist")).content.decode()
    systems = admin_client.get(reverse("admin:killboard_solarsystem_changelist")).content.decode()
    constellations = admin_client.get(reverse("admin:killboard_constellation_changelist"))
    regions = admin_client.get(reverse("admin:killboard_region_changelist"))

    assert "Frigate" in types
    assert "Structure" in types
    assert f"#{UNKNOWN}" in types
    assert "Throne Worlds" in systems
    assert "Domain" in systems
    assert "0.95" in systems
    assert "Otama" in constellations.content.decode()
    assert "The Forge" in regions.content.decode()


def cells(changelist: str, *columns: str) -> list[tuple[str, ...]]:
    """The change list's rows, in order, as the text of the named columns' cells."""
    found = [
        re.findall(rf'<td class="field-{column}">(.*?)</td>', changelist) for column in columns
    ]
    return list(zip(*found, strict=True))


def test_admin_names_a_types_category_and_a_systems_region_by_id_until_they_are_stored(
    admin_client: Client,
):
    universe()
    ItemGroup.objects.create(id=UNKNOWN, name="Mystery", category_id=99)  # category not stored
    ItemTypeFactory(id=22_222, group_id=UNKNOWN)
    ItemTypeFactory(id=22_223, group_id=UNKNOWN + 1)  # group not stored
    Constellation.objects.create(id=UNKNOWN, name="Mystery", region_id=99)  # region not stored
    SolarSystem.objects.create(id=31_000_001, constellation_id=UNKNOWN)
    SolarSystem.objects.create(id=31_000_002, constellation_id=UNKNOWN + 1)  # not stored

    types = admin_client.get(reverse("admin:killboard_itemtype_changelist")).content.decode()
    systems = admin_client.get(reverse("admin:killboard_solarsystem_changelist")).content.decode()

    # Listed by id; "-" is the admin's empty value.
    assert cells(types, "group_name", "category_name") == [
        ("Frigate", "Ship"),
        ("Battleship", "Ship"),
        ("Mystery", "#99"),
        (f"#{UNKNOWN + 1}", "-"),
        ("Citadel", "Structure"),
    ]
    assert cells(systems, "constellation_name", "region_name") == [
        ("Kimotoro", "The Forge"),
        ("Otama", "The Forge"),
        ("Throne Worlds", "Domain"),
        ("Mystery", "#99"),
        (f"#{UNKNOWN + 1}", "-"),
    ]


@pytest.mark.parametrize(
    "model", ["itemgroup", "itemcategory", "constellation", "region", "solarsystem", "itemtype"]
)
def test_entity_lists_take_the_same_queries_for_more_rows(admin_client: Client, model: str):
    url = reverse(f"admin:killboard_{model}_changelist")

    def queries() -> int:
        with CaptureQueriesContext(connection) as context:
            assert admin_client.get(url).status_code == 200
        return len(context)

    universe()
    few = queries()
    for _ in range(5):
        SolarSystemFactory()
        ItemTypeFactory(group=ItemGroupFactory())

    assert queries() == few


def test_a_types_page_shows_a_group_not_stored_yet(admin_client: Client):
    ItemTypeFactory(id=22_222, name="Unknown Hull", group_id=UNKNOWN)

    response = admin_client.get(reverse("admin:killboard_itemtype_change", args=[22_222]))

    assert response.status_code == 200
    assert "Unknown Hull" in response.content.decode()


@pytest.mark.parametrize("model", ["itemgroup", "itemcategory", "constellation", "region"])
def test_new_entities_are_read_only_in_the_admin(admin_client: Client, model: str):
    universe()
    entity_id = {"itemgroup": FRIGATE, "itemcategory": SHIP}.get(model, THE_FORGE)
    if model == "constellation":
        entity_id = KIMOTORO

    change = admin_client.get(reverse(f"admin:killboard_{model}_change", args=[entity_id]))
    add = admin_client.get(reverse(f"admin:killboard_{model}_add"))

    assert change.status_code == 200
    assert 'name="name"' not in change.content.decode()  # shown, not an input
    assert add.status_code == 403


# -- GraphQL ---------------------------------------------------------------------------------


@pytest.fixture
def api(admin_client: Client, settings: Any) -> Client:
    settings.GRAPHQL_RATE_PER_MINUTE = settings.GRAPHQL_ADDRESS_RATE_PER_MINUTE = 0
    cache.clear()
    return admin_client


def graphql(client: Client, variables: dict[str, Any], query: str = GRAPHQL) -> Any:
    response = client.post(
        "/graphql/",
        json.dumps({"query": query, "variables": variables}),
        content_type="application/json",
    )
    result = response.json()
    assert "errors" not in result, result
    return result["data"]


def killmail_ids(client: Client, **variables: Any) -> list[int]:
    items = graphql(client, variables)["killmails"]["items"]
    return sorted(item["killmailId"] for item in items)


def test_graphql_filters_killmails_by_ship_type_class_category_place_and_character(api: Client):
    losses = stored_losses()

    assert killmail_ids(api, shipTypeId=RAVEN) == [losses.battleship]
    assert killmail_ids(api, shipGroupId=FRIGATE) == [losses.frigate]
    assert killmail_ids(api, shipCategoryId=SHIP) == [losses.frigate, losses.battleship]
    assert killmail_ids(api, constellationId=OTAMA) == [losses.battleship]
    assert killmail_ids(api, regionId=DOMAIN) == [losses.citadel]
    assert killmail_ids(api, regionId=THE_FORGE, shipGroupId=BATTLESHIP) == [losses.battleship]
    assert killmail_ids(api, regionId=THE_FORGE, characterId=losses.killer) == [losses.frigate]
    assert killmail_ids(api, shipGroupId=UNKNOWN) == []
    assert killmail_ids(api, regionId=str(UNKNOWN)) == []  # a BigInt may come as a string


def test_graphql_answers_a_ships_class_and_category_and_a_systems_region(api: Client):
    losses = stored_losses()

    [mail] = graphql(api, {"shipGroupId": FRIGATE})["killmails"]["items"]

    assert mail["killmailId"] == losses.frigate
    assert mail["solarSystem"] == {
        "id": JITA,
        "name": "Jita",
        "securityStatus": 0.95,
        "constellation": {
            "id": KIMOTORO,
            "name": "Kimotoro",
            "region": {"id": THE_FORGE, "name": "The Forge"},
        },
    }
    assert mail["victim"]["shipType"] == {
        "id": RIFTER,
        "name": "Rifter",
        "group": {"id": FRIGATE, "name": "Frigate", "category": {"id": SHIP, "name": "Ship"}},
    }
    assert mail["attackers"] == [{"shipType": {"id": RAVEN, "group": {"name": "Battleship"}}}]


def test_graphql_answers_null_for_what_enrichment_has_not_fetched_yet(api: Client):
    stored_losses()
    ItemTypeFactory(id=22_222, group_id=UNKNOWN)  # its group not stored
    bodies = [loss(22_222, JITA), loss(11_111, 30_045_349)]  # then nothing stored
    ingest_killmails(bodies)

    items = graphql(api, {})["killmails"]["items"]
    by_id = {item["killmailId"]: item for item in items}
    group_unknown, nothing_known = (by_id[body["killmail_id"]] for body in bodies)

    assert group_unknown["victim"]["shipType"]["group"] == {
        "id": UNKNOWN,
        "name": None,
        "category": None,
    }
    assert nothing_known["victim"]["shipType"] == {"id": 11_111, "name": None, "group": None}
    assert nothing_known["solarSystem"] == {
        "id": 30_045_349,
        "name": None,
        "securityStatus": None,
        "constellation": None,
    }


def test_graphql_nested_entities_take_the_same_queries_for_more_killmails(api: Client):
    def queries() -> int:
        with CaptureQueriesContext(connection) as context:
            graphql(api, {"regionId": THE_FORGE})
        return len(context)

    stored_losses()
    few = queries()
    ingest_killmails([loss(ship, JITA) for ship in (RIFTER, RAVEN, 11_111)] * 4)

    assert queries() == few


def test_graphql_item_types_of_items_name_their_group_within_the_depth_limit(api: Client):
    universe()
    ItemTypeFactory(
        id=2_048, name="Damage Control II", group=ItemGroupFactory(name="Damage Control")
    )
    body = loss(RIFTER, JITA)
    body["victim"]["items"][0]["item_type_id"] = 2_048
    ingest_killmails([body])
    query = """
    { killmails { items { items { itemType { name group { name category { name } } } } } } }
    """

    [mail] = graphql(api, {}, query)["killmails"]["items"]

    assert mail["items"][0]["itemType"]["group"]["name"] == "Damage Control"
    assert mail["items"][0]["itemType"]["group"]["category"]["name"].startswith("Category")
