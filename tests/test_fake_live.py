"""Tests of the fake R2Z2 live feed: ``ephemeral/sequence.json`` and ``ephemeral/{N}.json``.

They talk to the fake over real HTTP on loopback and move the feed's clock instead of sleeping.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from fakeupstream.feed import DEFAULT_FIRST_SEQUENCE, NOT_YET_WAIT_SECONDS
from fakeupstream.server import FakeUpstream
from fakeupstream.world import World, killmail_time
from tests.conftest import load

HEADERS = {"User-Agent": "killboard-backfill/0.1 (ops@example.com)"}
FIRST = DEFAULT_FIRST_SEQUENCE


class Clock:
    """A clock the test moves by hand, starting at the real time (whole seconds: exact sums)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(fake: FakeUpstream) -> Clock:
    """The fake feed's clock, moved by the test."""
    clock = Clock()
    fake.feed.clock = clock
    return clock


def get(fake: FakeUpstream, name: str, **headers: str) -> requests.Response:
    return requests.get(fake.r2z2_url + "ephemeral/" + name, headers=HEADERS | headers, timeout=10)


def sequence(fake: FakeUpstream) -> int:
    return get(fake, "sequence.json").json()["sequence"]


def package(fake: FakeUpstream, number: int) -> requests.Response:
    return get(fake, f"{number}.json")


def test_sequence_lags_then_catches_up_every_51_packages(fake: FakeUpstream) -> None:
    assert sequence(fake) == FIRST - 1
    fake.feed_append(1)
    assert sequence(fake) == FIRST
    fake.feed_append(50)
    assert sequence(fake) == FIRST
    assert package(fake, FIRST + 50).status_code == 200
    fake.feed_append(1)
    assert sequence(fake) == FIRST + 51


def test_package_has_the_real_packages_keys_and_the_world_body(
    fake: FakeUpstream, world: World
) -> None:
    real = load("r2z2_package_134265477.json")
    [number] = fake.feed_append(1)
    got = package(fake, number).json()
    assert list(got) == list(real)
    assert set(real["zkb"]) - {"locationID", "labels"} <= set(got["zkb"])
    assert got["esi"] == world.body(got["killmail_id"])
    assert got["hash"] == got["zkb"]["hash"] == world.killmail_hash(got["killmail_id"])
    assert got["zkb"]["attackerCount"] == len(got["esi"]["attackers"])
    assert got["zkb"]["href"].endswith(f"/killmails/{got['killmail_id']}/{got['hash']}/")
    assert got["sequence_id"] == number
    assert isinstance(got["uploaded_at"], int)
    assert abs(got["uploaded_at"] - time.time()) < 60


def test_package_404s_before_it_is_appended(fake: FakeUpstream) -> None:
    assert package(fake, FIRST).status_code == 404
    assert fake.stats()["violation_count"] == 0


def test_package_404s_a_day_after_its_upload(fake: FakeUpstream, clock: Clock) -> None:
    [number] = fake.feed_append(1)
    clock.advance(86_399)
    assert package(fake, number).status_code == 200
    clock.advance(1)
    assert package(fake, number).status_code == 404


def test_expiring_through_a_number_404s_every_package_up_to_it(fake: FakeUpstream) -> None:
    numbers = fake.feed_append(5)
    answer = requests.post(fake.url + "/_fake/live/expire", json={"through": numbers[2]})
    assert answer.json() == {"expired_through": numbers[2]}
    assert [package(fake, n).status_code for n in numbers] == [404, 404, 404, 200, 200]
    assert fake.feed_report()["expired_through"] == numbers[2]


def test_asking_again_within_6_seconds_of_a_404_is_a_violation(
    fake: FakeUpstream, clock: Clock
) -> None:
    assert package(fake, FIRST).status_code == 404
    clock.advance(NOT_YET_WAIT_SECONDS - 1)
    fake.feed_append(1)
    assert package(fake, FIRST).status_code == 200
    assert fake.stats()["violations_by_rule"] == {"r2z2_404_wait": 1}


