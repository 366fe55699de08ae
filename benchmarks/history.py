"""History: what backfills cost against the cheapest plan, and whole days from R2Z2's dumps.

Every backfill runs as `manage.py` in a subprocess, in-process (no broker), on the bench
database, against the fake upstream in a process of its own serving a world built here
(`python -m benchmarks.history planning|history`: `python -m fakeupstream` cannot shape
campaigns or whole days). Rates are high (zKillboard 1000/s, R2Z2 50/s, an ESI killmail
bucket of a million tokens a minute): these runs count requests and time our own work, not
the upstreams' patience.

- Plans: a 20,000-killmail alliance fighting in campaigns (runs of consecutive busy days,
  all with raw dumps) and a 300-killmail character spread over three years, pages without
  bodies. The fake counts the backfill's requests (statistics, pages, R2Z2, ESI bodies; not
  the names resolved after it); the cheapest plan is computed offline from every killmail's
  day: the pages to list them, plus for each day its killmails from ESI or, when the day has
  a raw dump, one download if that is fewer.
- Throughput: `backfill_history` of 2 days of 30,000 killmails each (raw dumps over 100 MB)
  against `import_killmails` of the same two raw files, downloaded from the fake before.
  Both run in a fresh process on an empty store, timed from launch to the last killmail
  stored (the history job's `finished_at`: the command then resolves names, not timed),
  twice in turn; the faster run of each counts.
- Memory: the peak RSS of that `backfill_history` process (its rusage, by memory's launcher).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.environment import (
    PYTHON,
    ROOT,
    VAR,
    FakeProcess,
    Row,
    reset_data,
    subprocess_env,
)
from benchmarks.memory import LAUNCHER

# zKillboard's page size and deepest page.
PAGE_SIZE, MAX_PAGE = 200, 100
ZKB_RATE = 1000.0  # requests per second, fake and client alike
R2Z2_RATE = 50.0  # requests per second the client keeps (the fake allows 100)
ESI_BUCKET = (1_000_000, 60.0)  # tokens per seconds: never the limit here

# The planning world: raw dumps from RAW_SINCE (real R2Z2: 2026-07-01), so that campaigns
# over two years all have them.
PLANNING_SEED = 31
RAW_SINCE = date(2025, 1, 1)
LAST_CAMPAIGN_DAY = date(2026, 10, 31)
ALLIANCE_ID, CORPORATION_ID = 99_190_001, 98_990_001
MEMBERS = tuple(range(2_119_100_001, 2_119_100_009))  # one flies each campaign, in turn
ALLIANCE_KILLMAILS = 20_000
CAMPAIGN_DAYS = (6, 20)  # a campaign's length, in days (uniform)
QUIET_DAYS = (6, 20)  # days between two campaigns (uniform)
CHARACTER_ID, CHARACTER_KILLMAILS = 2_119_200_001, 300  # over the world's default 3 years
# The rest of the game: a killmail about every hour of the campaigns' two years, so that
# every day has a dump to read, as every real day has thousands of killmails.
BACKGROUND_ID, BACKGROUND_PER_DAY = 2_119_400_001, 24
TARGET_OVERHEAD = 1.1  # the planner's requests / the cheapest plan's, at most

# The history world: two whole days, each one character's 30,000 killmails.
HISTORY_SEED = 32
HISTORY_DAYS = (date(2026, 11, 20), date(2026, 11, 21))
DAY_KILLMAILS = 30_000
DAY_CHARACTERS = (2_119_300_001, 2_119_300_002)
TARGET_SHARE = 0.7  # backfill_history's killmails/s over import_killmails'
# Alternating import and history runs; the faster of each counts (the machine is shared).
ROUNDS = 2
MIN_DUMP_MB = 100.0
LIMIT_MB = 300.0
COMMAND_TIMEOUT = 1800.0  # seconds


@dataclass(frozen=True)
class Campaign:
    """A run of consecutive busy days of the alliance."""

    first: date
    days: int
    killmails: int

    @property
    def last(self) -> date:
        return self.first + timedelta(days=self.days - 1)


def campaigns() -> list[Campaign]:
    """Busy runs of days from RAW_SINCE to LAST_CAMPAIGN_DAY with quiet gaps between, the
    alliance's killmails shared in proportion to their lengths."""
    rng = random.Random(PLANNING_SEED)
    runs: list[tuple[date, int]] = []
    first = RAW_SINCE + timedelta(days=rng.randint(*QUIET_DAYS))
    while True:
        days = rng.randint(*CAMPAIGN_DAYS)
        if first + timedelta(days=days - 1) > LAST_CAMPAIGN_DAY:
            break
        runs.append((first, days))
        first += timedelta(days=days + rng.randint(*QUIET_DAYS))
    busy = sum(days for _, days in runs)
    shares = [ALLIANCE_KILLMAILS * days // busy for _, days in runs]
    shares[0] += ALLIANCE_KILLMAILS - sum(shares)
    return [Campaign(f, d, k) for (f, d), k in zip(runs, shares, strict=True)]


def _end_of(day: date) -> datetime:
    return datetime.combine(day, datetime.max.time(), tzinfo=UTC).replace(microsecond=0)


def planning_world() -> Any:
    """The alliance's campaigns and the quiet character (bodies are generated on demand)."""
    from fakeupstream.world import World

    world = World(seed=PLANNING_SEED)
    for index, campaign in enumerate(campaigns()):
        world.add_character(
            MEMBERS[index % len(MEMBERS)],
            campaign.killmails,
            newest=_end_of(campaign.last),
            days=campaign.days,
            corporation_id=CORPORATION_ID,
            alliance_id=ALLIANCE_ID,
        )
    world.add_character(CHARACTER_ID, CHARACTER_KILLMAILS)
    span = (LAST_CAMPAIGN_DAY - RAW_SINCE).days + 1
    world.add_character(
        BACKGROUND_ID, BACKGROUND_PER_DAY * span, newest=_end_of(LAST_CAMPAIGN_DAY), days=span
    )
    return world


def history_world() -> Any:
    """Two UTC days of DAY_KILLMAILS killmails each."""
    from fakeupstream.world import World

    world = World(seed=HISTORY_SEED)
    for character_id, day in zip(DAY_CHARACTERS, HISTORY_DAYS, strict=True):
        world.add_character(character_id, DAY_KILLMAILS, newest=_end_of(day), days=1)
    return world


def serve(name: str) -> None:
    """Serve a world of this module like `python -m fakeupstream` does, until SIGTERM.

    The history world's bodies are generated before it listens and kept (the fake's cache
    holds 8,192 otherwise), so that streaming a raw day costs the fake joining texts and
    gzip, not generating 30,000 bodies on the CPUs the measured process uses.
    """
    from fakeupstream import world as world_module
    from fakeupstream.__main__ import serve_until_stopped
    from fakeupstream.server import FakeUpstream

    if name == "history":
        world_module.BODY_CACHE_SIZE = None  # read when a World is created
        world = history_world()
        for killmail_id in world.all_killmail_ids():
            world.body_json(killmail_id)
        raw_since = HISTORY_DAYS[0]
    else:
        world = planning_world()
        raw_since = RAW_SINCE
    upstream = FakeUpstream(
        world,
        zkb_rate=ZKB_RATE,
        r2z2_rate=2 * R2Z2_RATE,
        esi_killmail_bucket=ESI_BUCKET,
        item_shape="zkbonly",
    )
    upstream.configure(raw_since=raw_since.isoformat())
    serve_until_stopped(upstream)


class WorldFake(FakeProcess):
    """The fake upstream serving one of this module's worlds, as its own process."""

    def __init__(self, world: str) -> None:
        super().__init__()
        self.world = world

    def __enter__(self) -> WorldFake:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.history", self.world],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake upstream with the {self.world} world did not start")
        self.urls = json.loads(line)
        return self


