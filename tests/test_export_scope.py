"""export_killmails by scope (character, corporation, alliance) and by UTC days."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from killboard.export import iter_records
from killboard.ingest import ingest_killmails
from killboard.models import Killmail
from tests.factories import AttackerFactory, KillmailFactory

pytestmark = pytest.mark.django_db

SCOPES = ("character", "corporation", "alliance")
ENTITY = 99_000_777
HUGE = "99999999999999999999"
_ids = itertools.count(1_000_000_000)


def killmail(killmail_time: str = "2025-03-01T12:00:00Z") -> dict[str, Any]:
    """A killmail with a victim and two attackers, each of a corporation and alliance of its own."""
    record = KillmailFactory(
        killmail_time=killmail_time, attackers=[AttackerFactory(), AttackerFactory()]
    )
    for participant in (record["victim"], *record["attackers"]):
        participant["corporation_id"] = next(_ids)
        participant["alliance_id"] = next(_ids)
    return record


def store(*records: dict[str, Any]) -> None:
    result = ingest_killmails(list(records))
    assert len(result.new_ids) == len(records)


def export(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    """The records an export with these arguments writes."""
    output = tmp_path / "out.jsonl"
    call_command("export_killmails", *args, "--output", str(output), stdout=io.StringIO())
    return [json.loads(line) for line in output.read_text().splitlines()]


def by_id(*records: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda record: record["killmail_id"])


@pytest.mark.parametrize("scope", SCOPES)
def test_a_scope_exports_exactly_the_killmails_its_entity_is_on_either_side(tmp_path, scope):
    column = f"{scope}_id"
    other_column = f"{SCOPES[(SCOPES.index(scope) + 1) % 3]}_id"
    as_victim, as_attacker, on_both_sides, elsewhere, other_column_only = (
        killmail() for _ in range(5)
    )
    as_victim["victim"][column] = ENTITY
    as_attacker["attackers"][1][column] = ENTITY
    on_both_sides["victim"][column] = ENTITY
    on_both_sides["attackers"][0][column] = ENTITY
    other_column_only["attackers"][0][other_column] = ENTITY
    store(as_victim, as_attacker, on_both_sides, elsewhere, other_column_only)

    assert export(tmp_path, f"--{scope}", str(ENTITY)) == by_id(
        as_victim, as_attacker, on_both_sides
    )


def test_date_bounds_take_both_utc_days_whole(tmp_path):
    day_before = killmail("2025-02-28T23:59:59Z")
    first = killmail("2025-03-01T00:00:00Z")
    last = killmail("2025-03-02T23:59:59Z")
    day_after = killmail("2025-03-03T00:00:00Z")
    store(day_before, first, last, day_after)

    assert export(tmp_path, "--from-date", "2025-03-01", "--to-date", "2025-03-02") == by_id(
        first, last
    )
    assert export(tmp_path, "--from-date", "2025-03-02", "--to-date", "2025-03-02") == [last]
    assert export(tmp_path, "--from-date", "2025-03-01") == by_id(first, last, day_after)
    assert export(tmp_path, "--to-date", "2025-03-02") == by_id(day_before, first, last)


def test_scope_and_dates_combine(tmp_path):
    mine_in, mine_before, mine_after, other_in = (
        killmail(time)
        for time in (
            "2025-03-01T08:00:00Z",
            "2025-02-01T08:00:00Z",
            "2025-04-01T08:00:00Z",
            "2025-03-01T09:00:00Z",
        )
    )
    for record in (mine_in, mine_before, mine_after):
        record["attackers"][0]["alliance_id"] = ENTITY
    store(mine_in, mine_before, mine_after, other_in)

    exported = export(
        tmp_path, "--alliance", str(ENTITY), "--from-date", "2025-03-01", "--to-date", "2025-03-31"
    )

    assert exported == [mine_in]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--character", "1", "--corporation", "2"], "not allowed with argument --character"),
        (["--corporation", "1", "--alliance", "2"], "not allowed with argument --corporation"),
        (["--character", "abc"], "--character must be a positive whole number, got 'abc'"),
        (["--corporation", "0"], "--corporation must be a positive whole number, got '0'"),
        (["--alliance", "-5"], "--alliance must be a positive whole number, got '-5'"),
        (["--alliance", HUGE], f"--alliance must be a positive whole number, got '{HUGE}'"),
        (
            ["--from-date", "2025-02-30"],
            "--from-date must be a real date like 2023-01-01, got '2025-02-30'",
        ),
        (
            ["--to-date", "01/03/2025"],
            "--to-date must be a real date like 2023-01-01, got '01/03/2025'",
        ),
        (
            ["--from-date", "2025-03-02", "--to-date", "2025-03-01"],
            "--from-date 2025-03-02 is after --to-date 2025-03-01",
        ),
        (
            ["--rejected", "--corporation", "5"],
            "--corporation cannot be used with --rejected (use --job)",
        ),
        (["--rejected", "--to-date", "2025-03-01"], "--to-date cannot be used with --rejected"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, args, message):
    store(killmail())
    output = tmp_path / "out.jsonl"
    out = io.StringIO()

    with pytest.raises(CommandError) as error:
        call_command("export_killmails", *args, "--output", str(output), stdout=out)

    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not output.exists()
    assert out.getvalue() == ""


def test_an_import_of_a_scoped_export_exports_the_same_lines(tmp_path, sample_bodies):
    records = [*sample_bodies, *(killmail() for _ in range(3))]
    for record in records[::2]:
        record["victim"]["corporation_id"] = ENTITY
    store(*records)
    first = tmp_path / "first.jsonl"
    call_command(
        "export_killmails",
        "--corporation",
        str(ENTITY),
        "--output",
        str(first),
        stdout=io.StringIO(),
    )
    Killmail.objects.all().delete()

    call_command("import_killmails", str(first), stdout=io.StringIO(), stderr=io.StringIO())
    second = tmp_path / "second.jsonl"
    call_command("export_killmails", "--output", str(second), stdout=io.StringIO())

    assert len(first.read_text().splitlines()) == len(records[::2])
    assert second.read_bytes() == first.read_bytes()


def test_an_export_reads_the_ids_once_then_three_queries_a_chunk(monkeypatch):
    monkeypatch.setattr("killboard.export.EXPORT_CHUNK", 2)
    records = [killmail() for _ in range(5)]
    for record in records:
        record["victim"]["character_id"] = ENTITY
    store(*records)

    with CaptureQueriesContext(connection) as queries:
        exported = iter_records(Killmail.objects.involving_character(ENTITY))
        first = next(exported)
        after_first_chunk = len(queries)
        rest = list(exported)

    assert [first, *rest] == by_id(*records)
    # The scope's query runs once, not once a chunk: each chunk costs the same.
    assert sum("EXISTS" in query["sql"] for query in queries) == 1
    assert after_first_chunk == 1 + 3
    assert len(queries) == 1 + 3 * 3
