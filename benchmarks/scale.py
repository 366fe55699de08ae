"""Scale: a 1,000,000-killmail import against 20,000, the database it makes, and the queries
an operator runs most at that size.

- Rate: `manage.py import_killmails` of 20,000 killmails (the ingest benchmark's file) and
  of 1,000,000 (that file's lines again and again with fresh ids, so the same size mix),
  each in a process of its own on an empty store, timed from launch to exit. The 20,000
  rate is the anchor: the big import must keep it (within 15%).
- Peak RSS of the big import (its rusage, through `memory.py`'s launcher), and the size of
  the killmail tables with their indexes per killmail (`pg_total_relation_size`).
- Queries at 1,000,000 killmails, with the indexes the project keeps, after VACUUM ANALYZE: a
  character's killmails newest first (a page; the busiest pilot, and the one gone quiet
  first, whose newest killmail lies deepest), a region's killmails of one month (a page
  and its count), killmails whose victim flew one ship type (a page). Each runs ROUNDS times;
  the best counts. Their EXPLAIN ANALYZE plans go to var/bench/scale-plans.txt. The fake
  world's solar systems are placed in constellations and regions first (REGIONS), as
  enrichment would, and the tables vacuumed and analyzed, as autovacuum leaves them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.data import CHARACTERS, killmails_file, line_count, repeated_file
from benchmarks.environment import PYTHON, ROOT, VAR, Row, reset_data, subprocess_env
from benchmarks.memory import LAUNCHER

SMALL, BIG = 20_000, 1_000_000
TARGET_KEPT = 0.85  # the big import's killmails/s over the small one's
LIMIT_MB = 300.0
PAGE = 50  # killmails a page shows (the admin's and the API's first page)
ROUNDS = 5
TARGET_MS = 50.0
PLANS = VAR / "scale-plans.txt"


def _import(path: Path, name: str) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, exit status) of `import_killmails PATH` on an empty store."""
    reset_data()
    report = VAR / f"scale-{name}.peak"
    command = [PYTHON, "manage.py", "import_killmails", str(path)]
    start = time.perf_counter()
    with (VAR / f"scale-{name}.log").open("wb") as log:
        done = subprocess.run(
            [PYTHON, "-c", LAUNCHER, str(report), *command],
            cwd=ROOT,
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    seconds = time.perf_counter() - start
    return seconds, int(report.read_text()) / 1024, done.returncode


def _size_per_killmail(count: int) -> tuple[float, float]:
    """(bytes per killmail of the killmail tables with their indexes, of the entity tables)."""
    from django.db import connection

    from killboard.models import (
        Alliance,
        Character,
        Corporation,
        Faction,
        Item,
        ItemType,
        Killmail,
        Participant,
        SolarSystem,
    )

    def total(models: tuple[Any, ...]) -> int:
        with connection.cursor() as cursor:
            tables = [model._meta.db_table for model in models]
            cursor.execute(
                "SELECT sum(pg_total_relation_size(c)) FROM unnest(%s::regclass[]) AS c", [tables]
            )
            return int(cursor.fetchone()[0])

    killmails = total((Killmail, Participant, Item))
    entities = total((Character, Corporation, Alliance, Faction, ItemType, SolarSystem))
    return killmails / count, entities / count


def _place_systems() -> None:
    """Put the world's solar systems in a constellation of their region, as enrichment would."""
    from fakeupstream.world import REGIONS
    from killboard.models import Constellation, Region, SolarSystem

    for region_id in set(REGIONS.values()):
        Region.objects.get_or_create(id=region_id)
        Constellation.objects.get_or_create(id=_constellation(region_id), region_id=region_id)
    for system_id, region_id in REGIONS.items():
        SolarSystem.objects.filter(id=system_id).update(constellation_id=_constellation(region_id))


def _constellation(region_id: int) -> int:
    # One constellation a region, numbered like EVE's (regions 10..., constellations 20...).
    return region_id + 10_000_000


def _timed(run: Callable[[], Any]) -> float:
    """The best of ROUNDS runs of `run`, in milliseconds."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def _plan(queryset: Any) -> tuple[str, float]:
    """EXPLAIN ANALYZE of a queryset's SQL: (the plan, its execution time in ms)."""
    plan = queryset.explain(analyze=True, buffers=True)
    executed = next(
        float(line.split(":")[1].split()[0])
        for line in plan.splitlines()
        if line.startswith("Execution Time")
    )
    return plan, executed


def _queries() -> tuple[list[tuple[str, Any, str]], dict[str, Any]]:
    """(name, queryset, "page" or "count") for each query, and what they ask for."""
    from django.db.models import Count, Max

    from fakeupstream.world import REGIONS
    from killboard.models import Killmail, Participant

    character = CHARACTERS[0]
    # The pilot with a page of killmails who went quiet first: the newest of theirs lies
    # deepest among everyone's.
    quiet = (
        Participant.objects.filter(character__isnull=False)
        .values("character_id")
        .annotate(n=Count("*"), newest=Max("killmail_time"))
        .filter(n__gte=PAGE)
        .order_by("newest")
        .values_list("character_id", flat=True)[0]
    )
    busiest_region = max(set(REGIONS.values()), key=list(REGIONS.values()).count)
    newest = Killmail.objects.order_by("-killmail_time").values_list("killmail_time", flat=True)[0]
    month_start = (newest.date().replace(day=1) - timedelta(days=1)).replace(day=1)
    month_end = (month_start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    ship = (
        Participant.objects.filter(is_victim=True)
        .values("ship_type_id")
        .annotate(n=Count("*"))
        .order_by("-n")
        .values_list("ship_type_id", flat=True)[0]
    )
    month = Killmail.objects.in_region(busiest_region).between(month_start, month_end)
    queries = [
        (
            f"a character's killmails, newest first (page of {PAGE})",
            Killmail.objects.involving_character(character)[:PAGE],
            "page",
        ),
        (
            f"a pilot gone quiet, newest first (page of {PAGE})",
            Killmail.objects.involving_character(quiet)[:PAGE],
            "page",
        ),
        (
            f"a region's month, newest first (page of {PAGE})",
            month.order_by("-killmail_time", "-killmail_id")[:PAGE],
            "page",
        ),
        ("a region's month, count", month, "count"),
        (
            f"killmails of a ship type (victim's), newest first (page of {PAGE})",
            Killmail.objects.of_ship_type(ship).order_by("-killmail_time", "-killmail_id")[:PAGE],
            "page",
        ),
    ]
    about = {
        "character": character,
        "pilot gone quiet": quiet,
        "region": busiest_region,
        "month": f"{month_start:%Y-%m}",
        "victim ship type": ship,
    }
    return queries, about


def _query_rows() -> list[Row]:
    from django.db import connection

    with connection.cursor() as cursor:
        # As autovacuum leaves a table after a big import: statistics, and a visibility map
        # that lets the probes read the indexes alone.
        cursor.execute("VACUUM ANALYZE")
    rows = []
    queries, about = _queries()
    plans = []
    for name, queryset, action in queries:
        if action == "count":
            millis = _timed(lambda q=queryset: q.count())
            found = queryset.count()
            plan, executed = _plan(queryset.values("pk").order_by())
            plan = f"(the count's rows)\n{plan}"
        else:
            # all(): a fresh queryset each time, never the first run's cached rows.
            millis = _timed(lambda q=queryset: list(q.all()))
            found = len(list(queryset.all()))
            plan, executed = _plan(queryset)
        plans.append(f"## {name}: {millis:.1f} ms, {found} rows\n{queryset.query}\n\n{plan}\n")
        rows.append(
            Row(
                f"at 1,000,000: {name}",
                f"{millis:.1f} ms",
                f"< {TARGET_MS:.0f} ms",
                TARGET_MS / millis,
                millis < TARGET_MS,
                f"{found} rows; EXPLAIN ANALYZE execution {executed:.1f} ms "
                f"(plans in {PLANS.relative_to(ROOT)}); best of {ROUNDS}",
            )
        )
    PLANS.write_text(f"Scale query plans at 1,000,000 killmails: {about}\n\n" + "\n".join(plans))
    return rows


def run() -> list[Row]:
    """The two imports, the big one's memory and size, then the queries on its data."""
    from killboard.models import Killmail

    small_path = killmails_file(SMALL)
    big_path = repeated_file(BIG, small_path)
    assert line_count(big_path) == BIG
    small_seconds, small_peak, small_status = _import(small_path, "small")
    small_ok = small_status == 0 and Killmail.objects.count() == SMALL
    big_seconds, big_peak, big_status = _import(big_path, "big")
    stored = Killmail.objects.count()
    big_ok = big_status == 0 and stored == BIG
    small_rate, big_rate = SMALL / small_seconds, BIG / big_seconds
    kept = big_rate / small_rate
    per_killmail, entities_per_killmail = _size_per_killmail(stored)
    _place_systems()
    rows = [
        Row(
            "import_killmails, 1,000,000 killmails vs 20,000",
            f"{big_rate:,.0f} killmails/s",
            f">= {TARGET_KEPT:g}",
            kept,
            small_ok and big_ok and kept >= TARGET_KEPT,
            f"{BIG:,} killmails ({big_path.stat().st_size / 2**30:.1f} GB) in {big_seconds:.0f}s, "
            f"{SMALL:,} in {small_seconds:.1f}s (peak {small_peak:.0f} MB); each from launch "
            "to exit, on an empty store",
            f"{small_rate:,.0f}/s at 20,000",
        ),
        Row(
            "import_killmails peak RSS, 1,000,000 killmails",
            f"{big_peak:.0f} MB",
            f"< {LIMIT_MB:.0f} MB",
            LIMIT_MB / big_peak,
            big_ok and big_peak < LIMIT_MB,
        ),
        Row(
            "database size per killmail at 1,000,000 (information)",
            f"{per_killmail:,.0f} bytes",
            "-",
            None,
            big_ok,
            f"killmail, participant and item tables with their indexes and TOAST, "
            f"{per_killmail * stored / 2**30:.2f} GB; the entity tables (the fake world's "
            f"few thousand entities) add {entities_per_killmail * stored / 2**20:.1f} MB",
        ),
    ]
    return rows + _query_rows()
