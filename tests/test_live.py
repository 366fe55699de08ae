"""The live follower of R2Z2's feed against the fake's `ephemeral/` over real HTTP on loopback.

Every test checks the rules R2Z2 states (at most 15 requests a second, 6 seconds before a
404'd number is asked again) through the fake's violation count, and what was stored
against the fake's report of what it fed.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from backfill.models import CoverageGap
from fakeupstream.server import FakeUpstream
from killboard import ratelimit
from killboard.export import iter_records
from killboard.models import Killmail, RejectedKillmail
from live.follower import FEED, Follower, RunTotals
from live.models import FollowerState
from tests.conftest import load
from upstream import clients
from upstream.r2z2 import R2z2Unavailable, parse_package, parse_sequence

pytestmark = pytest.mark.django_db

PACKAGE_SAMPLE = "r2z2_package_134265477.json"


@pytest.fixture(autouse=True)
def _fast_loop(settings: Any) -> None:
    """Short polls and backoffs; the 404 wait stays R2Z2's 6 seconds, which the fake checks."""
    settings.LIVE_POLL_SECONDS = 0.05
    settings.LIVE_PROBE_AFTER_SECONDS = 0.2
    settings.LIVE_NOT_FOUND_WAIT_SECONDS = 6.0
    settings.LIVE_MAX_BACKOFF_SECONDS = 0.2


def follow(max_killmails: int | None = None, seconds: float | None = None) -> RunTotals:
    """One run of the follower as the command runs it."""
    follower = Follower(clients.r2z2_client(ratelimit))
    return follower.run(max_killmails=max_killmails, seconds=seconds)


def start_at(sequence: int) -> None:
    """Place the follower's cursor, as if it had read everything before `sequence`."""
    FollowerState.objects.update_or_create(name=FEED, defaults={"sequence": sequence})


def state() -> FollowerState:
    return FollowerState.objects.get(name=FEED)


def fed(report: dict[str, Any], through: int | None = None) -> list[int]:
    """The killmail ids the feed published, in sequence order (up to `through`)."""
    return [kid for seq, kid in report["packages"] if through is None or seq <= through]


def stored_zkb() -> dict[str, Any]:
    return {str(record["killmail_id"]): record["zkb"] for record in iter_records()}


def requests_for(report: dict[str, Any], first: int, last: int) -> int:
    """Requests the fake answered for the numbers first..last."""
    return sum(n for seq, n in report["requests"].items() if first <= int(seq) <= last)


def assert_no_violations(fake: FakeUpstream) -> None:
    assert fake.stats()["violations"] == []


# -- the client ----------------------------------------------------------------------------


def test_the_real_package_sample_parses_whole():
    data = load(PACKAGE_SAMPLE)
    package = parse_package(96599404, data)
    assert package.killmail_id == 134265477
    assert package.hash == data["hash"]
    assert package.esi == data["esi"]
    assert package.zkb["attackerCount"] == 1
    assert package.uploaded_at == datetime.fromtimestamp(1774448822, UTC)
    assert package.raw is data


def test_a_package_without_id_or_hash_is_still_returned_whole():
    data = {"esi": {"killmail_time": "2026-01-01T00:00:00Z"}, "uploaded_at": "soon"}
    package = parse_package(7, data)
    assert (package.killmail_id, package.hash, package.uploaded_at) == (None, None, None)
    assert package.raw == data


@pytest.mark.parametrize("body", [[], "x", None, 3])
def test_a_package_that_is_no_object_is_a_transient_error(body):
    with pytest.raises(R2z2Unavailable):
        parse_package(7, body)


@pytest.mark.parametrize("body", [{}, {"sequence": -1}, {"sequence": 1.5}, [], None])
def test_a_sequence_answer_without_a_position_is_a_transient_error(body):
    with pytest.raises(R2z2Unavailable):
        parse_sequence(body)


