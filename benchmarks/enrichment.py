"""Enrichment: names for 10,000 new entities with POST /universe/names/ against the fake ESI.

10,000 nameless characters, corporations and alliances are stored, then `resolve_names`
runs once with every id resolvable (at most 11 calls: ten chunks of 1,000, one to spare),
and once more with a few ids ESI cannot resolve, whose chunks are split to find them (each
bad id costs at most two calls per halving of a 1,000-id chunk).
"""

from __future__ import annotations

import math

from benchmarks.environment import Row, reset_data, timer

ENTITIES = 10_000
FIRST_CHARACTER = 2_200_000_000
BAD_IDS = 3
TARGET_CALLS = 11
NAMES_PER_CALL = 1000


def run() -> list[Row]:
    """Two name runs over the same 10,000 entities; the fake counts the calls."""
    from enrichment.services import resolve_names
    from fakeupstream.server import FakeUpstream
    from fakeupstream.world import World
    from killboard import ratelimit
    from killboard.models import Alliance, Character, Corporation
    from upstream.esi import EsiClient

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
        client = EsiClient(fake.esi_url, "bench@example.com", ratelimit)
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