@dataclass
class Run:
    """A `manage.py` command run: its exit status, output, wall time and peak RSS."""

    returncode: int
    stdout: str
    launched: datetime
    seconds: float
    peak_mb: float

    def summary(self) -> dict[str, Any]:
        """The job summary a `--json` backfill command printed last."""
        lines = self.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}


def manage(fake: FakeProcess, name: str, *args: str, raw_since: date) -> Run:
    """Run `manage.py ARGS` in-process (no broker) against the fake; log to var/bench/."""
    env = subprocess_env(
        CELERY_BROKER_URL="",
        ZKILLBOARD_API_URL=fake.urls["zkb_url"],
        ESI_URL=fake.urls["esi_url"],
        R2Z2_URL=fake.urls["r2z2_url"],
        ZKILLBOARD_REQUESTS_PER_SECOND=str(ZKB_RATE),
        R2Z2_REQUESTS_PER_SECOND=str(R2Z2_RATE),
        R2Z2_RAW_SINCE=raw_since.isoformat(),
    )
    report = VAR / f"history-{name}.peak"
    command = [PYTHON, "manage.py", *args]
    launched = datetime.now(UTC)
    start = time.perf_counter()
    with (VAR / f"history-{name}.log").open("wb") as log:
        done = subprocess.run(
            [PYTHON, "-c", LAUNCHER, str(report), *command],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            timeout=COMMAND_TIMEOUT,
        )
    seconds = time.perf_counter() - start
    peak_mb = int(report.read_text()) / 1024  # kB on Linux
    return Run(done.returncode, done.stdout.decode(), launched, seconds, peak_mb)