def test_client_reads_the_sequence_and_packages_and_none_for_a_missing_one(fake):
    numbers = fake.feed_append(3)
    client = clients.r2z2_client(ratelimit)
    assert client.sequence() == numbers[0]
    package = client.package(numbers[1])
    assert package is not None
    assert package.sequence == numbers[1]
    assert package.killmail_id == fed(fake.feed_report())[1]
    assert client.package(numbers[-1] + 1) is None
    assert_no_violations(fake)


# -- position ------------------------------------------------------------------------------


def test_first_start_begins_at_the_published_sequence(fake):
    numbers = fake.feed_append(60)
    published = fake.feed_report()["published"]
    assert published == numbers[51]
    totals = follow(max_killmails=3)
    assert totals.read == totals.stored == 3
    assert state().sequence == published + 3
    assert list(Killmail.objects.order_by("killmail_id").values_list("pk", flat=True)) == sorted(
        fed(fake.feed_report())[51:54]
    )
    assert state().started_at is not None
    assert_no_violations(fake)


def test_restart_resumes_exactly_where_it_stopped(fake):
    numbers = fake.feed_append(60)
    start_at(numbers[0])
    follow(max_killmails=25)
    assert state().sequence == numbers[25]
    follow(max_killmails=35)
    report = fake.feed_report()
    assert state().sequence == numbers[-1] + 1
    assert set(report["fetches"].values()) == {1}
    assert len(report["fetches"]) == 60
    assert Killmail.objects.count() == state().stored == 60
    assert set(Killmail.objects.values_list("pk", flat=True)) == set(fed(report))
    assert_no_violations(fake)


def test_not_found_at_the_head_waits_six_seconds_before_asking_again(fake):
    numbers = fake.feed_append(3)
    start_at(numbers[0])
    # The next package comes while the follower waits; sequence.json does not move for it.
    later = threading.Timer(1.5, fake.feed_append, args=(1,))
    later.start()
    try:
        totals = follow(seconds=8.0)
    finally:
        later.cancel()
    report = fake.feed_report()
    after = str(numbers[-1] + 1)
    assert totals.read == totals.stored == 4
    assert report["requests"][after] == 2  # a 404, then the package 6 s later
    assert state().not_found_waits >= 1
    assert_no_violations(fake)


def test_lag_and_rate_are_kept_on_the_state_row(fake):
    numbers = fake.feed_append(10)
    start_at(numbers[0])
    follow(max_killmails=10)
    row = state()
    assert row.lag_seconds is not None
    assert 0 <= row.lag_seconds < 60
    assert row.killmails_per_minute == 10
    assert row.last_sequence == numbers[-1]
    assert row.last_killmail_id == fed(fake.feed_report())[-1]
    assert row.heartbeat_at is not None
    assert row.is_running()


# -- what the feed holds ---------------------------------------------------------------------


def test_a_reprocessed_killmail_is_stored_once_and_its_zkb_refreshed(fake):
    fake.configure(live_reprocess_rate=0.3)
    numbers = fake.feed_append(50)
    report = fake.feed_report()
    assert report["reprocessed"], "the fake should have republished some killmails"
    start_at(numbers[0])
    totals = follow(max_killmails=50)
    ids = set(fed(report))
    assert Killmail.objects.count() == len(ids) == totals.stored
    assert totals.already_stored == totals.zkb_refreshed == 50 - len(ids)
    assert stored_zkb() == report["latest_zkb"]
    assert_no_violations(fake)


def test_holes_are_skipped_and_nothing_around_them_is_lost(fake):
    fake.configure(live_hole_rate=0.1, fault_seed=3)
    fake.feed_append(52)  # the last one is published: nothing to probe beyond it
    report = fake.feed_report()
    holes = set(report["holes"])
    assert any(hole + 1 in holes for hole in holes), "the seed should give a run of holes"
    start_at(report["first"])
    totals = follow(max_killmails=52)
    assert set(Killmail.objects.values_list("pk", flat=True)) == set(fed(report))
    # A run of holes looks like an expired stretch: noted for the ledger, nothing skipped.
    noted = {
        number
        for gap in CoverageGap.objects.all()
        for number in range(gap.first_sequence, gap.last_sequence + 1)
    }
    assert noted <= holes
    assert totals.holes + totals.gaps >= 1
    assert max(fake.feed_report()["fetches"].values()) <= 2
    assert_no_violations(fake)