def test_asking_again_after_6_seconds_is_no_violation(fake: FakeUpstream, clock: Clock) -> None:
    assert package(fake, FIRST).status_code == 404
    clock.advance(NOT_YET_WAIT_SECONDS)
    assert package(fake, FIRST).status_code == 404
    clock.advance(NOT_YET_WAIT_SECONDS)
    fake.feed_append(1)
    assert package(fake, FIRST).status_code == 200
    assert package(fake, FIRST).status_code == 200
    assert fake.stats()["violation_count"] == 0


def test_holes_404_forever(fake: FakeUpstream) -> None:
    fake.configure(live_hole_rate=0.3)
    fake.feed_append(60)
    report = fake.feed_report()
    holes = report["holes"]
    assert holes
    numbers = sorted([n for n, _ in report["packages"]] + holes)
    assert numbers == list(range(FIRST, report["newest"] + 1))
    fake.feed_append(60)
    assert {package(fake, n).status_code for n in holes} == {404}
    assert sequence(fake) not in holes


def test_reprocessed_packages_carry_the_same_killmail_with_new_zkb(fake: FakeUpstream) -> None:
    fake.configure(live_reprocess_rate=0.5)
    numbers = fake.feed_append(40)
    packages = [package(fake, n).json() for n in numbers]
    reprocessed = set(fake.feed_report()["reprocessed"])
    assert 5 < len(reprocessed) < 35
    first_seen: dict[int, dict[str, Any]] = {}
    for got in packages:
        earlier = first_seen.setdefault(got["killmail_id"], got)
        assert (got["sequence_id"] in reprocessed) == (earlier is not got)
        if earlier is not got:
            assert (got["hash"], got["esi"]) == (earlier["hash"], earlier["esi"])
            assert got["zkb"]["totalValue"] != earlier["zkb"]["totalValue"]
            assert got["zkb"]["points"] != earlier["zkb"]["points"]
    latest = {str(got["killmail_id"]): got["zkb"] for got in packages}
    assert fake.feed_report()["latest_zkb"] == latest


def test_late_arrivals_are_1_to_72_hours_old(fake: FakeUpstream) -> None:
    fake.configure(live_late_rate=0.5)
    numbers = fake.feed_append(60)
    report = fake.feed_report()
    late = set(report["late"])
    assert 10 < len(late) < 50
    now = datetime.now(UTC)
    for number in numbers:
        got = package(fake, number).json()
        age = now - datetime.fromisoformat(got["esi"]["killmail_time"])
        if got["killmail_id"] in late:
            assert timedelta(hours=1) < age < timedelta(hours=72)
        else:
            assert age < timedelta(minutes=5)


def test_totals_and_day_lists_count_fed_killmails_of_past_days(
    fake: FakeUpstream, world: World
) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday_noon = today - timedelta(hours=12)
    late_seconds = (datetime.now(UTC) - yesterday_noon).total_seconds()
    fake.feed_append(7, late_seconds=late_seconds)
    fed = {killmail_id for _, killmail_id in fake.feed_report()["packages"]}
    key = f"{yesterday_noon:%Y%m%d}"
    totals = requests.get(fake.r2z2_url + "history/totals.json", headers=HEADERS, timeout=10)
    assert totals.json()[key] == 7
    day = requests.get(fake.r2z2_url + f"history/{key}.json", headers=HEADERS, timeout=10)
    assert {int(i) for i in day.json()} == fed
    assert all(killmail_time(i).date() == yesterday_noon.date() for i in fed)


def test_live_rate_grows_the_feed_from_elapsed_time(fake: FakeUpstream, clock: Clock) -> None:
    fake.configure(live_rate=10.0)
    clock.advance(3)
    assert sequence(fake) == FIRST
    assert fake.feed_report()["newest"] == FIRST + 29
    clock.advance(2.5)
    assert sequence(fake) == FIRST + 51
    requests.post(fake.url + "/_fake/config", json={"live_rate": 0.0}, timeout=10)
    clock.advance(100)
    assert fake.feed_report()["newest"] == FIRST + 54


