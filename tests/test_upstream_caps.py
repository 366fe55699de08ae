"""Caps that keep a bad upstream answer or a bad file from blocking work for good.

Waits named by zKillboard and ESI are capped at an hour, garbage waits fall back to the
defaults, oversized JSON values and tar members are one clear error, and a killmail hash
that is not 40 lowercase hex digits never reaches an ESI path.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from killboard import ratelimit, readers
from killboard.readers import UnreadableFile, read_records
from upstream import esi, zkillboard
from upstream.errors import RateLimited
from upstream.esi import ERROR_GATE, EsiClient, EsiNotFound
from upstream.limiter import MAX_UPSTREAM_WAIT, capped_wait
from upstream.zkillboard import ZkillboardClient, ZkillboardUnavailable

pytestmark = pytest.mark.django_db

CONTACT = "ops@example.com"
HASH = "0123456789abcdef0123456789abcdef01234567"
BILLION = str(10**9)
# Small stand-ins for the reader's limits, so no test allocates 64 MiB.
SMALL_LIMIT = 1000  # characters
SMALL_CHUNK = 100  # characters
GARBAGE_WAITS = ["soon", "-5", "nan", "inf", "-inf", "1e400", "", "Wed, 21 Oct 2015 07:28:00 GMT"]


@dataclass
class Stub:
    """An HTTP server on loopback giving one configured answer to every request, counted."""

    url: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = field(default_factory=list)
    requests: int = 0

    def answer(self, status: int, body: Any = None, **headers: str) -> None:
        """Answer every request from now on with `status`, `headers` and `body` as JSON."""
        self.status, self.body = status, {} if body is None else body
        self.headers = {name.replace("_", "-"): value for name, value in headers.items()}


@pytest.fixture
def stub() -> Iterator[Stub]:
    """A fresh stub server per test, on a free port of 127.0.0.1."""
    stub = Stub()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            stub.requests += 1
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            data = json.dumps(stub.body).encode()
            self.send_response(stub.status)
            for name, value in {**stub.headers, "Content-Type": "application/json"}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def zkb_client(stub: Stub) -> ZkillboardClient:
    return ZkillboardClient(stub.url, CONTACT, 1e6, ratelimit)


def esi_client(stub: Stub) -> EsiClient:
    return EsiClient(stub.url, CONTACT, ratelimit, max_wait=5.0)


def assert_blocked_an_hour_at_most(name: str) -> None:
    assert MAX_UPSTREAM_WAIT - 60 < ratelimit.blocked_for(name) <= MAX_UPSTREAM_WAIT


# -- waits -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 7.0),
        ("30", 30.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        (BILLION, MAX_UPSTREAM_WAIT),
        (1e18, MAX_UPSTREAM_WAIT),
        *((value, 7.0) for value in GARBAGE_WAITS),
        (float("nan"), 7.0),
    ],
)
def test_capped_wait_keeps_sane_waits_caps_huge_ones_and_defaults_the_rest(value, expected):
    assert capped_wait(value, 7.0) == expected


def test_zkillboard_retry_after_of_a_billion_seconds_waits_an_hour_at_most(stub):
    stub.answer(429, Retry_After=BILLION)

    with pytest.raises(RateLimited) as caught:
        zkb_client(stub).fetch_page("character", 90, 1)

    assert caught.value.retry_after == MAX_UPSTREAM_WAIT
    assert_blocked_an_hour_at_most(zkillboard.LIMIT_NAME)


@pytest.mark.parametrize("value", GARBAGE_WAITS)
def test_zkillboard_garbage_retry_after_falls_back_to_the_default(stub, value):
    stub.answer(429, Retry_After=value)

    with pytest.raises(RateLimited) as caught:
        zkb_client(stub).fetch_page("character", 90, 1)

    assert caught.value.retry_after == zkillboard.DEFAULT_RETRY_AFTER


def test_esi_retry_after_of_a_billion_seconds_waits_an_hour_at_most(stub):
    stub.answer(429, Retry_After=BILLION)

    with pytest.raises(RateLimited) as caught:
        esi_client(stub).character(90)

    assert caught.value.retry_after == MAX_UPSTREAM_WAIT
    assert_blocked_an_hour_at_most("esi:character")


@pytest.mark.parametrize("value", GARBAGE_WAITS)
def test_esi_garbage_retry_after_falls_back_to_the_default(stub, value):
    stub.answer(429, Retry_After=value)

    with pytest.raises(RateLimited) as caught:
        esi_client(stub).character(90)

    assert caught.value.retry_after == esi.DEFAULT_RETRY_AFTER


def test_esi_error_limit_reset_of_a_billion_seconds_on_a_420_is_capped(stub):
    stub.answer(420, X_ESI_Error_Limit_Remain="0", X_ESI_Error_Limit_Reset=BILLION)

    with pytest.raises(RateLimited) as caught:
        esi_client(stub).character(90)

    assert caught.value.retry_after == MAX_UPSTREAM_WAIT
    assert_blocked_an_hour_at_most(ERROR_GATE)


def test_esi_error_limit_reset_of_a_billion_seconds_running_low_is_capped(stub):
    stub.answer(200, {"name": "x"}, X_ESI_Error_Limit_Remain="1", X_ESI_Error_Limit_Reset=BILLION)

    esi_client(stub).character(90)

    assert_blocked_an_hour_at_most(ERROR_GATE)


def test_esi_garbage_error_limit_reset_falls_back_to_the_default(stub):
    stub.answer(420, X_ESI_Error_Limit_Reset="-1")

    with pytest.raises(RateLimited) as caught:
        esi_client(stub).character(90)

    assert caught.value.retry_after == esi.DEFAULT_ERROR_RESET


def test_a_bucket_stated_over_years_pauses_its_group_an_hour_at_most(stub):
    stub.answer(200, {"name": "x"}, X_Ratelimit_Limit="1/9999d", X_Ratelimit_Remaining="0")

    esi_client(stub).character(90)

    assert_blocked_an_hour_at_most("esi:character")


def test_a_slot_interval_of_years_waits_an_hour_at_most():
    ratelimit.reserve("slow", 1e12)

    assert ratelimit.reserve("slow", 1e12) <= MAX_UPSTREAM_WAIT


def test_block_holds_back_an_hour_at_most_and_nan_blocks_nothing():
    ratelimit.block("capped", 1e12)
    ratelimit.block("nan", float("nan"))

    assert_blocked_an_hour_at_most("capped")
    assert ratelimit.blocked_for("nan") == 0


# -- readers -----------------------------------------------------------------------------------


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers refuse values over SMALL_LIMIT and read SMALL_CHUNK characters at a time."""
    monkeypatch.setattr(readers, "MAX_VALUE_CHARS", SMALL_LIMIT)
    monkeypatch.setattr(readers, "READ_CHUNK", SMALL_CHUNK)