# -- requests against the cheapest plan -------------------------------------------------------


def listing_pages(killmails: int) -> int:
    """Pages that list a target's killmails: the pages holding them, plus one when the last
    is full (only a page of fewer than 200 ends a listing), up to page 100."""
    assert killmails <= PAGE_SIZE * MAX_PAGE, "deeper listings walk months: not modelled here"
    return min(MAX_PAGE, killmails // PAGE_SIZE + 1)


def cheapest_bodies(days: Counter[date], raw_since: date) -> int:
    """Requests of the cheapest way to the bodies of killmails on `days` (day: count), pages
    without bodies: per day its killmails from ESI, or one download of the day's raw dump
    when it has one and that is fewer."""
    return sum(min(count, 1) if day >= raw_since else count for day, count in days.items())


def _killmail_days(ids: list[int]) -> Counter[date]:
    from fakeupstream.world import killmail_time

    return Counter(killmail_time(killmail_id).date() for killmail_id in ids)


REQUEST_FAMILIES = ("zkb_stats", "zkb_pages", "r2z2_totals", "r2z2_days", "r2z2_raw")


def _plan_rows(
    fake: FakeProcess, label: str, target: tuple[str, int], ids: list[int], *, dense: bool
) -> list[Row]:
    """Backfill one target; its requests against the cheapest plan, and its ESI calls for
    killmails whose day has a raw dump (0 for a dense target; a sparse one takes ESI by
    design: no day of the whole game is downloaded for one killmail)."""
    reset_data()
    fake.reset()
    target_type, target_id = target
    name = f"{target_type}-{target_id}"
    run = manage(fake, name, "backfill", target_type, str(target_id), "--json", raw_since=RAW_SINCE)
    job = run.summary()
    stats = fake.stats()
    days = _killmail_days(ids)
    pages, bodies = listing_pages(len(ids)), cheapest_bodies(days, RAW_SINCE)
    cheapest = pages + bodies
    esi = stats["esi_killmails"]
    used = sum(stats[family] for family in REQUEST_FAMILIES) + esi
    killmails = len(ids)
    raw_days = {day: count for day, count in days.items() if day >= RAW_SINCE}
    without_raw = killmails - sum(raw_days.values())
    # Killmails of days without a raw dump take one ESI call each, whatever the plan; the
    # rest of the calls went to raw days (valid while nothing is fetched twice).
    esi_on_raw_days = esi - without_raw
    stored = job.get("stored", 0) + job.get("already_stored", 0)
    complete = run.returncode == 0 and stored == killmails
    clean = stats["violation_count"] == 0 and stats["esi_killmail_refetches"] == 0
    ratio = used / cheapest
    breakdown = (
        f"{stats['zkb_stats']} statistics + {stats['zkb_pages']} pages + "
        f"{stats['r2z2_raw']} raw dumps + {stats['r2z2_days'] + stats['r2z2_totals']} other "
        f"R2Z2 + {esi} ESI bodies"
    )
    return [
        Row(
            f"requests vs the cheapest plan, {label}",
            f"{used} requests = {used / killmails:.3f}/killmail",
            f"<= {TARGET_OVERHEAD:g}",
            ratio,
            complete and clean and ratio <= TARGET_OVERHEAD,
            f"{breakdown}; the cheapest: {pages} pages + {bodies} bodies or dumps. "
            f"{killmails} killmails on {len(days)} days, {len(raw_days)} with a raw dump "
            f"({sum(1 for c in raw_days.values() if c > 1)} of them holding 2+); job "
            f"{job.get('status')} in {job.get('duration_seconds')}s, {stored} stored; "
            f"{stats['violation_count']} violations, {stats['esi_killmail_refetches']} refetches",
            f"{cheapest} (the cheapest plan) = {cheapest / killmails:.3f}/killmail",
        ),
        Row(
            f"ESI calls for killmails of raw days, {label}",
            f"{esi_on_raw_days} of {sum(raw_days.values())} such killmails",
            "0" if dense else "-",
            None,
            complete and clean and (esi_on_raw_days == 0 or not dense),
            f"{esi} ESI calls - {without_raw} killmails of days without a raw dump"
            + ("" if dense else "; sparse: its months take ESI, one call a killmail"),
        ),
    ]


def _planning_rows() -> list[Row]:
    world = planning_world()
    alliance_ids = world.search(alliance_ids=(ALLIANCE_ID,))
    runs = campaigns()
    label = f"alliance: {len(alliance_ids):,} killmails in {len(runs)} campaigns"
    with WorldFake("planning") as fake:
        rows = _plan_rows(fake, label, ("alliance", ALLIANCE_ID), alliance_ids, dense=True)
        rows += _plan_rows(
            fake,
            f"character: {CHARACTER_KILLMAILS} killmails over 3 years",
            ("character", CHARACTER_ID),
            world.killmail_ids(CHARACTER_ID),
            dense=False,
        )
    return rows


# -- whole days: throughput and memory --------------------------------------------------------


def _download_raw_days(fake: FakeProcess) -> list[Path]:
    """The history days' raw dumps as files, as the fake serves them (decompressed)."""
    paths = []
    for day in HISTORY_DAYS:
        path = VAR / f"history-raw-{day:%Y%m%d}.json"
        url = f"{fake.urls['r2z2_url']}history/raw/{day:%Y%m%d}.json"
        with fake.session.get(url, stream=True, timeout=60) as response:
            response.raise_for_status()
            with path.open("wb") as out:
                for chunk in response.iter_content(1 << 20):
                    out.write(chunk)
        paths.append(path)
    return paths


@dataclass
class Timed:
    """One timed command on an empty store: killmails stored, seconds, and its run."""

    stored: int
    seconds: float
    run: Run
    ok: bool

    @property
    def rate(self) -> float:
        return self.stored / self.seconds


def _timed_import(fake: FakeProcess, paths: list[Path]) -> Timed:
    """`import_killmails` of the files, timed from launch to exit."""
    from killboard.models import Killmail

    reset_data()
    run = manage(fake, "import", "import_killmails", *map(str, paths), raw_since=HISTORY_DAYS[0])
    return Timed(Killmail.objects.count(), run.seconds, run, run.returncode == 0)


def _timed_history(fake: FakeProcess) -> Timed:
    """`backfill_history` of the days, timed from launch to the job's `finished_at` (the
    command resolves names after it)."""
    from backfill.models import BackfillJob
    from killboard.models import Killmail

    reset_data()
    fake.reset()
    first, last = HISTORY_DAYS[0], HISTORY_DAYS[-1]
    dates = (f"--from-date={first}", f"--to-date={last}")
    run = manage(fake, "backfill_history", "backfill_history", *dates, "--json", raw_since=first)
    job = BackfillJob.objects.get(pk=run.summary()["job"])
    assert job.finished_at is not None
    seconds = (job.finished_at - run.launched).total_seconds()
    ok = run.returncode == 0 and job.bodies_from_dump == Killmail.objects.count()
    return Timed(Killmail.objects.count(), seconds, run, ok)


def _history_rows() -> list[Row]:
    killmails = DAY_KILLMAILS * len(HISTORY_DAYS)
    imports: list[Timed] = []
    histories: list[Timed] = []
    with WorldFake("history") as fake:
        paths = _download_raw_days(fake)
        sizes_mb = [path.stat().st_size / 2**20 for path in paths]
        for _ in range(ROUNDS):
            imports.append(_timed_import(fake, paths))
            histories.append(_timed_history(fake))
            stats = fake.stats()
    for path in paths:
        path.unlink()
    anchor = max(imports, key=lambda timed: timed.rate)
    history = max(histories, key=lambda timed: timed.rate)
    share = history.rate / anchor.rate
    complete = all(t.ok and t.stored == killmails for t in imports + histories)
    peak = max(t.run.peak_mb for t in histories)
    days_text = " and ".join(f"{size:.0f} MB" for size in sizes_mb)
    big_enough = min(sizes_mb) >= MIN_DUMP_MB
    return [
        Row(
            f"backfill_history vs import_killmails, 2 days of {DAY_KILLMAILS:,}",
            f"{history.rate:,.0f} killmails/s",
            f">= {TARGET_SHARE:g}",
            share,
            complete and share >= TARGET_SHARE,
            f"the faster of {ROUNDS} alternating runs each: history "
            + ", ".join(f"{t.seconds:.1f}s" for t in histories)
            + " from launch to the job's end (the commands took "
            + ", ".join(f"{t.run.seconds:.1f}s" for t in histories)
            + " with the names resolved after); import "
            + ", ".join(f"{t.seconds:.1f}s" for t in imports)
            + f" from launch to exit; {killmails:,} killmails, raw days of {days_text}; "
            f"R2Z2 requests {stats['r2z2_totals']} totals + {stats['r2z2_days']} id lists + "
            f"{stats['r2z2_raw']} raw, {stats['esi_killmails']} ESI bodies, "
            f"{stats['violation_count']} violations",
            f"{anchor.rate:,.0f}/s import_killmails, same files",
        ),
        Row(
            "backfill_history peak RSS, day dumps of 100+ MB",
            f"{peak:.0f} MB",
            f"< {LIMIT_MB:.0f} MB",
            LIMIT_MB / peak,
            complete and big_enough and peak < LIMIT_MB,
            f"raw days of {days_text} uncompressed ({DAY_KILLMAILS:,} killmails each), "
            f"streamed gzipped; the higher of {ROUNDS} runs; import_killmails of the same "
            f"files peaked at {max(t.run.peak_mb for t in imports):.0f} MB",
        ),
    ]


def run() -> list[Row]:
    """The two plans' rows, then whole days' throughput and memory."""
    VAR.mkdir(parents=True, exist_ok=True)
    return _planning_rows() + _history_rows()


if __name__ == "__main__":
    serve(sys.argv[1])
