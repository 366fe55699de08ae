"""The import_killmails and export_killmails commands, on every supported file shape."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from fakeupstream.world import SAMPLES_DIR
from killboard.models import Item, Killmail, Participant
from killboard.readers import read_records
from tests.conftest import load
from tests.factories import KillmailFactory

pytestmark = pytest.mark.django_db


def run(command: str, *args: str) -> str:
    """Run a command; an import's rejections (summary printed, then non-zero) are output."""
    out = io.StringIO()
    try:
        call_command(command, *args, stdout=out, stderr=io.StringIO())
    except CommandError:
        if "Imported" not in out.getvalue():
            raise
    return out.getvalue()


def counts() -> tuple[int, int, int]:
    return Killmail.objects.count(), Participant.objects.count(), Item.objects.count()


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_tar(path: Path, records: list[Any], mode: str) -> Path:
    with tarfile.open(path, mode) as archive:
        for record in records:
            data = json.dumps(record).encode()
            info = tarfile.TarInfo(f"killmails/{record['killmail_id']}.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_import_then_export_gives_back_the_input_exactly(tmp_path, sample_bodies):
    package = load("zkb_redisq_package_119455394.json")["package"]
    records = [*sample_bodies[:2], {**package["killmail"], "zkb": package["zkb"]}]
    source = write_jsonl(tmp_path / "in.jsonl", records)

    assert "3 new, 0 already stored, 0 rejected" in run("import_killmails", str(source))
    run("export_killmails", "--output", str(tmp_path / "out.jsonl"))

    exported = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert exported == sorted(records, key=lambda record: record["killmail_id"])


def test_importing_the_same_file_twice_leaves_every_count_unchanged(tmp_path, sample_bodies):
    source = write_jsonl(tmp_path / "in.jsonl", sample_bodies)
    run("import_killmails", str(source))
    before = counts()

    summary = run("import_killmails", str(source))

    assert "0 new, 3 already stored" in summary
    assert counts() == before


@pytest.mark.parametrize(
    "shape", ["array", "day_dump", "gzip_jsonl", "bzip2_array", "tar.gz", "tar.bz2"]
)
def test_every_file_shape_imports(tmp_path, shape):
    records = [KillmailFactory() for _ in range(3)]
    if shape == "array":
        path = tmp_path / "in.json"
        path.write_text(json.dumps(records, indent=2))
    elif shape == "day_dump":
        path = tmp_path / "20250301.json"
        path.write_text(json.dumps({str(record["killmail_id"]): record for record in records}))
    elif shape == "gzip_jsonl":
        path = tmp_path / "in.jsonl.gz"
        path.write_bytes(gzip.compress("\n".join(map(json.dumps, records)).encode()))
    elif shape == "bzip2_array":
        path = tmp_path / "in.json.bz2"
        path.write_bytes(bz2.compress(json.dumps(records).encode()))
    else:
        path = write_tar(tmp_path / f"in.{shape}", records, "w:" + shape.split(".")[1])

    assert "3 new" in run("import_killmails", str(path))
    assert Killmail.objects.count() == 3


def test_json_lines_read_whatever_each_line_holds(tmp_path):
    # NaN, an integer beyond 64 bits, a day dump, an object spread over lines, and a last
    # line without a newline, between plain lines.
    first, second, third = (KillmailFactory() for _ in range(3))
    lines = [
        json.dumps(first),
        json.dumps({**second, "war_id": float("nan")}),
        json.dumps({**third, "moon_id": 2**70}),
        json.dumps({"130678514": "145c457c34ce9c9e8d67e942e764d8f439b22271"}),
        json.dumps(first, indent=2),
        json.dumps(second),
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines))
    expected = [
        first,
        {**second, "war_id": float("nan")},
        {**third, "moon_id": 2**70},
        {"killmail_id": 130678514, "zkb": {"hash": "145c457c34ce9c9e8d67e942e764d8f439b22271"}},
        first,
        second,
    ]

    # Through json.dumps: NaN is not equal to itself, but it is written the same.
    assert list(map(json.dumps, read_records(path))) == list(map(json.dumps, expected))


def test_hash_only_day_dump_entries_are_rejected_as_bodiless(tmp_path):
    path = tmp_path / "20250301.json"
    path.write_text(json.dumps({"130678514": "145c457c34ce9c9e8d67e942e764d8f439b22271"}))

    assert "0 new, 0 already stored, 1 rejected" in run("import_killmails", str(path))


def test_single_killmail_files_import(tmp_path):
    path = tmp_path / "one.json"
    path.write_text((SAMPLES_DIR / "esi_killmail_119455394.json").read_text())

    assert "1 new" in run("import_killmails", str(path))


def test_truncated_archive_is_one_clear_error(tmp_path):
    path = write_tar(tmp_path / "in.tar.gz", [KillmailFactory() for _ in range(50)], "w:gz")
    path.write_bytes(path.read_bytes()[:-200])

    with pytest.raises(CommandError, match="broken or truncated archive"):
        run("import_killmails", str(path))


def test_truncated_json_is_one_clear_error_and_keeps_whole_killmails_before_it(tmp_path):
    records = [KillmailFactory() for _ in range(2)]
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(records[0]) + "\n" + json.dumps(records[1])[:-30])

    with pytest.raises(CommandError, match="invalid or truncated JSON"):
        run("import_killmails", str(path))
    assert Participant.objects.filter(killmail_id=records[1]["killmail_id"]).count() == 0


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        run("import_killmails", str(tmp_path / "nope.jsonl"))


def test_export_of_one_character_has_only_their_killmails(tmp_path):
    mine, other = KillmailFactory(), KillmailFactory()
    run("import_killmails", str(write_jsonl(tmp_path / "in.jsonl", [mine, other])))
    character = str(mine["attackers"][0]["character_id"])

    run("export_killmails", "--character", character, "--output", str(tmp_path / "out.jsonl"))

    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [
        mine
    ]
