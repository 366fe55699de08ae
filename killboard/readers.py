"""Read killmail records from files, streaming, whatever their container.

Supported: JSON Lines, JSON arrays, zKillboard day dumps (`{"<killmail_id>": body}`, or
`{"<killmail_id>": "<hash>"}`, whose records carry no body and are rejected as such), single
killmail objects, any of these compressed with gzip or bzip2, and tar archives (`.tar`,
`.tar.gz`, `.tgz`, `.tar.bz2`) holding JSON files; `read_stream` reads the same uncompressed
shapes from a stream already open (an HTTP body). Memory is bounded by the largest single
killmail, not by the file: a single JSON value (or a tar member) over `MAX_VALUE_CHARS` is
an `UnreadableFile` naming where it is, rather than a buffer that grows without end.

JSON is decoded by msgspec when it is installed (about twice as fast), else by the standard
library, with the same values and the same errors either way: msgspec accepts a subset of
what `json` accepts (not NaN, an overflowing float or a lone surrogate) and decodes it to
identical values, integers of any size included, so whatever it refuses is decoded again by
`json`, whose answer (a value or an error) stands.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

# Characters read from a text stream at a time.
READ_CHUNK = 1 << 20
# The largest single JSON value read, in characters (a tar member: in bytes). Real killmails
# are at most a few MB; anything bigger is a broken file, not one to hold in memory.
MAX_VALUE_CHARS = 64 << 20
# Characters at a buffer's end where a decode error may be a token cut short ("\u00e9", "false").
_CUT_TOKEN_CHARS = 16
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2")

_decoder = json.JSONDecoder()

try:
    import msgspec
except ImportError:  # the standard library decodes the same JSON, slower
    msgspec = None  # type: ignore[assignment]

if msgspec is not None:
    _fast_decode: Callable[[str], Any] | None = msgspec.json.Decoder().decode
    # What msgspec refuses and `json` may accept (NaN, 1e400, "\ud800"), or a guessed end
    # that was wrong; `json` then decides.
    _FAST_REFUSALS: tuple[type[Exception], ...] = (msgspec.DecodeError, RecursionError, ValueError)
else:
    _fast_decode = None
    _FAST_REFUSALS = ()

# Where a value of a day dump is likely to end: before the next `,"<killmail_id>":`.
_NEXT_DUMP_KEY = re.compile(r'\}\s*,\s*"\d+"\s*:')


def loads(text: str) -> Any:
    """Decode one JSON text exactly as `json.loads` does: the same value, or the same error."""
    if _fast_decode is not None:
        try:
            return _fast_decode(text)
        except _FAST_REFUSALS:
            pass
    return json.loads(text)


class UnreadableFile(ValueError):
    """A file that is not (or no longer) valid JSON or a readable archive."""


class _CountingReader(io.RawIOBase):
    """A binary reader that reports the bytes it has read, for a progress bar."""

    def __init__(self, raw: IO[bytes], progress: Callable[[int], None] | None) -> None:
        self._raw = raw
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer)
        if self._progress and count:
            self._progress(count)
        return count


class _JsonStream:
    """Top-level JSON values of a text stream, decoded one at a time."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self._stream = stream
        self._name = name
        self._buffer = ""
        self._pos = 0
        self._offset = 0  # characters dropped from the front of the buffer
        self._mark: int | None = None  # a position to come back to, kept on refills
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._stream.read(READ_CHUNK)
        if not chunk:
            self._eof = True
            return False
        cut = self._pos if self._mark is None else self._mark
        self._offset += cut
        self._buffer = self._buffer[cut:] + chunk
        self._pos -= cut
        if self._mark is not None:
            self._mark -= cut
        return True

    def _error(self, message: str) -> UnreadableFile:
        return UnreadableFile(f"{self._name}: {message} at character {self._offset + self._pos}")

    def peek(self) -> str | None:
        """The next non-blank character, not consumed; None at the end."""
        while True:
            while self._pos < len(self._buffer) and self._buffer[self._pos] in " \t\r\n":
                self._pos += 1
            if self._pos < len(self._buffer):
                return self._buffer[self._pos]
            if not self._fill():
                return None

    def take(self, expected: str) -> None:
        if self.peek() != expected:
            raise self._error(f"expected {expected!r}")
        self._pos += 1

    def value(self, ends: str = "") -> Any:
        """Decode the next JSON value, reading more of the stream as needed.

        `ends` guesses where the value ends, so the fast parser can take it whole: "line"
        (a JSON Lines record) or "dump" (a day dump's body).
        """
        self.peek()
        if ends and _fast_decode is not None:
            found = self._fast_value(ends)
            if found is not None:
                return found[0]
        while True:
            try:
                value, end = _decoder.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as exc:
                # Numbers can end at the buffer's edge too: decode only once nothing follows.
                if self._fill_value(exc):
                    continue
                raise self._error(f"invalid or truncated JSON ({exc.msg})") from None
            except RecursionError:
                raise self._error("JSON nested too deep") from None
            except ValueError:
                # int() refuses numbers of more than sys.get_int_max_str_digits() digits.
                raise self._error("a number too long to be an id or a count") from None
            if end == len(self._buffer) and self._fill_value():
                continue
            if end - self._pos > MAX_VALUE_CHARS:
                raise self._error(f"a single JSON value larger than {_size(MAX_VALUE_CHARS)}")
            self._pos = end
            return value

    def _fast_value(self, ends: str) -> tuple[Any] | None:
        """(the next value,) decoded by the fast parser up to a guessed end; None if it could
        not be (no end in the buffer yet, a wrong guess, JSON it refuses).

        A guess is safe: objects and arrays end where they end, so a slice that decodes as
        one whole value (whitespace after it allowed) is that value, and only whitespace or
        the separator cut off with the guess lay between its end and the slice's.
        """
        buffer, start = self._buffer, self._pos
        if ends == "line":
            end = buffer.find("\n", start)
            if end == -1:
                return None
        else:
            # A body, not a hash: a dump of hashes holds no "}" to search for up to its end.
            if buffer[start] != "{":
                return None
            match = _NEXT_DUMP_KEY.search(buffer, start)
            if match is None:
                return None
            end = match.start() + 1
        if end - start > MAX_VALUE_CHARS:
            return None
        try:
            value = _fast_decode(buffer[start:end])  # type: ignore[misc]
        except _FAST_REFUSALS:
            return None
        self._pos = end
        return (value,)

    def _fill_value(self, error: json.JSONDecodeError | None = None) -> bool:
        """Read more of the pending value, unless it is already over `MAX_VALUE_CHARS`."""
        if len(self._buffer) - self._pos <= MAX_VALUE_CHARS:
            return self._fill()
        # JSON is decided by its prefix: an error well before the buffer's end is broken JSON
        # (say, a cut line in JSON Lines), not a value cut short by the buffer's edge.
        if (
            error is not None
            and error.pos < len(self._buffer) - _CUT_TOKEN_CHARS
            and not error.msg.startswith("Unterminated string")
        ):
            raise self._error(f"invalid or truncated JSON ({error.msg})")
        raise self._error(f"a single JSON value larger than {_size(MAX_VALUE_CHARS)}")

    def records(self) -> Iterator[Any]:
        """Yield killmail records from arrays, day dumps, objects and JSON Lines."""
        if self.peek() is None:
            # Most often a download that failed half-way; say so rather than import nothing.
            raise UnreadableFile(f"{self._name}: the file is empty")
        while (char := self.peek()) is not None:
            if char == "[":
                yield from self._array()
            elif char == "{":
                yield from self._object()
            else:
                raise self._error("expected a JSON object or array")

    def _array(self) -> Iterator[Any]:
        self.take("[")
        if self.peek() == "]":
            self._pos += 1
            return
        while True:
            yield self.value()
            if self.peek() == "]":
                self._pos += 1
                return
            self.take(",")

    def _rewind(self) -> None:
        assert self._mark is not None
        self._pos, self._mark = self._mark, None

    def _object(self) -> Iterator[Any]:
        self.peek()
        self._mark = self._pos
        self.take("{")
        if self.peek() != '"':
            self._rewind()
            yield self.value("line")
            return
        key = self.value()
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            self._rewind()
            yield self.value("line")
            return
        self._mark = None
        # A day dump: {"<killmail_id>": body or hash, ...}
        while True:
            self.take(":")
            yield _day_dump_record(int(key), self.value("dump"))
            if self.peek() == "}":
                self._pos += 1
                return
            self.take(",")
            key = self.value()
            if not (isinstance(key, str) and key.isascii() and key.isdigit()):
                raise self._error(f"expected a killmail id as key, got {key!r:.40}")