def test_an_expired_stretch_becomes_one_coverage_gap_found_by_binary_search(fake):
    numbers = fake.feed_append(210)
    start_at(numbers[0])
    follow(max_killmails=10)
    last_read = state().last_uploaded_at
    fake.feed_expire_through(numbers[119])
    totals = follow(max_killmails=90)
    report = fake.feed_report()

    gap = CoverageGap.objects.get()
    assert (gap.first_sequence, gap.last_sequence) == (numbers[10], numbers[119])
    assert gap.start == last_read
    first_after = parse_package(numbers[120], json.loads(fake.feed.package(numbers[120])))
    assert gap.end == first_after.uploaded_at
    assert totals.gaps == 1
    assert totals.read == 90
    # One 404 for the first missing number, one for the next, then log2 of the rest.
    searched = report["published"] + 1 - (numbers[10] + 1)
    # A missing middle costs two requests: it may be a hole among files still there.
    assert requests_for(report, numbers[10], numbers[119]) <= 2 + 2 * math.ceil(math.log2(searched))
    assert max(report["fetches"].values()) <= 2
    assert set(Killmail.objects.values_list("pk", flat=True)) == set(
        fed(report)[:10] + fed(report)[120:]
    )
    assert state().sequence == numbers[-1] + 1
    assert_no_violations(fake)


def test_a_package_missing_killmail_time_is_quarantined_not_lost(fake, monkeypatch):
    world = fake.world
    real_body_json = world.body_json

    def without_time(killmail_id: int) -> str:
        body = json.loads(real_body_json(killmail_id))
        del body["killmail_time"]
        return json.dumps(body)

    numbers = fake.feed_append(2)
    monkeypatch.setattr(world, "body_json", without_time)
    numbers += fake.feed_append(1)
    monkeypatch.setattr(world, "body_json", real_body_json)
    numbers += fake.feed_append(2)
    start_at(numbers[0])
    totals = follow(max_killmails=5)
    broken = fed(fake.feed_report())[2]
    assert totals.read == 5
    assert totals.stored == 4
    assert totals.rejected == 1
    rejected = RejectedKillmail.objects.get()
    assert rejected.killmail_id == broken
    assert rejected.record["sequence_id"] == numbers[2]
    assert "killmail_time" in rejected.reason
    assert not Killmail.objects.filter(pk=broken).exists()
    assert state().rejected == 1
    assert state().sequence == numbers[-1] + 1


# -- faults --------------------------------------------------------------------------------


def test_garbage_bodies_and_5xx_are_survived_and_everything_stored(fake):
    numbers = fake.feed_append(60)
    start_at(numbers[0])
    fake.configure(fault_rate_5xx=0.15, fault_rate_html=0.1, fault_rate_truncated=0.1, fault_seed=5)
    totals = follow(max_killmails=60)
    report = fake.feed_report()
    assert totals.errors > 0
    row = state()
    assert row.errors >= totals.errors
    assert row.last_error
    assert row.last_error_at
    assert set(Killmail.objects.values_list("pk", flat=True)) == set(fed(report))
    assert row.sequence == numbers[-1] + 1
    assert_no_violations(fake)


def test_a_429_waits_as_long_as_r2z2_says(fake):
    numbers = fake.feed_append(5)
    start_at(numbers[0])
    fake.configure(burst_429=1)
    started = datetime.now(UTC)
    totals = follow(max_killmails=5)
    assert totals.stored == 5
    assert totals.errors == 1
    assert datetime.now(UTC) - started >= timedelta(seconds=1)
    assert_no_violations(fake)


