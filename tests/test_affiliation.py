"""Pilots' corporation, alliance and faction from POST /characters/affiliation/, a thousand a
call, against the fake ESI over real HTTP on loopback."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from enrichment import services, tasks
from fakeupstream.server import FakeUpstream
from fakeupstream.world import World
from killboard.models import Alliance, Character, Corporation, Faction
from upstream.esi import AFFILIATION_MAX_IDS

pytestmark = pytest.mark.django_db
embedded_only = pytest.mark.skipif(
    not django_settings.CELERY_TASK_ALWAYS_EAGER, reason="runs tasks in-process (no broker)"
)


def new_pilots(world: World, count: int) -> list[int]:
    """Pilots the fake knows, stored as ingest stores them: an id and nothing else."""
    ids = world.add_characters(count)
    Character.objects.bulk_create([Character(id=character_id) for character_id in ids])
    return ids


def affiliation_calls(fake: FakeUpstream) -> int:
    return fake.esi_report()["calls"]["by_family"].get("esi_affiliation", 0)


def test_affiliation_of_10000_new_pilots_takes_10_calls(fake: FakeUpstream, world: World) -> None:
    ids = new_pilots(world, 10_000)

    result = services.resolve_affiliations()

    assert result.calls == affiliation_calls(fake) == 10_000 // AFFILIATION_MAX_IDS
    assert (result.updated, result.unknown) == (10_000, [])
    expected = {character_id: world.affiliation(character_id) for character_id in ids}
    stored = Character.objects.values_list("id", "corporation_id", "alliance_id", "faction_id")
    for character_id, corporation_id, alliance_id, faction_id in stored:
        answer = expected[character_id]
        assert corporation_id == answer["corporation_id"]
        assert alliance_id == answer.get("alliance_id")
        assert faction_id == answer.get("faction_id")
    assert not Character.objects.filter(affiliation_updated_at__isnull=True).exists()
    # Every corporation, alliance and faction named gets a row for the name scan and details.
    for model, key in ((Corporation, "corporation_id"), (Alliance, "alliance_id")):
        named = {answer[key] for answer in expected.values() if key in answer}
        assert set(model.objects.values_list("id", flat=True)) == named
        assert len(result.created[model._meta.model_name]) == len(named) > 1
    factions = {answer["faction_id"] for answer in expected.values() if "faction_id" in answer}
    assert set(Faction.objects.values_list("id", flat=True)) == factions != set()
    # No pilot's own route was asked, and nothing is due any more.
    assert fake.stats()["esi_characters"] == 0
    assert services.resolve_affiliations().calls == 0
    report = fake.esi_report()
    assert report["breaches"] == {key: 0 for key in report["breaches"]}


def test_an_unknown_pilot_is_isolated_by_halving_and_asked_again_later(
    fake: FakeUpstream, world: World
) -> None:
    ids = new_pilots(world, AFFILIATION_MAX_IDS)
    known = Character.objects.get(id=ids[0])
    bad = ids[700]
    world.add_unresolvable([bad])

    result = services.resolve_affiliations()

    assert result.unknown == [bad]
    assert result.updated == AFFILIATION_MAX_IDS - 1
    # Each halving costs two calls at most, down to the lone id.
    assert 1 < result.calls <= 1 + 2 * math.ceil(math.log2(AFFILIATION_MAX_IDS))
    assert affiliation_calls(fake) == result.calls
    pilot = Character.objects.get(id=bad)
    assert pilot.corporation_id is None
    assert pilot.affiliation_updated_at is not None
    assert services.enrichment_counts()["character"]["failed"] == 1
    known.refresh_from_db()
    assert known.corporation_id == world.affiliation(known.id)["corporation_id"]

    # Not asked again on every scan...
    assert services.resolve_affiliations().calls == 0
    # ...but once NAME_RETRY_HOURS have passed, when ESI may know the new pilot.
    world.unresolvable_ids.clear()
    hours = timedelta(hours=django_settings.NAME_RETRY_HOURS + 1)
    Character.objects.filter(id=bad).update(affiliation_updated_at=timezone.now() - hours)
    later = services.resolve_affiliations()
    assert (later.calls, later.updated) == (1, 1)
    assert Character.objects.get(id=bad).corporation_id == world.affiliation(bad)["corporation_id"]
    assert services.enrichment_counts()["character"]["failed"] == 0


def test_a_refresh_asks_again_only_affiliations_older_than_the_max_age(
    fake: FakeUpstream, world: World
) -> None:
    ids = new_pilots(world, 30)
    services.resolve_affiliations()
    stale = ids[:12]
    long_ago = timezone.now() - django_settings.ENRICHMENT_MAX_AGE - timedelta(hours=1)
    Character.objects.filter(id__in=stale).update(affiliation_updated_at=long_ago)
    # ESI no longer knows one of them: what was known of it is kept.
    gone = stale[0]
    corporation_id = Character.objects.get(id=gone).corporation_id
    world.add_unresolvable([gone])

    assert services.resolve_affiliations().calls == 0  # not stale for a normal scan
    result = services.resolve_affiliations(refresh=True)

    assert result.updated == len(stale) - 1
    assert result.unknown == [gone]
    assert not Character.objects.filter(affiliation_updated_at=long_ago).exists()
    assert Character.objects.get(id=gone).corporation_id == corporation_id
    assert services.affiliation_due(refresh=True) == []


@embedded_only
def test_the_name_scan_queues_affiliations_and_the_corporations_they_bring_are_named(
    fake: FakeUpstream, world: World, django_capture_on_commit_callbacks: Any
) -> None:
    new_pilots(world, 50)

    with django_capture_on_commit_callbacks(execute=True):
        tasks.resolve_names.apply(kwargs={"details": True})

    assert not Character.objects.filter(name="").exists()
    assert not Character.objects.filter(corporation_id__isnull=True).exists()
    corporations = Corporation.objects.all()
    assert corporations.exists()
    # Named by a second scan, and detailed after it; the pilots' own details were not asked.
    assert not corporations.filter(name="").exists()
    assert not corporations.filter(details_updated_at__isnull=True).exists()
    stats = fake.stats()
    assert stats["esi_characters"] == 0
    assert affiliation_calls(fake) == 1
