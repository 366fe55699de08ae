"""Names and details of stored entities, against the fake ESI over real HTTP on loopback."""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import OperationalError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from backfill import lifecycle, planning
from backfill import tasks as backfill_tasks
from backfill.models import BackfillJob
from config.background import runner
from enrichment import services, tasks
from enrichment.models import QueuedRun
from fakeupstream.server import FakeUpstream
from fakeupstream.world import World
from killboard.entities import DETAILED, ENTITY_KINDS
from killboard.ingest import ingest_killmails
from killboard.models import (
    Alliance,
    Character,
    Corporation,
    Faction,
    ItemCategory,
    ItemGroup,
    ItemType,
    Killmail,
    Region,
    SolarSystem,
)
from tests.conftest import GENEROUS_BUCKETS
from tests.factories import CharacterFactory, CorporationFactory
from upstream import clients
from upstream.errors import Unavailable
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
    assert all(c["failed"] == 0 for c in counts.values())
    # Named kinds without details (or with theirs on demand) are done; the others wait for them.
    assert counts["faction"]["resolved"] == Faction.objects.count() > 0
    assert counts["corporation"]["pending"] == Corporation.objects.count()
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
    assert counts["character"]["failed"] == counts["type"]["failed"] == 1

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
    # Membership comes from /characters/affiliation/, never from a pilot's details.
    assert pilot.corporation_id is None
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
    assert Character.objects.get(id=PILOT).security_status == details["security_status"]
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
    assert services.enrichment_counts()["corporation"]["failed"] == 1
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
    never = CorporationFactory(details_updated_at=None)
    ten_days = CorporationFactory(details_updated_at=now - timedelta(days=10))
    nine_days = CorporationFactory(details_updated_at=now - timedelta(days=9))
    CorporationFactory(details_updated_at=now - timedelta(days=1))
    CorporationFactory(details_updated_at=None, not_found=True)
    CorporationFactory(details_updated_at=None, name="")  # names come first

    assert services.stale_entities("corporation", timedelta(days=7), 10) == [
        never.id,
        ten_days.id,
        nine_days.id,
    ]
    assert services.stale_entities("corporation", timedelta(days=7), 2) == [
        never.id,
        ten_days.id,
    ]
    assert services.undetailed_entities("corporation", 10) == [never.id]
    assert services.count_due_details("corporation") == 1


def test_pilots_details_are_refreshed_only_where_they_were_fetched_before() -> None:
    now = timezone.now()
    CharacterFactory(details_updated_at=None)  # never shown: not fetched by a refresh either
    stale = CharacterFactory(details_updated_at=now - timedelta(days=10))
    CharacterFactory(details_updated_at=now - timedelta(days=1))

    assert services.stale_entities("character", timedelta(days=7), 10) == [stale.id]
    assert services.undetailed_entities("character", 10) == []
    assert services.count_due_details("character", refresh=True) == 1


@embedded_only
def test_names_then_details_of_what_was_just_named(
    upstream: FakeUpstream, world: World, django_capture_on_commit_callbacks
) -> None:
    store(world, 2)
    with django_capture_on_commit_callbacks(execute=True):
        tasks.resolve_names.apply(kwargs={"details": True})

    for entry in DETAILED:
        undetailed = entry.model.objects.filter(details_updated_at__isnull=True)
        if entry.details_on_demand:
            assert undetailed.count() == entry.model.objects.count() > 0
        else:
            assert not undetailed.exists(), entry.kind
    for entry in ENTITY_KINDS:
        assert not entry.model.objects.filter(name="").exists(), entry.kind
    assert not Character.objects.filter(affiliation_updated_at__isnull=True).exists()
    # Pilots' details wait for something to show them.
    assert upstream.stats()["esi_characters"] == 0
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


