"""How the ESI client keeps ESI's limits at scale, against the fake ESI over loopback.

Groups with a bucket are paced at a share of it after one burst; groups without one run
`concurrency` requests at once across the deployment (leases on shared slots); the error
limit slows every caller down before it could run out, and a 420 stops them all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from fakeupstream.server import FakeUpstream
from fakeupstream.world import World
from killboard import ratelimit
from killboard.models import ConcurrencySlot
from upstream import clients
from upstream.errors import RateLimited
from upstream.esi import (
    ERROR_GATE,
    ERROR_SLOWDOWN_BELOW,
    SUCCESS_COST,
    Affiliation,
    Detail,
    DetailCall,
    EsiClient,
    EsiNotFound,
    EsiUnavailable,
    bucket_burst,
    bucket_interval,
)

pytestmark = pytest.mark.django_db

CONTACT = "ops@example.com"
PROJECT = Path(__file__).resolve().parent.parent
# The detail groups as the real ESI has them today: no bucket, the error limit alone.
NO_BUCKETS: dict[str, Any] = dict.fromkeys(
    ("names", "character", "corporation", "alliance", "universe"), None
)
LATENCY = 0.05  # seconds the fake takes to answer, as a far-away ESI would
ESI_ERROR_LIMIT = 100  # the fake's errors per window, as ESI's

MakeClient = Callable[..., EsiClient]


@pytest.fixture
def esi(fake: FakeUpstream) -> Iterator[MakeClient]:
    """Make clients of the fake ESI (a worker's patience by default); closed afterwards."""
    made: list[EsiClient] = []

    def make(**options: Any) -> EsiClient:
        client = EsiClient(fake.esi_url, CONTACT, ratelimit, **{"max_wait": 5.0, **options})
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def character_calls(ids: list[int]) -> list[DetailCall]:
    return [DetailCall(f"characters/{character_id}/", "character") for character_id in ids]


def collect(run: Iterator[tuple[DetailCall, Any]], into: list[tuple[DetailCall, Any]]) -> None:
    """Take a run's results into `into` as they come, until it ends or raises."""
    into.extend(run)


def most_tokens_in_a_window(charges: list[list[float]], window: float) -> int:
    """The most tokens charged within any `window` seconds (windows start at a charge)."""
    return max(
        sum(tokens for moment, tokens in charges if start <= moment < start + window)
        for start, _ in charges
    )


# -- groups with a bucket -------------------------------------------------------------------


def test_an_idle_limit_lets_one_burst_through_then_paces():
    waits = [ratelimit.reserve("esi:burst", 1.0, 3.0) for _ in range(6)]

    assert max(waits[:4]) < 0.1  # the burst: 3 seconds' worth of slots, and the current one
    assert 0.8 < waits[4] <= 1.0
    assert 1.8 < waits[5] <= 2.0


def test_the_burst_is_half_the_headroom_the_share_leaves():
    tokens, window, share = 3600, 900.0, 0.8

    interval = bucket_interval(tokens, window, share)
    # The slots of the burst, and the current one.
    burst_tokens = (bucket_burst(tokens, window, share) / interval + 1) * SUCCESS_COST

    assert burst_tokens == pytest.approx(tokens * (1 - share) / 2)
    assert bucket_burst(tokens, window, 1.0) == 0
    assert bucket_interval(tokens, window, share) * share == pytest.approx(0.5)


def test_a_bucketed_group_bursts_once_then_is_paced_at_its_share(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    limit, window, share = 60, 3.0, 0.8
    fake.configure(esi_buckets={**NO_BUCKETS, "character": (limit, window)})
    ids = world.add_characters(49)
    client = esi(bucket_share=share)
    client.character(ids[0])  # its answer names the bucket
    time.sleep(bucket_burst(limit, window, share))  # idle long enough for the whole burst
    fake.reset_stats()

    results = list(client.details(character_calls(ids[1:])))

    assert {result.status for _, result in results} == {200}
    report = fake.esi_report()
    charges = report["charges"]["character"]["charges"]
    interval = bucket_interval(limit, window, share)
    # The burst: half the headroom (6 tokens: 3 requests) at once.
    burst_tokens = limit * (1 - share) / 2
    at_once = sum(1 for moment, _ in charges if moment < charges[0][0] + interval / 2)
    assert at_once * SUCCESS_COST == pytest.approx(burst_tokens)
    assert most_tokens_in_a_window(charges, window) <= share * limit + burst_tokens
    # Throughput: at least 90% of the share, measured from the first charge to the last.
    spent = sum(tokens for _, tokens in charges[:-1])
    rate = spent / (charges[-1][0] - charges[0][0])
    assert rate >= 0.9 * share * limit / window
    assert report["breaches"] == {"rate_limit": 0, "error_limit": 0, "during_420": 0}
    assert client.bucket("character") == (limit, window)


def test_429_on_a_bucketed_group_blocks_the_group_and_the_next_run_waits_it_out(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    fake.configure(esi_buckets={**NO_BUCKETS, "character": (60, 3.0)}, burst_429=1)
    ids = world.add_characters(5)
    client = esi()

    with pytest.raises(RateLimited) as caught:
        list(client.details(character_calls(ids)))

    assert caught.value.retry_after == 1.0
    assert 0 < ratelimit.blocked_for("esi:character") <= 1.0
    assert ratelimit.blocked_for(ERROR_GATE) == 0
    assert len(list(client.details(character_calls(ids)))) == 5
    assert fake.esi_report()["breaches"]["rate_limit"] == 0


# -- groups without a bucket ----------------------------------------------------------------


def test_a_group_without_a_bucket_runs_its_details_concurrently(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    fake.configure(esi_buckets=NO_BUCKETS, latency_esi=LATENCY)
    ids = world.add_characters(88)
    client = esi()
    before = ratelimit.calls()

    started = time.monotonic()
    for character_id in ids[:8]:
        client.character(character_id)
    one_at_a_time = (time.monotonic() - started) / 8
    started = time.monotonic()
    results = dict(client.details(character_calls(ids[8:])))
    parallel = time.monotonic() - started

    assert len(results) == 80
    assert all(isinstance(result, Detail) and result.status == 200 for result in results.values())
    assert results[character_calls([ids[8]])[0]].body == world.character_details(ids[8])
    report = fake.esi_report()
    assert report["max_in_flight"]["overall"] == client.concurrency == 8
    assert parallel < 80 * one_at_a_time / 4
    assert ratelimit.calls()["esi:character"] - before.get("esi:character", 0) == 88
    assert "charges" not in report or "character" not in report["charges"]


@pytest.mark.django_db(transaction=True)
def test_two_workers_together_keep_to_the_deployment_concurrency(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    fake.configure(esi_buckets=NO_BUCKETS, latency_esi=LATENCY)
    ids = world.add_characters(60)
    answered: list[int] = []
    failures: list[BaseException] = []

    def worker(chunk: list[int]) -> None:
        try:
            client = esi(concurrency=4, max_wait=30.0)
            answered.append(len(list(client.details(character_calls(chunk)))))
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(ids[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert answered == [30, 30]
    report = fake.esi_report()
    # Each alone would have 4 in flight; the shared slots hold both to 4 together.
    assert report["max_in_flight"]["overall"] == 4
    assert not ConcurrencySlot.objects.exclude(holder="").exists()


def test_a_held_lease_is_not_taken_and_a_lapsed_one_is():
    first = ratelimit.lease("esi:concurrency", 2, 30.0)
    second = ratelimit.lease("esi:concurrency", 2, 30.0)
    assert first is not None
    assert second not in (None, first)
    assert ratelimit.lease("esi:concurrency", 2, 30.0) is None

    # The first holder died: its lease lapses and the slot goes to the next caller.
    ConcurrencySlot.objects.filter(holder=first).update(leased_until=time.time() - 1)
    third = ratelimit.lease("esi:concurrency", 2, 30.0)
    assert third is not None
    ratelimit.release(first)  # late: it no longer holds the slot
    assert ratelimit.lease("esi:concurrency", 2, 30.0) is None

    ratelimit.release(third)
    assert ratelimit.lease("esi:concurrency", 2, 30.0) is not None


def test_leaving_a_run_early_gives_every_slot_back(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    fake.configure(esi_buckets=NO_BUCKETS, latency_esi=LATENCY)
    client = esi()
    run = client.details(character_calls(world.add_characters(30)))

    next(run)
    next(run)
    run.close()

    assert ConcurrencySlot.objects.filter(name="esi:concurrency").count() == 8
    assert not ConcurrencySlot.objects.exclude(holder="").exists()


def test_a_not_found_detail_is_yielded_and_the_run_goes_on(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    fake.configure(esi_buckets=NO_BUCKETS)
    ids = world.add_characters(10)
    world.add_unresolvable(ids[3:5])

    results = dict(esi().details(character_calls(ids)))

    missing = {call.path for call, result in results.items() if isinstance(result, EsiNotFound)}
    assert len(results) == 10
    assert missing == {f"characters/{i}/" for i in ids[3:5]}


def test_a_transient_failure_sends_nothing_more_but_yields_what_was_in_flight(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    fake.configure(esi_buckets=NO_BUCKETS, latency_esi=LATENCY)
    ids = world.add_characters(60)
    client = esi()
    client.character(ids[0])  # the group is known: the run starts 8 at once
    fake.reset_stats()
    fake.configure(fault_rate_5xx=0.3, fault_seed=3)

    yielded: list[tuple[DetailCall, Any]] = []
    with pytest.raises(EsiUnavailable):
        collect(client.details(character_calls(ids[1:])), yielded)

    report = fake.esi_report()
    statuses = report["statuses"]["character"]
    failed = sum(count for status, count in statuses.items() if int(status) >= 500)
    assert failed >= 1
    assert len(yielded) + failed == report["calls"]["total"] < 59
    assert not ConcurrencySlot.objects.exclude(holder="").exists()


def test_calls_are_counted_by_route_group(fake: FakeUpstream, world: World, esi: MakeClient):
    fake.configure(esi_buckets=NO_BUCKETS)
    ids = world.add_characters(3)
    client = esi()
    before = ratelimit.calls()

    client.names(ids)
    list(client.details(character_calls(ids)))
    client.affiliation(ids)

    after = ratelimit.calls()
    counted = {name: calls - before.get(name, 0) for name, calls in after.items()}
    assert {name: calls for name, calls in counted.items() if calls} == {
        "esi:names": 1,
        "esi:character": 3,
        "esi:char-affiliation": 1,
    }
    assert fake.esi_report()["calls"]["total"] == 5


# -- the error limit -------------------------------------------------------------------------


def test_many_unresolvable_ids_slow_down_and_never_reach_a_420(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    fake.configure(esi_buckets=NO_BUCKETS, esi_error_limit=ESI_ERROR_LIMIT)
    ids = world.add_characters(120)
    world.add_unresolvable(ids)
    client = esi(max_wait=1.0)
    client.character(world.add_characters(1)[0])  # the group is known: the run starts 8 at once

    yielded: list[tuple[DetailCall, Any]] = []
    with pytest.raises(RateLimited):
        collect(client.details(character_calls(ids[:100])), yielded)

    # Errors ran fast until fewer than ERROR_SLOWDOWN_BELOW were left, then each one closed
    # the gate for a share of the window: longer than this caller waits, so it stopped.
    report = fake.esi_report()
    errors = report["error_answers"]
    assert all(isinstance(result, EsiNotFound) for _, result in yielded)
    assert len(yielded) == errors
    assert errors > ESI_ERROR_LIMIT - ERROR_SLOWDOWN_BELOW
    assert errors <= ESI_ERROR_LIMIT - ERROR_SLOWDOWN_BELOW + client.concurrency
    assert 1.0 < ratelimit.blocked_for(ERROR_GATE) < 5.0

    # A patient caller goes on one request at a time, each after its pause.
    fake.reset_stats()
    client.max_wait = 10.0
    later = list(client.details(character_calls(ids[100:103])))

    report = fake.esi_report()
    assert len(later) == 3
    assert report["max_in_flight"]["overall"] == 1
    assert report["breaches"] == {"rate_limit": 0, "error_limit": 0, "during_420": 0}
    assert report["min_error_remain"] > client.error_floor


def test_a_420_storm_stops_every_caller_until_it_ends(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    fake.configure(esi_buckets=NO_BUCKETS)
    ids = world.add_characters(40)
    client = esi(max_wait=1.0)
    client.character(ids[0])
    fake.reset_stats()
    fake.configure(storm_420=5)

    with pytest.raises(RateLimited) as caught:
        list(client.details(character_calls(ids[1:])))
    other = esi(max_wait=1.0)
    with pytest.raises(RateLimited):
        other.names([ids[0]])
    with pytest.raises(RateLimited):
        list(other.details(character_calls(ids[1:])))

    assert 4 <= caught.value.retry_after <= 5
    assert ratelimit.blocked_for(ERROR_GATE) > 3
    report = fake.esi_report()
    assert report["calls"]["total"] <= client.concurrency
    assert report["breaches"]["during_420"] == 0


# -- affiliation -------------------------------------------------------------------------------


def test_affiliation_answers_corporation_alliance_and_faction(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    ids = world.add_characters(50)

    answer = esi().affiliation(ids)

    assert all(isinstance(row, Affiliation) for row in answer)
    assert {row.character_id: row for row in answer} == {
        character_id: Affiliation(
            character_id,
            world.affiliation(character_id)["corporation_id"],
            world.affiliation(character_id).get("alliance_id"),
            world.affiliation(character_id).get("faction_id"),
        )
        for character_id in ids
    }
    assert ratelimit.calls()["esi:char-affiliation"] == 1


def test_one_unknown_character_fails_the_affiliation_call(
    fake: FakeUpstream, world: World, esi: MakeClient
):
    ids = world.add_characters(3)
    world.add_unresolvable(ids[1:2])

    with pytest.raises(EsiNotFound) as caught:
        esi().affiliation(ids)

    assert caught.value.status == 404


@pytest.mark.parametrize("count", [0, 1001])
def test_affiliation_takes_1_to_1000_ids(esi: MakeClient, count: int):
    with pytest.raises(ValueError, match="1000"):
        esi().affiliation(list(range(1, count + 1)))


def test_affiliation_learns_its_bucket(fake: FakeUpstream, world: World, esi: MakeClient):
    fake.configure(esi_buckets={"char-affiliation": (300, 900.0)})
    client = esi()

    client.affiliation(world.add_characters(2))

    assert client.bucket("char-affiliation") == (300, 900.0)
    assert client.interval("char-affiliation") == bucket_interval(300, 900.0)


# -- settings ----------------------------------------------------------------------------------


def test_the_deployment_client_takes_its_share_and_concurrency_from_the_settings(settings):
    settings.ESI_BUCKET_SHARE = 0.5
    settings.ESI_CONCURRENCY = 3

    client = clients.esi_client(ratelimit)

    assert (client.bucket_share, client.concurrency) == (0.5, 3)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ESI_BUCKET_SHARE", "0", "ESI_BUCKET_SHARE must be above 0 and at most 1, not 0.0."),
        ("ESI_BUCKET_SHARE", "1.5", "ESI_BUCKET_SHARE must be above 0 and at most 1, not 1.5."),
        ("ESI_BUCKET_SHARE", "-1", "ESI_BUCKET_SHARE must be above 0 and at most 1, not -1.0."),
        ("ESI_CONCURRENCY", "0", "ESI_CONCURRENCY must be at least 1, not 0."),
    ],
)
def test_bad_esi_pacing_settings_are_refused(name: str, value: str, message: str):
    env = {**os.environ, "DJANGO_DEBUG": "true", name: value}

    result = subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
    )

    assert result.returncode == 1
    assert f"ImproperlyConfigured: {message}" in result.stderr
