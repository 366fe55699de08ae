"""Benchmark input files: killmails from the fake upstream's world, cached under var/bench/.

Bodies come from `fakeupstream.World`, whose attacker counts (a third solo, a tail of
hundreds-strong fleets and structure kills) and item lists follow real killmails.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.environment import VAR

SEED = 7
CHARACTERS = (2117325769, 2118000001, 2118000002, 2118000003)
_ID_PATTERN = re.compile(r'"killmail_id":(\d+)')


def killmails_file(count: int) -> Path:
    """A JSON Lines file of `count` killmails (ESI body plus zkb), generated once."""
    path = VAR / f"killmails-{count}-seed{SEED}.jsonl"
    if path.exists():
        return path
    from fakeupstream.world import World

    world = World(seed=SEED)
    per_character = -(-count // len(CHARACTERS))
    ids: list[int] = []
    for character_id in CHARACTERS:
        ids += world.add_character(character_id, per_character)
    VAR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    with partial.open("w") as out:
        for killmail_id in sorted(ids, reverse=True)[:count]:
            body = world.body_json(killmail_id)
            out.write(body[:-1] + ',"zkb":' + world.zkb_json(killmail_id) + "}\n")
    partial.rename(path)
    return path


def big_file(size_bytes: int, source: Path) -> Path:
    """A JSON Lines file of at least `size_bytes`: `source` repeated with fresh killmail ids."""
    path = VAR / f"killmails-{size_bytes >> 20}MB-seed{SEED}.jsonl"
    if path.exists():
        return path
    lines = source.read_text().splitlines(keepends=True)
    partial = path.with_suffix(".tmp")
    written = 0
    next_id = 1
    with partial.open("w") as out:
        while written < size_bytes:
            for line in lines:
                # The body's own killmail_id is its only one (sorted keys, none in zkb).
                line = _ID_PATTERN.sub(f'"killmail_id":{next_id}', line, count=1)
                next_id += 1
                out.write(line)
                written += len(line)
                if written >= size_bytes:
                    break
    partial.rename(path)
    return path


def repeated_file(count: int, source: Path) -> Path:
    """A JSON Lines file of `count` killmails: `source`'s lines again and again with fresh
    killmail ids (1, 2, ...), so the size mix is the source's; written as it is read."""
    path = VAR / f"killmails-{count}-repeated-seed{SEED}.jsonl"
    if path.exists():
        return path
    partial = path.with_suffix(".tmp")
    written = 0
    with partial.open("w") as out:
        while written < count:
            with source.open() as lines:
                for line in lines:
                    written += 1
                    # The body's own killmail_id is its only one (sorted keys, none in zkb).
                    out.write(_ID_PATTERN.sub(f'"killmail_id":{written}', line, count=1))
                    if written >= count:
                        break
    partial.rename(path)
    return path


def line_count(path: Path) -> int:
    """Lines (killmails) of a JSON Lines file."""
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