def _size(chars: int) -> str:
    """A limit for a message: "64 MiB" when a whole number of MiB, else the exact count."""
    return f"{chars >> 20} MiB" if chars and not chars % (1 << 20) else f"{chars:,} characters"


def _day_dump_record(killmail_id: int, value: Any) -> Any:
    if isinstance(value, str):
        return {"killmail_id": killmail_id, "zkb": {"hash": value}}
    return value


def _decompressed(path: Path, raw: IO[bytes]) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if name.endswith(".bz2"):
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    return raw


def _archive_records(path: Path, raw: IO[bytes]) -> Iterator[Any]:
    try:
        with tarfile.open(fileobj=raw, mode="r|*") as archive:
            for member in archive:
                if not member.isfile() or not member.name.endswith(".json"):
                    continue
                if member.size > MAX_VALUE_CHARS:
                    raise UnreadableFile(
                        f"{path}:{member.name}: a tar member of {member.size:,} bytes, "
                        f"larger than {_size(MAX_VALUE_CHARS)}"
                    )
                handle = archive.extractfile(member)
                assert handle is not None
                # One killmail a member: small enough to read whole.
                text = io.StringIO(handle.read().decode("utf-8"))
                yield from _JsonStream(text, f"{path}:{member.name}").records()
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise UnreadableFile(f"{path}: broken or truncated archive ({exc})") from None


def read_stream(raw: IO[bytes], name: str) -> Iterator[Any]:
    """Yield the killmail records of an open binary stream of UTF-8 JSON, not compressed.

    The shapes of a plain file (arrays, JSON Lines, day dumps, single objects), read as the
    stream gives them (an HTTP body, a decompressor); errors are `UnreadableFile` naming
    `name`. The stream stays open: it is the caller's.
    """
    text = io.TextIOWrapper(raw, encoding="utf-8")
    try:
        yield from _JsonStream(text, name).records()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UnreadableFile(f"{name}: cannot be read ({exc})") from None
    finally:
        # A wrapper closes its stream when collected; hand it back to the caller instead.
        with contextlib.suppress(ValueError):
            text.detach()


def read_records(path: Path, progress: Callable[[int], None] | None = None) -> Iterator[Any]:
    """Yield the killmail records of one file; `progress` gets the bytes read as they go."""
    with path.open("rb") as handle:
        raw = io.BufferedReader(_CountingReader(handle, progress))
        if path.name.lower().endswith(ARCHIVE_SUFFIXES):
            yield from _archive_records(path, raw)
        else:
            with _decompressed(path, raw) as binary:
                yield from read_stream(binary, str(path))
