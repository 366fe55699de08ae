"""Run the fake upstream as its own process, for ``make demo`` and benchmarks.

Example::

    python -m fakeupstream --port 8765 --character 2117325769:3000 --item-shape mixed

ESI announces a rate-limit bucket on the killmail (3600/15m) and char-affiliation (1800/15m)
route groups and none on the others; ``--esi-bucket GROUP=LIMIT/SECONDS`` (or ``GROUP=none``)
changes one group, and ``--esi-latency 0.05`` delays every ESI answer by 50 ms. How a client
used ESI (calls, breaches, concurrency, bucket charges) is at ``GET /_fake/esi``.

With ``--live-rate 10`` R2Z2's live feed (``/r2z2/ephemeral/``) grows by about 10 killmails a
second; other ``live_*`` fields go through ``--config`` or ``POST /_fake/config``.

On start it prints one JSON line with its URLs ({"url", "zkb_url", "esi_url", "r2z2_url"})
and flushes, so a parent process can read where to point its clients; it runs until SIGTERM or
Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import date
from types import FrameType

from .server import DEFAULT_RAW_SINCE, ESI_GROUPS, FakeUpstream
from .world import World


def parse_character(text: str) -> tuple[int, int]:
    """Parse "CHARACTER_ID:KILLMAILS" into a pair of integers."""
    character_id, _, count = text.partition(":")
    try:
        return int(character_id), int(count or "100")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID:KILLMAILS, got {text!r}") from None


def parse_shared(text: str) -> tuple[list[int], int]:
    """Parse "ID,ID:KILLMAILS" into the characters and how many killmails they share."""
    ids, _, count = text.partition(":")
    try:
        return [int(i) for i in ids.split(",")], int(count or "100")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID,ID:KILLMAILS, got {text!r}") from None


def parse_bucket(text: str) -> tuple[int, float]:
    """Parse "LIMIT/WINDOW_SECONDS" (like 3600/900) into a bucket size."""
    limit, _, window = text.partition("/")
    try:
        return int(limit), float(window)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LIMIT/SECONDS, got {text!r}") from None


def parse_group_bucket(text: str) -> tuple[str, tuple[int, float] | None]:
    """Parse "GROUP=LIMIT/WINDOW_SECONDS" or "GROUP=none" into a group and its bucket."""
    group, _, size = text.partition("=")
    if group not in ESI_GROUPS:
        raise argparse.ArgumentTypeError(f"unknown ESI group {group!r}: one of {ESI_GROUPS}")
    return group, None if size.lower() == "none" else parse_bucket(size)


def parse_ids(text: str) -> list[int]:
    """Parse "ID,ID,..." into integers."""
    try:
        return [int(i) for i in text.split(",") if i]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID,ID,..., got {text!r}") from None


def parse_date(text: str) -> str:
    """Check "YYYY-MM-DD" and return it as given."""
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m fakeupstream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--character", type=parse_character, action="append", default=[], metavar="ID:N"
    )
    parser.add_argument(
        "--shared", type=parse_shared, action="append", default=[], metavar="ID,ID:N"
    )
    parser.add_argument("--zkb-rate", type=float, default=1.0, help="requests per second")
    parser.add_argument("--r2z2-rate", type=float, default=15.0, help="requests per second")
    parser.add_argument(
        "--raw-since",
        type=parse_date,
        default=DEFAULT_RAW_SINCE,
        metavar="YYYY-MM-DD",
        help="the first UTC day with an R2Z2 raw dump",
    )
    parser.add_argument(
        "--live-rate",
        type=float,
        default=0.0,
        help="killmails a second appended to R2Z2's live feed (0: none)",
    )
    parser.add_argument("--item-shape", choices=("full", "zkbonly", "mixed"), default="full")
    parser.add_argument("--latency-zkb", type=float, default=0.0, help="seconds")
    parser.add_argument(
        "--latency-esi", "--esi-latency", type=float, default=0.0, help="seconds, every ESI route"
    )
    parser.add_argument(
        "--esi-killmail-bucket",
        type=parse_bucket,
        default=None,
        metavar="LIMIT/SECONDS",
        help="the killmail group's bucket (default 3600/900)",
    )
    parser.add_argument(
        "--esi-bucket",
        type=parse_group_bucket,
        action="append",
        default=[],
        metavar="GROUP=LIMIT/SECONDS",
        help="a route group's bucket, or GROUP=none for none; repeatable",
    )
    parser.add_argument(
        "--characters", type=int, default=0, metavar="N", help="N more pilots (add_characters)"
    )
    parser.add_argument(
        "--corporations",
        type=int,
        default=0,
        metavar="N",
        help="N more corporations (add_corporations)",
    )
    parser.add_argument(
        "--types", type=int, default=0, metavar="N", help="N more item types (add_types)"
    )
    parser.add_argument("--unresolvable", type=parse_ids, default=[], metavar="ID,ID")
    parser.add_argument(
        "--config", type=json.loads, default={}, help="JSON object of extra configure() keys"
    )
    return parser


def serve_until_stopped(upstream: FakeUpstream) -> None:
    """Listen, print the URLs as one JSON line, and serve until SIGTERM or Ctrl-C."""
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with upstream:
        urls = {
            "url": upstream.url,
            "zkb_url": upstream.zkb_url,
            "esi_url": upstream.esi_url,
            "r2z2_url": upstream.r2z2_url,
        }
        print(json.dumps(urls), flush=True)
        while not stopping.wait(0.5):
            pass


def main(argv: list[str] | None = None) -> int:
    """Build the world, serve it until SIGTERM or Ctrl-C, and return the exit status."""
    args = build_parser().parse_args(argv)
    world = World(seed=args.seed)
    for character_id, count in args.character:
        world.add_character(character_id, count)
    for character_ids, count in args.shared:
        world.add_shared(character_ids, count)
    # In this order, so a World of the same seed built the same way elsewhere has the same ids.
    world.add_characters(args.characters)
    world.add_corporations(args.corporations)
    world.add_types(args.types)
    world.add_unresolvable(args.unresolvable)
    upstream = FakeUpstream(
        world,
        zkb_rate=args.zkb_rate,
        r2z2_rate=args.r2z2_rate,
        esi_killmail_bucket=args.esi_killmail_bucket,
        esi_buckets=dict(args.esi_bucket),
        item_shape=args.item_shape,
        latency_zkb=args.latency_zkb,
        latency_esi=args.latency_esi,
        host=args.host,
        port=args.port,
    )
    upstream.configure(**{"raw_since": args.raw_since, "live_rate": args.live_rate, **args.config})
    serve_until_stopped(upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
