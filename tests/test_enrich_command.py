"""`manage.py enrich` in-process: its phases, progress bars and summary, against the fake ESI."""

from __future__ import annotations

import io
import re
import sys
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.utils import timezone

from enrichment import services
from fakeupstream.server import FakeUpstream
from fakeupstream.world import World
from killboard.entities import DETAILED, ENTITY_KINDS
from killboard.ingest import ingest_killmails
from killboard.models import Character

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        not django_settings.CELERY_TASK_ALWAYS_EAGER, reason="runs tasks in-process (no broker)"
    ),
]

PILOT = 2117325769
DETAIL_PHASES = [entry.kind for entry in DETAILED if not entry.details_on_demand]


@pytest.fixture
def world() -> World:
    """One pilot with enough killmails to bring every kind of entity."""
    world = World(seed=7)
    world.add_character(PILOT, 10)
    return world


def store(world: World, count: int) -> None:
    """Ingest the pilot's newest killmails, which registers every entity they reference."""
    ids = world.killmail_ids(PILOT)[:count]
    assert ingest_killmails([{**world.body(i), "zkb": world.zkb(i)} for i in ids]).new == count


def enrich(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("enrich", *args, stdout=out)
    return out.getvalue().splitlines()


def parse_calls(line: str) -> dict[str, int]:
    """`calls by group: names 3, universe 40 (43 in all)` as {group: calls}."""
    listed = line.removeprefix("calls by group: ").rsplit(" (", 1)[0]
    if listed == "none":
        return {}
    return {group: int(count) for group, count in (part.split() for part in listed.split(", "))}


def test_enrich_runs_every_phase_and_sums_up_the_calls_by_route_group(
    fake: FakeUpstream, world: World
) -> None:
    store(world, 10)
    world.add_unresolvable([PILOT])

    lines = enrich()

    phases = [line.split(":")[0] for line in lines]
    assert phases[:2] == ["names", "affiliations"]
    details = [phase.removeprefix("details ") for phase in phases if phase.startswith("details")]
    assert details == DETAIL_PHASES  # in cascade order, pilots left out
    # One call for the pilots, and the halvings that isolate the one ESI does not know.
    assert re.fullmatch(r"affiliations: \d+ pilots in \d+ calls, 1 unknown, .*", lines[1])
    # The summary is what ESI saw, by route group: no pilot's details among them.
    [summary] = [line for line in lines if line.startswith("calls by group: ")]
    calls = parse_calls(summary)
    report = fake.esi_report()["calls"]["by_group"]
    assert calls == {group: count for group, count in report.items() if count}
    assert "character" not in calls
    assert {"names", "char-affiliation", "corporation", "alliance", "universe"} <= set(calls)
    # Everything is resolved but the pilot ESI does not know yet.
    counts = services.enrichment_counts()
    assert counts["character"]["failed"] == 1
    for entry in ENTITY_KINDS:
        assert counts[entry.kind]["pending"] == 0, entry.kind
        assert counts[entry.kind]["resolved"] > 0 or entry.kind == "faction", entry.kind
    assert lines[-1] == services.format_counts(counts)
    stats = fake.stats()
    assert stats["violation_count"] == 0
    assert "429" not in stats["statuses"]["esi"]


def test_enrich_shows_a_progress_bar_with_an_eta_per_phase_on_a_terminal(
    fake: FakeUpstream, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    store(world, 5)

    enrich()

    bars = terminal.getvalue()
    for phase in ["names", "affiliations", *(f"details {kind}" for kind in DETAIL_PHASES)]:
        assert f"{phase}: 100%" in bars, phase
    # tqdm's [elapsed<remaining]: the time left, estimated from the rate so far.
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", bars)


def test_a_second_run_asks_nothing_and_refresh_asks_again_what_is_old(
    fake: FakeUpstream, world: World
) -> None:
    store(world, 5)
    enrich()
    services.ensure_details("character", [PILOT])  # shown once, so refreshed from now on
    fake.reset_stats()

    lines = enrich()

    assert parse_calls(next(line for line in lines if line.startswith("calls"))) == {}
    assert fake.esi_report()["calls"]["total"] == 0

    long_ago = timezone.now() - django_settings.ENRICHMENT_MAX_AGE - timedelta(hours=1)
    for entry in DETAILED:
        fetched = entry.model.objects.filter(details_updated_at__isnull=False)
        fetched.update(details_updated_at=long_ago, expires_at=long_ago)
    Character.objects.update(affiliation_updated_at=long_ago)
    pilots = Character.objects.count()

    lines = enrich("--refresh")

    calls = fake.esi_report()["calls"]["by_family"]
    assert calls["esi_affiliation"] == 1
    assert calls["esi_characters"] == 1  # the one pilot whose details were fetched before
    assert not Character.objects.filter(affiliation_updated_at=long_ago).exists()
    assert re.search(rf"affiliations: {pilots} pilots in 1 calls", "\n".join(lines))
    # Details come back as 304s: the stored ETags still hold.
    detailed = sum(entry.model.objects.exclude(not_found=True).count() for entry in DETAILED)
    detailed -= pilots - 1  # the pilots never shown
    assert fake.stats()["statuses"]["esi"]["304"] == detailed
    for entry in DETAILED:
        if not entry.details_on_demand:
            assert not entry.model.objects.filter(details_updated_at=long_ago).exists()