def test_a_type_brings_its_group_and_the_group_its_category(
    upstream: FakeUpstream, world: World, django_capture_on_commit_callbacks
) -> None:
    type_ids = world.add_types(40)
    ItemType.objects.bulk_create([ItemType(id=type_id) for type_id in type_ids])

    with django_capture_on_commit_callbacks(execute=True):
        tasks.send_details("type", type_ids)

    groups = {world.type_details(type_id)["group_id"] for type_id in type_ids}
    assert set(ItemGroup.objects.values_list("id", flat=True)) == groups
    for item_type in ItemType.objects.select_related("group__category"):
        group = world.group_details(item_type.group_id)
        category = world.category_details(group["category_id"])
        assert item_type.name == world.name(item_type.id)
        assert (item_type.group.name, item_type.group.published) == (
            group["name"],
            group["published"],
        )
        assert (item_type.group.category.name, item_type.group.category.published) == (
            category["name"],
            category["published"],
        )
    counts = services.enrichment_counts()
    for kind in ("type", "group", "category"):
        assert counts[kind]["pending"] == counts[kind]["failed"] == 0, kind
    # Each fetched once: one call per entity, and the names route never asked for groups.
    stats = upstream.stats()
    report = upstream.esi_report()["calls"]["by_family"]
    assert report["esi_groups"] == len(groups)
    assert report["esi_categories"] == ItemCategory.objects.count()
    assert stats["esi_names"] == 0
    assert_good_citizen(upstream)


@embedded_only
def test_a_system_brings_its_constellation_and_the_constellation_its_region(
    upstream: FakeUpstream, world: World, django_capture_on_commit_callbacks
) -> None:
    store(world, 10)
    assert SolarSystem.objects.count() > 1

    with django_capture_on_commit_callbacks(execute=True):
        tasks.resolve_names.apply(kwargs={"details": True})

    for system in SolarSystem.objects.select_related("constellation__region"):
        details = world.system_details(system.id)
        constellation = world.constellation_details(details["constellation_id"])
        assert system.name == world.name(system.id)
        assert system.security_status == details["security_status"]
        assert system.constellation.name == constellation["name"]
        assert system.constellation.region_id == constellation["region_id"]
        assert system.constellation.region.name == world.name(constellation["region_id"])
    assert Region.objects.exists()
    # Killmails of a region are found through the stored systems.
    region = Region.objects.first()
    assert Killmail.objects.in_region(region.id).exists()
    assert_good_citizen(upstream)


def test_a_batch_of_details_runs_its_calls_concurrently(
    upstream: FakeUpstream, world: World, settings
) -> None:
    settings.ESI_CONCURRENCY = 4
    clients._esi.cache_clear()
    corporation_ids = world.add_corporations(24)
    Corporation.objects.bulk_create([Corporation(id=i) for i in corporation_ids])
    upstream.configure(latency_esi=0.05)

    result = services.enrich_details("corporation", corporation_ids)

    assert result.updated == len(corporation_ids)
    report = upstream.esi_report()
    assert 1 < report["max_in_flight"]["by_group"]["corporation"] <= 4
    assert report["calls"]["by_family"]["esi_corporations"] == len(corporation_ids)
    for corporation in Corporation.objects.all():
        assert corporation.ticker == world.corporation_details(corporation.id)["ticker"]
    assert_good_citizen(upstream)


# -- pilots' details, where something shows them ---------------------------------------------


def pilot_calls(fake: FakeUpstream) -> int:
    return fake.esi_report()["calls"]["by_family"].get("esi_characters", 0)


@pytest.mark.django_db(transaction=True)
def test_a_backfill_fetches_its_target_pilots_details_before_planning(
    fake: FakeUpstream, world: World
) -> None:
    job = lifecycle.create_job(PILOT, max_pages=1, limit=10)

    backfill_tasks.start_job(job.pk)

    pilot = Character.objects.get(id=PILOT)
    details = world.character_details(PILOT)
    assert pilot.birthday == parse_datetime(details["birthday"])
    assert pilot.security_status == details["security_status"]
    assert pilot_calls(fake) == 1
    # The walk starts at the birthday's month, not in 2007.
    assert planning.target_start("character", PILOT, None) == pilot.birthday.date().replace(day=1)
    # Fresh details are not asked again, and a from_date needs none.
    backfill_tasks.start_job(lifecycle.create_job(PILOT, max_pages=1, limit=10).pk)
    backfill_tasks.start_job(
        lifecycle.create_job(2112000000, from_date="2020-01-01", max_pages=1, limit=10).pk
    )
    assert pilot_calls(fake) == 1
    # Nothing else asks for pilots' details: the other pilots of the stored killmails wait.
    assert Character.objects.exclude(id=PILOT).filter(details_updated_at__isnull=False).count() == 0