def padded(killmail_id: int, size: int) -> dict[str, Any]:
    """A record whose JSON is exactly `size` characters."""
    record: dict[str, Any] = {"killmail_id": killmail_id, "padding": ""}
    record["padding"] = "x" * (size - len(json.dumps(record)))
    return record


def test_an_oversized_json_lines_value_is_one_clear_error_naming_file_and_position(
    tmp_path, small_limits
):
    first = json.dumps(padded(1, 50)) + "\n"
    path = tmp_path / "in.jsonl"
    path.write_text(first + json.dumps(padded(2, 1_000_000)) + "\n" + json.dumps(padded(3, 50)))
    read: list[int] = []
    records: list[Any] = []

    with pytest.raises(UnreadableFile) as caught:
        records.extend(read_records(path, read.append))

    assert str(caught.value) == (
        f"{path}: a single JSON value larger than 1,000 characters at character {len(first)}"
    )
    assert [record["killmail_id"] for record in records] == [1]
    assert sum(read) < 100_000


def test_a_broken_line_before_a_big_file_is_still_invalid_json_not_an_oversized_value(
    tmp_path, small_limits
):
    path = tmp_path / "in.jsonl"
    lines = [json.dumps(padded(n, 100)) for n in range(10_000)]
    path.write_text('{"killmail_id": 1, "vic\n' + "\n".join(lines))
    read: list[int] = []

    with pytest.raises(UnreadableFile) as caught:
        list(read_records(path, read.append))

    assert str(caught.value) == (
        f"{path}: invalid or truncated JSON (Invalid control character at) at character 0"
    )
    assert sum(read) < 100_000


