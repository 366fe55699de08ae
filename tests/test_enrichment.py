"""Names and details of stored entities, against the fake ESI over real HTTP on loopback."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import OperationalError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from enrichment import services, tasks
from enrichment.models import QueuedRun
from fakeupstream.server import FakeUpstream
from fakeupstream.world import World
from killboard.entities import DETAILED, ENTITY_KINDS
from killboard.ingest import ingest_killmails
from killboard.models import Alliance, Character, Corporation, ItemType, SolarSystem
from tests.conftest import GENEROUS_BUCKETS
from tests.factories import CharacterFactory, CorporationFactory
from upstream import clients
from upstream.esi import NAMES_MAX_IDS

pytestmark = pytest.mark.django_db
embedded_only = pytest.mark.skipif(
    not django_settings.CELERY_TASK_ALWAYS_EAGER, reason="runs tasks in-process (no broker)"
)

PILOT = 2117325769


@pytest.fixture(scope="module")
def world() -> World:
    """One pilot with enough killmails to reference well over a thousand entities."""
    world = World(seed=5)
    world.add_character(PILOT, 80)
    return world


@pytest.fixture
def upstream(world: World, settings) -> Iterator[FakeUpstream]:
    """A fresh fake ESI per test, which the default client points at."""
    clients._esi.cache_clear()
    with FakeUpstream(world, esi_buckets=GENEROUS_BUCKETS) as server:
        settings.ESI_URL = server.esi_url
        yield server
    clients._esi.cache_clear()
    world.unresolvable_ids.clear()


def store(world: World, count: int) -> None:
    """Ingest the pilot's newest killmails, which registers every entity they reference."""
    ids = world.killmail_ids(PILOT)[:count]
    result = ingest_killmails([{**world.body(i), "zkb": world.zkb(i)} for i in ids])
    assert result.new == count


def entity_ids() -> set[int]:
    """Every distinct id in the six entity tables."""
    return {
        entity_id
        for entry in ENTITY_KINDS
        for entity_id in entry.model.objects.values_list("id", flat=True)
    }


def assert_good_citizen(upstream: FakeUpstream) -> None:
    stats = upstream.stats()
    assert stats["violation_count"] == 0, stats["violations"][:5]
    assert "429" not in stats["statuses"]["esi"]


# -- names -----------------------------------------------------------------------------------


def test_every_entity_is_named_with_one_call_per_thousand_ids(
    upstream: FakeUpstream, world: World
) -> None:
    store(world, 80)
    total = len(entity_ids())
    assert total > NAMES_MAX_IDS

    result = services.resolve_names()

    assert result.calls == math.ceil(total / NAMES_MAX_IDS) == upstream.stats()["esi_names"]
    assert result.resolved == total
    for entry in ENTITY_KINDS:
        for entity in entry.model.objects.all():
            assert entity.name == world.name(entity.id)
    counts = services.enrichment_counts()
    assert sum(c["resolved"] for c in counts.values()) == total
    assert all(c["pending"] == c["unresolvable"] == 0 for c in counts.values())
    assert_good_citizen(upstream)


def test_unresolvable_ids_are_isolated_and_retried_later(
    upstream: FakeUpstream, world: World
) -> None:
    store(world, 80)
    total = len(entity_ids())
    bad_character = Character.objects.exclude(id=PILOT).order_by("id")[10].id
    bad_type = ItemType.objects.order_by("id")[3].id
    world.add_unresolvable([bad_character, bad_type])

    result = services.resolve_names()

    assert sorted(result.unresolvable) == sorted([bad_character, bad_type])
    assert result.resolved == total - 2
    chunks = math.ceil(total / NAMES_MAX_IDS)
    # Each bad id costs at most two calls per halving of its chunk.
    assert chunks < result.calls <= chunks + 2 * 2 * math.ceil(math.log2(NAMES_MAX_IDS))
    assert upstream.stats()["esi_names"] == result.calls
    retry_at = timezone.now() + timedelta(hours=django_settings.NAME_RETRY_HOURS)
    for model, bad_id in ((Character, bad_character), (ItemType, bad_type)):
        entity = model.objects.get(id=bad_id)
        assert entity.name == ""
        assert abs((entity.name_retry_at - retry_at).total_seconds()) < 60
    assert not Character.objects.filter(name="").exclude(id=bad_character).exists()
    counts = services.enrichment_counts()
    assert counts["character"]["unresolvable"] == counts["type"]["unresolvable"] == 1

    # Nothing is due until the retry time has passed: no call at all.
    assert services.resolve_names().calls == 0

    # Later, ESI knows them.
    world.unresolvable_ids.clear()
    Character.objects.filter(id=bad_character).update(name_retry_at=timezone.now())
    ItemType.objects.filter(id=bad_type).update(name_retry_at=timezone.now())
    later = services.resolve_names()
    assert (later.calls, later.resolved) == (1, 2)
    assert Character.objects.get(id=bad_character).name == world.name(bad_character)
    assert_good_citizen(upstream)


