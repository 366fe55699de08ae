"""Factories for ESI killmail bodies (dicts, as ESI sends them) and for stored entities."""

from __future__ import annotations

import hashlib

import factory

from killboard.models import Character


class ItemFactory(factory.DictFactory):
    flag = 5
    item_type_id = factory.Sequence(lambda n: 2000 + n)
    quantity_destroyed = 1
    singleton = 0


class VictimFactory(factory.DictFactory):
    character_id = factory.Sequence(lambda n: 90_000_000 + n)
    corporation_id = 98_000_001
    damage_taken = 1500
    ship_type_id = 587
    items = factory.List([factory.SubFactory(ItemFactory)])


class AttackerFactory(factory.DictFactory):
    character_id = factory.Sequence(lambda n: 91_000_000 + n)
    corporation_id = 98_000_002
    damage_done = 1500
    final_blow = True
    security_status = 1.5
    ship_type_id = 11198
    weapon_type_id = 3178


class KillmailFactory(factory.DictFactory):
    """An ESI body plus its zkb, the shape of a zKillboard page item since 2026-06-27."""

    killmail_id = factory.Sequence(lambda n: 120_000_000 + n)
    killmail_time = "2025-03-01T12:00:00Z"
    solar_system_id = 30_000_142
    victim = factory.SubFactory(VictimFactory)
    attackers = factory.List([factory.SubFactory(AttackerFactory)])
    zkb = factory.LazyAttribute(
        lambda o: {
            "hash": hashlib.sha1(str(o.killmail_id).encode()).hexdigest(),
            "totalValue": 1_250_000.5,
            "points": 1,
            "npc": False,
            "solo": True,
            "awox": False,
        }
    )


class CharacterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Character

    id = factory.Sequence(lambda n: 95_000_000 + n)
    name = factory.Sequence(lambda n: f"Pilot {n}")


class CorporationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "killboard.Corporation"

    id = factory.Sequence(lambda n: 98_500_000 + n)
    name = factory.Sequence(lambda n: f"Corporation {n}")


class AllianceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "killboard.Alliance"

    id = factory.Sequence(lambda n: 99_500_000 + n)
    name = factory.Sequence(lambda n: f"Alliance {n}")


class ItemTypeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "killboard.ItemType"

    id = factory.Sequence(lambda n: 60_000 + n)
    name = factory.Sequence(lambda n: f"Type {n}")


class ItemCategoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "killboard.ItemCategory"

    id = factory.Sequence(lambda n: 900 + n)
    name = factory.Sequence(lambda n: f"Category {n}")
    published = True


class ItemGroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "killboard.ItemGroup"

    id = factory.Sequence(lambda n: 9_000 + n)
    name = factory.Sequence(lambda n: f"Group {n}")
    category = factory.SubFactory(ItemCategoryFactory)
    published = True


class RegionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "killboard.Region"

    id = factory.Sequence(lambda n: 10_900_000 + n)
    name = factory.Sequence(lambda n: f"Region {n}")


class ConstellationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "killboard.Constellation"

    id = factory.Sequence(lambda n: 20_900_000 + n)
    name = factory.Sequence(lambda n: f"Constellation {n}")
    region = factory.SubFactory(RegionFactory)


class SolarSystemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "killboard.SolarSystem"

    id = factory.Sequence(lambda n: 30_900_000 + n)
    name = factory.Sequence(lambda n: f"System {n}")
    constellation = factory.SubFactory(ConstellationFactory)
    security_status = 0.5