def test_an_oversized_array_element_stops_reading_at_the_limit(tmp_path, small_limits):
    path = tmp_path / "in.json"
    path.write_text(json.dumps([padded(1, 50), padded(2, 1_000_000)]))
    read: list[int] = []

    with pytest.raises(UnreadableFile, match=r"in\.json: a single JSON value larger than 1,000"):
        list(read_records(path, read.append))

    assert sum(read) < 100_000


def test_a_value_of_exactly_the_limit_is_read(tmp_path, small_limits):
    records = [padded(1, SMALL_LIMIT), padded(2, SMALL_LIMIT)]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))

    assert list(read_records(path)) == records


def test_a_limit_of_whole_mib_is_stated_in_mib(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_VALUE_CHARS", 1 << 20)
    path = tmp_path / "in.json"
    path.write_text(json.dumps(padded(1, (1 << 20) + 1)))

    with pytest.raises(UnreadableFile, match="larger than 1 MiB at character 0"):
        list(read_records(path))


def test_an_oversized_tar_member_is_one_clear_error_naming_it(tmp_path, small_limits):
    path = tmp_path / "in.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for record in (padded(1, 50), padded(2, 5000)):
            data = json.dumps(record).encode()
            info = tarfile.TarInfo(f"killmails/{record['killmail_id']}.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    records: list[Any] = []

    with pytest.raises(UnreadableFile) as caught:
        records.extend(read_records(path))

    assert str(caught.value) == (
        f"{path}:killmails/2.json: a tar member of 5,000 bytes, larger than 1,000 characters"
    )
    assert records == [padded(1, 50)]


# -- hashes ------------------------------------------------------------------------------------


BAD_HASHES = [
    "xyz",
    HASH.upper(),
    HASH[:-1],
    HASH + "0",
    HASH[:-1] + "g",
    HASH + "\n",
    "../../universe/names/" + "0" * 19,
    "",
    None,
    12345,
    ["a"],
]


def test_page_items_with_a_bad_hash_are_kept_with_an_empty_hash_and_their_zkb(stub):
    page = [{"killmail_id": 100 + n, "zkb": {"hash": bad}} for n, bad in enumerate(BAD_HASHES)]
    stub.answer(200, [*page, {"killmail_id": 99, "zkb": {"points": 1}}])

    items = zkb_client(stub).fetch_page("character", 90, 1)

    assert [(item.killmail_id, item.killmail_hash, item.body) for item in items] == [
        *((raw["killmail_id"], "", None) for raw in page),
        (99, "", None),
    ]
    assert [item.zkb for item in items[:-1]] == [raw["zkb"] for raw in page]


def test_page_items_keep_a_good_hash(stub):
    stub.answer(200, [{"killmail_id": 7, "zkb": {"hash": HASH}}])

    [item] = zkb_client(stub).fetch_page("character", 90, 1)

    assert item.killmail_hash == HASH


@pytest.mark.parametrize(
    "raw",
    [
        "not an object",
        {"zkb": {"hash": HASH}},
        {"killmail_id": "7", "zkb": {"hash": HASH}},
        {"killmail_id": 7, "zkb": HASH},
    ],
)
def test_page_items_without_an_id_or_a_zkb_object_still_fail_the_page(stub, raw):
    stub.answer(200, [raw])

    with pytest.raises(ZkillboardUnavailable):
        zkb_client(stub).fetch_page("character", 90, 1)


@pytest.mark.parametrize("bad", BAD_HASHES)
def test_esi_refuses_a_bad_hash_without_any_request(stub, bad):
    with pytest.raises(EsiNotFound, match=r"killmail 123: hash .* is not 40 hex digits"):
        esi_client(stub).killmail(123, bad)

    assert stub.requests == 0


@pytest.mark.parametrize("bad", [0, -1, True, "123", 1.0, None])
def test_esi_refuses_a_bad_killmail_id_without_any_request(stub, bad):
    with pytest.raises(EsiNotFound, match="is not a positive integer"):
        esi_client(stub).killmail(bad, HASH)

    assert stub.requests == 0


def test_esi_asks_about_a_well_formed_hash(stub):
    stub.answer(422, {"error": "Invalid killmail_id and/or killmail_hash"})

    with pytest.raises(EsiNotFound) as caught:
        esi_client(stub).killmail(123, HASH)

    assert caught.value.status == 422
    assert stub.requests == 1