@embedded_only
def test_420_storm_pauses_the_name_scan_instead_of_failing(
    upstream: FakeUpstream, world: World
) -> None:
    store(world, 5)
    total = len(entity_ids())
    upstream.configure(storm_420=1.5)
    started = time.monotonic()

    outcome = tasks.resolve_names.apply(kwargs={"details": False})

    assert outcome.get()["resolved"] == total
    assert time.monotonic() - started > 1.0
    stats = upstream.stats()
    # One call met the storm; the retry waited on the shared gate instead of hammering ESI.
    assert stats["faults"] == {"storm_420": 1}
    assert stats["esi_names"] == 1 + math.ceil(total / NAMES_MAX_IDS)
    assert_good_citizen(upstream)


# -- details ---------------------------------------------------------------------------------


def test_details_are_filled_then_refreshed_with_etags(upstream: FakeUpstream, world: World) -> None:
    store(world, 3)
    services.resolve_names()
    ids = sorted(Character.objects.values_list("id", flat=True))

    first = services.enrich_details("character", ids)

    assert first.updated == len(ids)
    pilot = Character.objects.get(id=PILOT)
    details = world.character_details(PILOT)
    assert pilot.corporation_id == details["corporation_id"]
    assert pilot.alliance_id == details.get("alliance_id")
    assert pilot.security_status == details["security_status"]
    assert pilot.birthday == parse_datetime(details["birthday"])
    assert pilot.etag
    assert pilot.expires_at > timezone.now()

    # Within Expires nothing is fetched again.
    assert services.enrich_details("character", ids).fresh == len(ids)
    assert upstream.stats()["esi_characters"] == len(ids)

    # Once stale, a refresh asks with If-None-Match and ESI answers 304.
    long_ago = timezone.now() - timedelta(days=30)
    Character.objects.update(details_updated_at=long_ago, expires_at=long_ago)
    stale = services.stale_entities("character", django_settings.ENRICHMENT_MAX_AGE, 10_000)
    assert stale == ids
    refresh = services.enrich_details("character", stale)
    assert refresh.unchanged == len(ids)
    assert upstream.stats()["statuses"]["esi"]["304"] == len(ids)
    assert not Character.objects.filter(
        details_updated_at__lt=timezone.now() - timedelta(minutes=1)
    )
    assert Character.objects.get(id=PILOT).corporation_id == details["corporation_id"]
    assert_good_citizen(upstream)


def test_each_detail_kind_keeps_its_fields(upstream: FakeUpstream, world: World) -> None:
    store(world, 3)
    pilot = world.tracked_character(PILOT)
    type_id = world.body(world.killmail_ids(PILOT)[0])["victim"]["ship_type_id"]

    services.enrich_details("corporation", [pilot.corporation_id])
    services.enrich_details("alliance", [pilot.alliance_id])
    services.enrich_details("type", [type_id])

    corporation = Corporation.objects.get(id=pilot.corporation_id)
    expected = world.corporation_details(pilot.corporation_id)
    assert (corporation.name, corporation.ticker, corporation.ceo_id) == (
        expected["name"],
        expected["ticker"],
        PILOT,
    )
    assert corporation.member_count == expected["member_count"]
    assert corporation.alliance_id == pilot.alliance_id
    alliance = Alliance.objects.get(id=pilot.alliance_id)
    assert alliance.executor_corporation_id == pilot.corporation_id
    assert alliance.ticker == world.alliance_details(pilot.alliance_id)["ticker"]
    item_type = ItemType.objects.get(id=type_id)
    assert (item_type.name, item_type.group_id) == (
        world.name(type_id),
        world.type_details(type_id)["group_id"],
    )


def test_detail_404_marks_the_entity_not_found(upstream: FakeUpstream) -> None:
    unknown = CorporationFactory(id=98_999_999, name="")

    result = services.enrich_details("corporation", [unknown.id, 12345])

    assert (result.not_found, result.unknown) == (1, 1)
    unknown.refresh_from_db()
    assert unknown.not_found
    assert services.enrichment_counts()["corporation"]["unresolvable"] == 1
    # Never asked for again: not by names, details or refresh.
    assert services.resolve_names().calls == 0
    assert services.enrich_details("corporation", [unknown.id]).unknown == 1
    assert services.stale_entities("corporation", timedelta(0), 10) == []
    assert upstream.stats()["esi_corporations"] == 1


@embedded_only
def test_a_lost_database_connection_retries_the_detail_task(upstream: FakeUpstream, monkeypatch):
    corporation = CorporationFactory(id=98_000_001, name="", details_updated_at=None)
    enrich_details = services.enrich_details
    calls = []

    def lose_the_first_connection(kind: str, ids: list[int]) -> services.DetailResult:
        calls.append(ids)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return enrich_details(kind, ids)

    monkeypatch.setattr(services, "enrich_details", lose_the_first_connection)
    monkeypatch.setattr("config.retries.time.sleep", lambda seconds: None)

    outcome = tasks.enrich_details.apply(args=["corporation", [corporation.id]])

    assert outcome.successful(), outcome.traceback
    assert calls == [[corporation.id], [corporation.id]]
    corporation.refresh_from_db()
    assert corporation.details_updated_at is not None


