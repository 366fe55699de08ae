"""read_stream: killmail records from an open binary stream, as an HTTP body gives them."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from killboard.readers import UnreadableFile, read_stream
from tests.factories import KillmailFactory

NAME = "https://r2z2.example/history/20250301.json"


class SmallReads(io.RawIOBase):
    """A stream that gives at most `size` bytes a read, as a slow socket does."""

    def __init__(self, data: bytes, size: int) -> None:
        self._data = io.BytesIO(data)
        self._size = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), self._size))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def day_dump(records: list[dict[str, Any]]) -> bytes:
    return json.dumps({str(record["killmail_id"]): record for record in records}).encode()


def named_records() -> list[dict[str, Any]]:
    """Killmails with text of several bytes a character, which small reads cut in two."""
    records = [KillmailFactory() for _ in range(3)]
    records[1]["zkb"]["labels"] = ["ünïcode", "北京", "\U0001f680"]
    return records


def test_a_day_dump_read_in_small_reads_gives_every_killmail(monkeypatch):
    # Small text chunks too, so values and multi-byte characters straddle every edge.
    monkeypatch.setattr("killboard.readers.READ_CHUNK", 7)
    records = named_records()

    assert list(read_stream(SmallReads(day_dump(records), 3), NAME)) == records


@pytest.mark.parametrize("shape", ["array", "json_lines"])
def test_arrays_and_json_lines_read_as_from_a_file(shape):
    records = named_records()
    if shape == "array":
        data = json.dumps(records).encode()
    else:
        data = "".join(json.dumps(record) + "\n" for record in records).encode()

    assert list(read_stream(SmallReads(data, 5), NAME)) == records


def test_hash_only_day_dump_entries_become_bodiless_records():
    data = json.dumps({"130678514": "145c457c34ce9c9e8d67e942e764d8f439b22271"}).encode()

    assert list(read_stream(io.BytesIO(data), NAME)) == [
        {"killmail_id": 130678514, "zkb": {"hash": "145c457c34ce9c9e8d67e942e764d8f439b22271"}}
    ]


def test_a_truncated_stream_is_unreadable_and_names_the_stream_after_the_whole_killmails():
    records = named_records()
    data = day_dump(records)
    cut = data[: data.index(str(records[2]["killmail_id"]).encode()) + 40]
    read: list[Any] = []

    with pytest.raises(UnreadableFile, match=f"^{re.escape(NAME)}: invalid or truncated JSON"):
        read.extend(read_stream(SmallReads(cut, 3), NAME))
    assert read == records[:2]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b'{"1": {"killmail_id": 1, "x": "\xff"}}', "cannot be read"),
        (b"nope", "expected a JSON object or array"),
    ],
)
def test_an_unreadable_stream_is_one_error_naming_it(data, message):
    with pytest.raises(UnreadableFile, match=f"^{re.escape(NAME)}: {message}"):
        list(read_stream(io.BytesIO(data), NAME))


def test_the_stream_stays_open_for_its_owner():
    stream = io.BytesIO(day_dump(named_records()))

    records = read_stream(stream, NAME)
    list(records)
    del records

    assert not stream.closed