def test_a_second_follower_on_the_same_feed_does_not_store_twice(fake):
    numbers = fake.feed_append(10)
    start_at(numbers[0])
    follower = Follower(clients.r2z2_client(ratelimit))
    follower.run(max_killmails=2)
    FollowerState.objects.filter(name=FEED).update(sequence=numbers[5])  # another one moved it
    follower.run(max_killmails=5)
    assert Killmail.objects.count() == 7
    assert state().sequence == numbers[-1] + 1


def test_stop_ends_the_loop_after_the_current_package(fake):
    numbers = fake.feed_append(5)
    start_at(numbers[0])
    stop = threading.Event()
    stop.set()
    totals = Follower(clients.r2z2_client(ratelimit), stop).run()
    assert totals.read == 0
    assert state().sequence == numbers[0]


# -- the command ---------------------------------------------------------------------------


def test_follow_live_reads_max_killmails_then_prints_one_summary(fake, capsys):
    numbers = fake.feed_append(20)
    start_at(numbers[0])
    call_command("follow_live", "--max-killmails", "7")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith("Read 7 package(s): 7 stored, 0 already stored")
    assert f"last sequence {numbers[6]}" in out[0]
    assert Killmail.objects.count() == 7


def test_follow_live_stops_after_seconds(fake, capsys):
    numbers = fake.feed_append(3)
    start_at(numbers[-1] + 1)  # caught up: it only polls
    started = datetime.now(UTC)
    call_command("follow_live", "--seconds", "0.5")
    assert datetime.now(UTC) - started < timedelta(seconds=5)
    assert capsys.readouterr().out.startswith("Read 0 package(s)")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-killmails", "0", "--max-killmails must be at least 1"),
        ("--max-killmails", "ten", "--max-killmails must be a whole number"),
        ("--max-killmails", "-3", "--max-killmails must be a whole number"),
        ("--seconds", "0", "--seconds must be a positive number"),
        ("--seconds", "soon", "--seconds must be a positive number"),
        ("--seconds", "nan", "--seconds must be a positive number"),
    ],
)
def test_follow_live_refuses_bad_options_with_one_line(option, value, message):
    with pytest.raises(CommandError, match=message) as caught:
        call_command("follow_live", option, value)
    assert "\n" not in str(caught.value)


def test_first_start_records_its_position_even_when_nothing_comes(fake):
    numbers = fake.feed_append(1)
    follow(seconds=0.3)
    assert state().sequence == numbers[0] + 1
    assert state().head_sequence == numbers[0]


def test_a_restarted_follower_keeps_the_6_second_wait_of_a_404_at_the_head(fake):
    numbers = fake.feed_append(1)
    start_at(numbers[0])
    follow(seconds=0.6)  # reads it, then probes the next one: 404
    assert fake.feed_report()["requests"][str(numbers[0] + 1)] == 1
    follow(seconds=1.0)  # a new process: it must not ask again so soon
    assert fake.feed_report()["requests"][str(numbers[0] + 1)] == 1
    assert state().not_found_sequence == numbers[0] + 1
    assert_no_violations(fake)


def test_the_admin_page_shows_the_follower_running_with_its_lag(fake, admin_client):
    numbers = fake.feed_append(3)
    start_at(numbers[0])
    follow(max_killmails=3)
    changelist = admin_client.get("/admin/live/followerstate/")
    assert changelist.status_code == 200
    assert b"icon-yes" in changelist.content  # the heartbeat is recent: running
    page = admin_client.get(f"/admin/live/followerstate/{FEED}/change/")
    assert page.status_code == 200
    assert f"{state().lag_seconds:.1f} s".encode() in page.content


def test_a_follower_started_on_an_empty_feed_reads_the_first_packages(fake):
    fake.configure(live_rate=20.0)
    totals = follow(seconds=10)
    report = fake.feed_report()
    assert totals.read > 0
    assert set(fed(report, through=state().sequence - 1)) <= set(
        Killmail.objects.values_list("killmail_id", flat=True)
    )
    assert_no_violations(fake)