@embedded_only
@pytest.mark.django_db(transaction=True)
def test_a_pilots_admin_page_fetches_its_details_in_the_background(
    fake: FakeUpstream, world: World, admin_client
) -> None:
    Character.objects.create(id=PILOT, name="Shown")
    page = f"/admin/killboard/character/{PILOT}/change/"

    assert admin_client.get(page).status_code == 200

    assert runner.wait_idle(30)
    pilot = Character.objects.get(id=PILOT)
    assert pilot.birthday == parse_datetime(world.character_details(PILOT)["birthday"])
    # Shown again while fresh: nothing is fetched.
    assert admin_client.get(page).status_code == 200
    assert runner.wait_idle(30)
    assert pilot_calls(fake) == 1
    # Stale after ENRICHMENT_MAX_AGE: the next view fetches again (an ETag makes it a 304).
    long_ago = timezone.now() - timedelta(days=30)
    Character.objects.filter(id=PILOT).update(details_updated_at=long_ago, expires_at=long_ago)
    admin_client.get(page)
    assert runner.wait_idle(30)
    assert pilot_calls(fake) == 2
    assert Character.objects.get(id=PILOT).details_updated_at > long_ago


@embedded_only
@pytest.mark.django_db(transaction=True)
def test_an_admin_pages_detail_fetch_shares_the_jobs_runner_which_outlives_its_failure(
    fake: FakeUpstream, world: World, admin_client, monkeypatch, caplog, settings
) -> None:
    fetched_on: list[threading.Thread] = []
    ensure_details = services.ensure_details

    def noting_the_thread(kind: str, ids: list[int], client=None):
        fetched_on.append(threading.current_thread())
        return ensure_details(kind, ids, client)

    monkeypatch.setattr(services, "ensure_details", noting_the_thread)
    Character.objects.create(id=PILOT, name="Shown")
    page = f"/admin/killboard/character/{PILOT}/change/"
    settings.ESI_URL = "http://127.0.0.1:9/esi/"  # closed: the first fetch fails

    with caplog.at_level(logging.ERROR, logger="config.background"):
        assert admin_client.get(page).status_code == 200
        assert runner.wait_idle(30)

    [failure] = caplog.records
    assert failure.getMessage() == f"Background runner: details of character [{PILOT}] failed"
    assert isinstance(failure.exc_info[1], Unavailable)
    assert Character.objects.get(id=PILOT).birthday is None

    settings.ESI_URL = fake.esi_url
    admin_client.get(page)  # still due: this view asks again
    job = lifecycle.create_job(PILOT, max_pages=1, limit=10)
    backfill_tasks.start_job(job.pk, background=True)  # asks for its target's details too
    assert runner.wait_idle(60)

    pilot = Character.objects.get(id=PILOT)
    assert pilot.birthday == parse_datetime(world.character_details(PILOT)["birthday"])
    assert BackfillJob.objects.get(pk=job.pk).status == BackfillJob.Status.SUCCEEDED
    # The failed fetch, the next one and the job's: one thread, which the failure did not end.
    assert len(fetched_on) == 3
    assert set(fetched_on) == {fetched_on[0]}
    assert fetched_on[0] is not threading.main_thread()
    assert fetched_on[0].is_alive()


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

    assert services.pending_names() == {}
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


def test_counts_tell_resolved_pending_and_failed() -> None:
    now = timezone.now()
    CharacterFactory.create_batch(3, affiliation_updated_at=now, corporation_id=98_000_001)
    CharacterFactory(affiliation_updated_at=None)  # named, affiliation pending
    CharacterFactory(name="")
    CharacterFactory(name="", name_retry_at=now + timedelta(hours=1))
    CharacterFactory(name="", not_found=True)
    CharacterFactory(affiliation_updated_at=now, corporation_id=None)  # ESI knew no such pilot
    CorporationFactory(details_updated_at=now)
    CorporationFactory(details_updated_at=None)  # named, details pending

    counts = services.enrichment_counts()

    assert counts["character"] == {"resolved": 3, "pending": 2, "failed": 3}
    assert counts["corporation"] == {"resolved": 1, "pending": 1, "failed": 0}
    assert counts["faction"] == {"resolved": 0, "pending": 0, "failed": 0}
    assert "character 3/2/3" in services.format_counts(counts)
