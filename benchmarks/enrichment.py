"""Enrichment against the fake ESI: bulk names and affiliations, and details in parallel.

- Names: 10,000 nameless characters, corporations and alliances, `resolve_names` once with
  every id resolvable (at most 11 calls: ten chunks of 1,000, one to spare), and once more
  with a few ids ESI cannot resolve, whose chunks are split to find them.
- Affiliations: 10,000 new pilots through POST /characters/affiliation/ (at most 11 calls).
- Details: 2,000 corporations and 5,000 types on routes without a bucket, 50 ms of fake
  latency, a few ids ESI does not know (each a 404 that costs the error limit) and a 420
  storm forced in the middle. The anchor is the same client at one request at a time on a
  sample of them, in the same run; the figure is the rate with `ESI_CONCURRENCY` (8), and
  the fake counts breaches: 429s, requests over the error limit, and calls during the 420.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

from benchmarks.environment import FakeProcess, Row, reset_data, timer

if TYPE_CHECKING:
    from fakeupstream.server import FakeUpstream
    from upstream.esi import EsiClient

ENTITIES = 10_000
FIRST_CHARACTER = 2_200_000_000
BAD_IDS = 3
TARGET_CALLS = 11
NAMES_PER_CALL = 1000

CORPORATIONS, TYPES = 2_000, 5_000
LATENCY = 0.05  # seconds the fake ESI takes for every answer
SERIAL_SAMPLE = 100  # entities of each kind fetched one at a time: the anchor
UNKNOWN_SHARE = 0.005  # of the ids: 404s that spend the error limit
STORM_AFTER, STORM_SECONDS = 10.0, 3.0  # a 420 storm this far into the parallel run
TARGET_SPEEDUP = 6.0
CONCURRENCY = 8


def run() -> list[Row]:
    """Names, affiliations and details against fakes of their own; the fake counts calls."""
    return [*_names(), _affiliations(), _details()]


def _client(fake: FakeUpstream | FakeProcess, concurrency: int = CONCURRENCY) -> EsiClient:
    from killboard import ratelimit
    from upstream.esi import EsiClient

    url = fake.urls["esi_url"] if isinstance(fake, FakeProcess) else fake.esi_url
    return EsiClient(url, "bench@example.com", ratelimit, concurrency=concurrency)


def _names() -> list[Row]:
    from enrichment.services import resolve_names
    from fakeupstream.server import FakeUpstream
    from fakeupstream.world import World
    from killboard.models import Alliance, Character, Corporation

    world = World(seed=3)
    # A tracked character comes with a corporation and an alliance of its own.
    for offset in range(math.ceil(ENTITIES / 3)):
        world.add_character(FIRST_CHARACTER + offset, 0)
    tracked = world.tracked_characters()
    ids = {
        Character: sorted(tracked),
        Corporation: sorted({c.corporation_id for c in tracked.values()}),
        Alliance: sorted({c.alliance_id for c in tracked.values() if c.alliance_id}),
    }
    ids[Alliance] = ids[Alliance][: ENTITIES - len(ids[Character]) - len(ids[Corporation])]

    reset_data()
    for model, model_ids in ids.items():
        model.objects.bulk_create([model(id=i) for i in model_ids], batch_size=1000)
    total = sum(len(v) for v in ids.values())

    rows = []
    with FakeUpstream(world) as fake:
        client = _client(fake)
        with timer() as took:
            result = resolve_names(client=client)
        calls = fake.stats()["esi_names"]
        rows.append(
            Row(
                "names for 10,000 new entities",
                f"{calls} calls, {result.resolved} named in {took['seconds']:.1f}s",
                f"<= {TARGET_CALLS} calls",
                TARGET_CALLS / calls,
                calls <= TARGET_CALLS and result.resolved == total,
                f"{total} entities: {', '.join(f'{len(v)} {m.__name__}' for m, v in ids.items())}",
            )
        )

        for model in ids:
            model.objects.update(name="", name_retry_at=None)
        bad = ids[Character][:: len(ids[Character]) // BAD_IDS][:BAD_IDS]
        world.add_unresolvable(bad)
        fake.reset_stats()
        result = resolve_names(client=client)
        calls = fake.stats()["esi_names"]
        chunks = math.ceil(total / NAMES_PER_CALL)
        split_bound = BAD_IDS * 2 * math.ceil(math.log2(NAMES_PER_CALL))
        ok = result.resolved == total - BAD_IDS and sorted(result.unresolvable) == sorted(bad)
        rows.append(
            Row(
                f"names with {BAD_IDS} ids ESI cannot resolve",
                f"{calls} calls = {chunks} chunks + {calls - chunks} for splits",
                f"<= {TARGET_CALLS} + splits (<= {split_bound})",
                (TARGET_CALLS + split_bound) / calls,
                ok and calls <= TARGET_CALLS + split_bound,
                f"{result.resolved} named, {len(result.unresolvable)} marked for a later retry",
            )
        )
    return rows


def _affiliations() -> Row:
    from enrichment.services import resolve_affiliations
    from fakeupstream.world import World
    from killboard.models import Character, Corporation

    seed = 4
    pilots = World(seed=seed).add_characters(ENTITIES)  # the same ids as the fake's world
    reset_data()
    Character.objects.bulk_create([Character(id=i) for i in pilots], batch_size=1000)
    with FakeProcess(f"--seed={seed}", f"--characters={ENTITIES}") as fake:
        with timer() as took:
            result = resolve_affiliations(client=_client(fake))
        calls = fake.stats()["esi_affiliation"]
    placed = Character.objects.filter(corporation_id__isnull=False).count()
    corporations = Corporation.objects.count()
    return Row(
        "affiliation of 10,000 new characters",
        f"{calls} calls, {placed} pilots placed in {took['seconds']:.1f}s",
        f"<= {TARGET_CALLS} calls",
        TARGET_CALLS / calls if calls else None,
        calls <= TARGET_CALLS and placed == len(pilots),
        f"{result.calls} calls by the service's count; {corporations} corporations "
        "created for the name scan and details",
    )


def _details() -> Row:
    from enrichment.services import enrich_details
    from fakeupstream.world import World
    from killboard.models import Corporation, ItemType
    from upstream.errors import RateLimited

    seed = 5
    world = World(seed=seed)  # the same ids as the fake's world, built the same way
    ids = {"corporation": world.add_corporations(CORPORATIONS), "type": world.add_types(TYPES)}
    unknown = [i for kind_ids in ids.values() for i in kind_ids[7 :: int(1 / UNKNOWN_SHARE)]]
    reset_data()
    Corporation.objects.bulk_create([Corporation(id=i) for i in ids["corporation"]])
    ItemType.objects.bulk_create([ItemType(id=i) for i in ids["type"]], batch_size=1000)

    def fetch(client: EsiClient, kind_ids: dict[str, list[int]]) -> float:
        """Seconds to fetch every id's details, retrying after a rate limit as a task would."""
        with timer() as took:
            for kind, wanted in kind_ids.items():
                while True:
                    try:
                        enrich_details(kind, wanted, client)
                        break
                    except RateLimited:
                        pass  # the service kept what it learned; the rest is still due
        return took["seconds"]

    args = (
        f"--seed={seed}",
        f"--corporations={CORPORATIONS}",
        f"--types={TYPES}",
        f"--unresolvable={','.join(map(str, unknown))}",
        f"--latency-esi={LATENCY}",
    )
    with FakeProcess(*args) as fake:
        sample = {kind: kind_ids[:SERIAL_SAMPLE] for kind, kind_ids in ids.items()}
        serial_seconds = fetch(_client(fake, concurrency=1), sample)
        serial_rate = sum(map(len, sample.values())) / serial_seconds

        rest = {kind: kind_ids[SERIAL_SAMPLE:] for kind, kind_ids in ids.items()}
        fake.reset()
        storm = threading.Timer(STORM_AFTER, fake.configure, kwargs={"storm_420": STORM_SECONDS})
        storm.start()
        try:
            parallel_seconds = fetch(_client(fake), rest)
        finally:
            storm.cancel()
        report = fake.esi_report()
    parallel_rate = sum(map(len, rest.values())) / parallel_seconds
    speedup = parallel_rate / serial_rate
    breaches = report["breaches"]
    storms = sum(statuses.get("420", 0) for statuses in report["statuses"].values())
    done = Corporation.objects.filter(details_updated_at__isnull=False).count()
    done += ItemType.objects.filter(details_updated_at__isnull=False).count()
    clean = not any(breaches.values())
    return Row(
        "details, 2,000 corporations and 5,000 types, 50 ms latency, routes without a bucket",
        f"{parallel_rate:.0f} entities/s; breaches {breaches}",
        f">= {TARGET_SPEEDUP:g}, 0 breaches, 0 calls during a 420",
        speedup,
        speedup >= TARGET_SPEEDUP and clean and done == CORPORATIONS + TYPES,
        f"{len(unknown)} ids ESI does not know (404); a {STORM_SECONDS:g}s 420 storm forced "
        f"{STORM_AFTER:g}s in, answered {storms} times; max in flight "
        f"{report['max_in_flight']['overall']}; lowest error limit left "
        f"{report['min_error_remain']}; {parallel_seconds:.1f}s for "
        f"{sum(map(len, rest.values()))} entities",
        anchor=f"{serial_rate:.1f}/s one at a time ({SERIAL_SAMPLE} of each kind)",
    )
