"""Without msgspec, reading and ingest give exactly what they give with it.

msgspec is the fast path (JSON decoding, and the one-pass check of a plain record);
the standard library and `killboard.shapes` are the fallback when it is not installed. The
files are read in a subprocess where `import msgspec` fails, and the rows are built with
the Structs switched off, and both are compared with the fast path's, types included.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from killboard import readers, rows
from killboard.ingest import prepare_batch
from tests.strategies import killmails

ROOT = Path(__file__).resolve().parent.parent
# JSON texts where decoders differ if any do: integers past 64 bits, floats at their edges,
# values msgspec refuses and json accepts (NaN, an overflow, lone surrogates), unicode.
TEXTS = [
    '{"killmail_id":1,"big":123456789012345678901234567890,"neg":-18446744073709551617}',
    '{"u64":18446744073709551615,"i64":-9223372036854775808,"over":9223372036854775808}',
    '{"f":[0.1,1e-300,5e-324,1.7976931348623157e308,-0.0,2.5E+3,9007199254740993.0]}',
    '{"ints_as_floats":[1.0,1e2,-0e0],"exact":9007199254740993}',
    '{"overflow":1e400,"nan":NaN,"inf":-Infinity}',
    '{"text":"caf\\u00e9 \\ud83d\\ude00 \u00e9\u4e2d\u6587","lone":"\\ud800x","nul":"\\u0000"}',
    '{"nested":{"a":[{"b":[[],{}]}]},"dup":1,"dup":2}',
]
# Read back in a process where msgspec cannot be imported; prints each record's repr.
WITHOUT_MSGSPEC = """
import sys
sys.modules["msgspec"] = None  # `import msgspec` raises ImportError
from pathlib import Path
from killboard import readers
assert readers.msgspec is None
for path in sys.argv[1:]:
    print(repr(list(readers.read_records(Path(path)))))
"""


def _files(tmp_path: Path) -> list[Path]:
    """The texts as JSON Lines, as a one-line day dump, as an array and as a gzip."""
    lines = tmp_path / "records.jsonl"
    lines.write_text("\n".join(TEXTS) + "\n")
    dump = tmp_path / "day.json"
    dump.write_text("{" + ",".join(f'"{i + 1}":{text}' for i, text in enumerate(TEXTS)) + "}")
    array = tmp_path / "array.json"
    array.write_text("[\n" + ",\n".join(TEXTS) + "\n]")
    return [lines, dump, array]


def _same(left: Any, right: Any) -> bool:
    """Equal values of equal types (NaN equal to NaN, -0.0 apart from 0.0)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same, left, right))
    if isinstance(left, float):
        return repr(left) == repr(right) or (math.isnan(left) and math.isnan(right))
    return left == right


def test_msgspec_is_the_fast_path_here() -> None:
    assert readers.msgspec is not None, "requirements.txt installs msgspec"
    assert rows.fit({"not": "a killmail"}) is None


@pytest.mark.parametrize("text", TEXTS)
def test_loads_gives_what_the_standard_library_gives(text: str) -> None:
    assert _same(readers.loads(text), json.loads(text))


@pytest.mark.parametrize("text", ["[1,]", '{"a":1} x', "01", '"\\x"', "1" * 5000, "[" * 5000])
def test_loads_refuses_what_the_standard_library_refuses(text: str) -> None:
    with pytest.raises((ValueError, RecursionError)) as standard:
        json.loads(text)
    with pytest.raises(standard.type):
        readers.loads(text)


def test_files_read_without_msgspec_are_the_same(tmp_path: Path) -> None:
    paths = _files(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_MSGSPEC, *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = [json.loads(text) for text in TEXTS]
    for path, printed in zip(paths, done.stdout.splitlines(), strict=True):
        fast = list(readers.read_records(path))
        assert _same(fast, expected), path.name
        # repr tells 1 from 1.0, -0.0 from 0.0 and keeps lone surrogates and NaN.
        assert repr(fast) == printed, path.name


def _prepared(records: list[Any]) -> tuple[str, str, str, Any, list[Any]]:
    batch = prepare_batch(records)
    return (
        repr(batch.killmails),
        repr(batch.participants),
        repr(batch.items),
        batch.entities,
        [(r.killmail_id, r.reason) for r in batch.result.rejected],
    )


def _without_structs(monkeypatch: pytest.MonkeyPatch, records: list[Any]) -> Any:
    with monkeypatch.context() as patched:
        patched.setattr(rows, "_RECORD_FIT", None)
        return _prepared(records)


def test_real_killmails_take_the_fast_path_and_make_the_same_rows(
    sample_bodies: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert all(rows.fit(body) is not None for body in sample_bodies)
    assert _prepared(sample_bodies) == _without_structs(monkeypatch, sample_bodies)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(killmails, min_size=1, max_size=4))
def test_any_killmail_makes_the_same_rows_without_structs(records: list[dict[str, Any]]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert _prepared(records) == _without_structs(monkeypatch, records)