def test_refresh_takes_the_oldest_details_first_in_bounded_batches() -> None:
    now = timezone.now()
    never = CharacterFactory(details_updated_at=None)
    ten_days = CharacterFactory(details_updated_at=now - timedelta(days=10))
    nine_days = CharacterFactory(details_updated_at=now - timedelta(days=9))
    CharacterFactory(details_updated_at=now - timedelta(days=1))
    CharacterFactory(details_updated_at=None, not_found=True)
    CharacterFactory(details_updated_at=None, name="")  # names come first

    assert services.stale_entities("character", timedelta(days=7), 10) == [
        never.id,
        ten_days.id,
        nine_days.id,
    ]
    assert services.stale_entities("character", timedelta(days=7), 2) == [never.id, ten_days.id]
    assert services.undetailed_entities("character", 10) == [never.id]


@embedded_only
def test_names_then_details_of_what_was_just_named(
    upstream: FakeUpstream, world: World, django_capture_on_commit_callbacks
) -> None:
    store(world, 2)
    with django_capture_on_commit_callbacks(execute=True):
        tasks.resolve_names.apply(kwargs={"details": True})

    for entry in DETAILED:
        undetailed = entry.model.objects.filter(details_updated_at__isnull=True)
        assert not undetailed.exists(), entry.kind
    assert not SolarSystem.objects.filter(name="").exists()
    assert_good_citizen(upstream)


@embedded_only
def test_refresh_stale_task_uses_etags(
    upstream: FakeUpstream, world: World, django_capture_on_commit_callbacks
) -> None:
    store(world, 1)
    services.resolve_names()
    ids = list(Alliance.objects.values_list("id", flat=True))
    services.enrich_details("alliance", ids)
    long_ago = timezone.now() - timedelta(days=30)
    Alliance.objects.update(details_updated_at=long_ago, expires_at=long_ago)

    with django_capture_on_commit_callbacks(execute=True):
        queued = tasks.refresh_stale.apply().get()

    assert queued["alliance"] == len(ids)
    assert upstream.stats()["statuses"]["esi"]["304"] == len(ids)
    assert not Alliance.objects.filter(details_updated_at=long_ago).exists()


# -- triggers and visibility -----------------------------------------------------------------


@embedded_only
def test_in_process_storing_waits_for_enrich_to_name_everything(
    upstream: FakeUpstream, world: World, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        store(world, 3)
    # The storing command is not held up by ESI; `enrich` names it all at once.
    assert upstream.stats()["esi_names"] == 0

    call_command("enrich", "--names-only", stdout=io.StringIO())

    counts = services.enrichment_counts()
    assert all(c["pending"] == 0 for c in counts.values())
    assert upstream.stats()["esi_names"] == math.ceil(len(entity_ids()) / NAMES_MAX_IDS)
    assert upstream.stats()["esi_details"] == 0


def test_a_burst_of_batches_queues_one_name_scan(upstream: FakeUpstream) -> None:
    assert services.claim_queued_run(tasks.RESOLVE_NAMES_RUN)
    # Queued and not started: the following batches need not queue another.
    assert tasks.enqueue_enrichment() is False
    assert not services.claim_queued_run(tasks.RESOLVE_NAMES_RUN)
    services.release_queued_run(tasks.RESOLVE_NAMES_RUN)
    assert services.claim_queued_run(tasks.RESOLVE_NAMES_RUN)
    # A run queued long ago was lost (a purged queue): queue again.
    QueuedRun.objects.update(queued_at=timezone.now() - timedelta(hours=1))
    assert services.claim_queued_run(tasks.RESOLVE_NAMES_RUN)
    assert upstream.stats()["requests"] == 0


def test_counts_tell_resolved_pending_and_unresolvable() -> None:
    CharacterFactory.create_batch(3)
    CharacterFactory(name="")
    CharacterFactory(name="", name_retry_at=timezone.now() + timedelta(hours=1))
    CharacterFactory(name="", not_found=True)

    counts = services.enrichment_counts()

    assert counts["character"] == {"resolved": 3, "pending": 1, "unresolvable": 2}
    assert counts["faction"] == {"resolved": 0, "pending": 0, "unresolvable": 0}
    assert "character 3/1/2" in services.format_counts(counts)


@embedded_only
def test_enrich_command_names_and_details_everything(upstream: FakeUpstream, world: World) -> None:
    store(world, 2)
    world.add_unresolvable([PILOT])
    out = io.StringIO()

    call_command("enrich", stdout=out)

    output = out.getvalue()
    characters = Character.objects.count()
    assert "1 unresolvable" in output
    assert f"character {characters - 1}/0/1" in output
    for model in (entry.model for entry in DETAILED):
        assert not model.objects.filter(details_updated_at__isnull=True).exclude(name="").exists()
    assert_good_citizen(upstream)