def test_fed_killmails_spread_over_the_elapsed_time(fake: FakeUpstream, clock: Clock) -> None:
    fake.configure(live_rate=1.0)
    clock.advance(100)
    uploads = [package(fake, FIRST + i).json()["uploaded_at"] for i in (0, 99)]
    assert uploads[1] - uploads[0] == 99


def test_report_lists_every_package_hole_and_fetch(fake: FakeUpstream) -> None:
    fake.configure(live_hole_rate=0.2)
    numbers = fake.feed_append(30)
    for number in numbers[:3]:
        package(fake, number)
    package(fake, numbers[0])
    report = requests.get(fake.url + "/_fake/live", timeout=10).json()
    assert report == fake.feed_report()
    assert report["first"] == FIRST
    assert report["newest"] == numbers[-1]
    assert report["published"] == numbers[0]
    assert [n for n, _ in report["packages"]] == numbers
    assert len({i for _, i in report["packages"]}) == 30
    assert set(report["latest_zkb"]) == {str(i) for _, i in report["packages"]}
    assert report["fetches"] == {str(numbers[0]): 2, str(numbers[1]): 1, str(numbers[2]): 1}


def test_append_over_http_returns_the_new_numbers(fake: FakeUpstream) -> None:
    answer = requests.post(fake.url + "/_fake/live/append", json={"count": 3}, timeout=10)
    assert answer.json() == {"appended": [FIRST, FIRST + 1, FIRST + 2]}
    bad = requests.post(fake.url + "/_fake/live/append", json={"count": "many"}, timeout=10)
    assert bad.status_code == 400


def test_same_seed_gives_the_same_feed() -> None:
    def feed(fault_seed: int) -> dict[str, Any]:
        upstream = FakeUpstream(World(seed=3), fault_seed=fault_seed)
        upstream.feed.clock = lambda: 1_790_000_000.0
        upstream.configure(live_hole_rate=0.2, live_reprocess_rate=0.2, live_late_rate=0.2)
        upstream.feed_append(80)
        return upstream.feed_report()

    assert feed(5) == feed(5)
    assert feed(5)["holes"] != feed(6)["holes"]


def test_feed_routes_follow_the_r2z2_rules_and_faults(fake: FakeUpstream) -> None:
    fake.feed_append(1)
    assert get(fake, f"{FIRST}.json", **{"User-Agent": "python-requests"}).status_code == 200
    fake.configure(fault_rate_5xx=1.0)
    assert get(fake, "sequence.json").status_code in (502, 503, 504)
    stats = fake.stats()
    assert stats["violations_by_rule"] == {"r2z2_user_agent": 1}
    assert (stats["r2z2_sequence"], stats["r2z2_package"]) == (1, 1)
    fake.configure(fault_rate_5xx=0.0, burst_429=1)
    assert package(fake, FIRST).status_code == 429
    assert fake.feed_report()["fetches"] == {str(FIRST): 1}


def test_bad_live_settings_are_refused(fake: FakeUpstream) -> None:
    with pytest.raises(ValueError, match="live_hole_rate"):
        fake.configure(live_hole_rate=1.0)
    fake.feed_append(1)
    with pytest.raises(ValueError, match="live_first_sequence"):
        fake.configure(live_first_sequence=5)


def test_python_m_fakeupstream_serves_a_growing_feed() -> None:
    command = [sys.executable, "-m", "fakeupstream", "--port", "0", "--live-rate", "20"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            urls = json.loads(process.stdout.readline())  # type: ignore[union-attr]
            time.sleep(0.3)
            answer = requests.get(urls["r2z2_url"] + "ephemeral/sequence.json", headers=HEADERS)
            assert answer.json() == {"sequence": FIRST}
            assert requests.get(urls["url"] + "/_fake/live", timeout=10).json()["newest"] > FIRST
        finally:
            process.terminate()
            process.wait(timeout=10)
