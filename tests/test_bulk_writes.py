"""Bulk writes: killmails and entities stored once each, whoever else writes the same ids.

On PostgreSQL the ids not stored yet are read first, then new killmails go in by COPY and
missing entities by INSERT; these tests make another writer store some of those ids in
between, and the database refuse a value.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import DataError, connection, transaction

from killboard import bulk
from killboard.bulk import insert_killmails, register_entities
from killboard.ingest import prepare_batch
from killboard.models import Character, ItemType, Killmail
from killboard.rows import KILLMAIL_COLUMNS
from tests.factories import KillmailFactory

pytestmark = pytest.mark.django_db

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="reading the ids, then COPY, is PostgreSQL's; SQLite inserts with ON CONFLICT only",
)


def killmail_rows(count: int) -> list[list[Any]]:
    """Rows of `count` new killmails, in ascending id order, as ingest writes them."""
    return prepare_batch(KillmailFactory.build_batch(count)).killmails


def ids(rows: list[list[Any]]) -> set[int]:
    return {row[0] for row in rows}


def stored_killmail_ids() -> list[int]:
    return list(Killmail.objects.order_by("killmail_id").values_list("killmail_id", flat=True))


def test_a_batch_with_stored_killmails_inserts_and_returns_only_the_new_ones():
    old, new = killmail_rows(3), killmail_rows(3)
    assert insert_killmails(old) == ids(old)

    assert insert_killmails(sorted(old[1:] + new)) == ids(new)

    assert stored_killmail_ids() == sorted(ids(old) | ids(new))


@pytest.mark.django_db(transaction=True)
def test_writes_open_the_connection_when_nothing_has_yet():
    rows = killmail_rows(2)
    connection.close()  # as a worker's connection after CONN_MAX_AGE, or a new thread's

    register_entities({Character: [7]})
    connection.close()
    assert insert_killmails(rows) == ids(rows)
    assert stored_killmail_ids() == sorted(ids(rows))
    assert Character.objects.filter(id=7).exists()


def test_a_batch_stored_already_inserts_nothing():
    rows = killmail_rows(3)
    insert_killmails(rows)

    assert insert_killmails(rows) == set()
    assert stored_killmail_ids() == sorted(ids(rows))


@postgresql_only
def test_killmails_stored_by_another_writer_after_the_read_are_skipped_not_stored_twice(
    monkeypatch,
):
    rows = killmail_rows(4)
    other_writer = rows[2]
    read = bulk._unstored

    def read_then_other_writer_stores(ids):
        unstored = read(ids)
        bulk._insert_killmails([other_writer])
        return unstored

    monkeypatch.setattr(bulk, "_unstored", read_then_other_writer_stores)

    assert insert_killmails(rows) == ids(rows) - {other_writer[0]}
    assert stored_killmail_ids() == sorted(ids(rows))


def wait_for_a_lock_wait(timeout: float = 10.0) -> None:
    """Until a session of this database waits for a lock another transaction holds."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.01)
    raise AssertionError("no session waited for the other writer's lock")


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_two_writers_racing_on_the_same_killmails_store_each_once(monkeypatch):
    rows = killmail_rows(4)
    theirs, ours = rows[:3], rows[1:]
    connection.ensure_connection()  # ours is open before theirs begins
    returned: dict[str, set[int]] = {}
    inserted_uncommitted = threading.Event()
    fallbacks = []
    insert = bulk._insert_killmails
    monkeypatch.setattr(
        bulk, "_insert_killmails", lambda rows: fallbacks.append(rows) or insert(rows)
    )

    def other_writer() -> None:
        try:
            with transaction.atomic():
                returned["theirs"] = insert_killmails(theirs)
                inserted_uncommitted.set()
                # Commit only once our COPY waits for these uncommitted ids.
                wait_for_a_lock_wait()
        finally:
            connection.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert inserted_uncommitted.wait(10)
    returned["ours"] = insert_killmails(ours)
    thread.join(10)

    assert returned == {"theirs": ids(theirs), "ours": {rows[3][0]}}
    assert len(fallbacks) == 1, "our COPY met their committed ids and fell back"
    assert stored_killmail_ids() == sorted(ids(rows))


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite stores any of these values as it is given"
)
@pytest.mark.parametrize(
    ("column", "value"),
    [
        # int4: binary COPY would store its low 32 bits, 0, without a word.
        ("points", 2**40),
        ("points", -(2**31) - 1),
        # varchar(40): refused by the COPY itself.
        ("killmail_hash", "f" * 41),
        # int8: refused by psycopg before the server sees it.
        ("solar_system_id", 2**63),
    ],
)
def test_a_value_the_database_refuses_raises_data_error_and_stores_nothing(column, value):
    rows = killmail_rows(3)
    rows[1][KILLMAIL_COLUMNS.index(column)] = value

    with pytest.raises(DataError), transaction.atomic():
        insert_killmails(rows)

    assert stored_killmail_ids() == []
    good = killmail_rows(1)
    assert insert_killmails(good) == ids(good)


def test_stored_and_new_entities_mixed_end_with_each_id_stored_once():
    register_entities({Character: [1, 3], ItemType: [10]})

    register_entities({Character: [1, 2, 3, 4], ItemType: [10, 11]})

    assert list(Character.objects.values_list("id", "name")) == [(1, ""), (2, ""), (3, ""), (4, "")]
    assert list(ItemType.objects.values_list("id", flat=True)) == [10, 11]


@postgresql_only
def test_entities_stored_by_another_writer_after_the_read_are_stored_once(monkeypatch):
    register_entities({Character: [1]})
    read = bulk._unstored

    def read_then_other_writer_stores(ids):
        unstored = read(ids)
        Character.objects.create(id=3)
        return unstored

    monkeypatch.setattr(bulk, "_unstored", read_then_other_writer_stores)

    register_entities({Character: [1, 2, 3, 4]})

    assert list(Character.objects.values_list("id", flat=True)) == [1, 2, 3, 4]
    assert not Character.objects.exclude(name="").exists()
