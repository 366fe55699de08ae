"""Bulk writes of prepared rows: entities, killmails (insert-if-new) and their child rows.

Every statement writes ids in ascending order, so two batches that share killmails or
entities wait for each other instead of deadlocking. On PostgreSQL arrays and rows go in
binary (unnest arrays, COPY); elsewhere plain multi-row INSERTs.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import connection
from django.db.models import Model
from django.utils import timezone

from killboard.models import Killmail
from killboard.rows import KILLMAIL_COLUMNS, KILLMAIL_TYPES

# Rows per INSERT statement: well under SQLite's 32766 bound variables at 26 columns a row.
INSERT_CHUNK = 1000


def register_entities(entities: dict[type[Model], list[int]]) -> None:
    """Create a nameless row for every entity not stored yet, for enrichment."""
    for model, ids in entities.items():
        if connection.vendor == "postgresql":
            _insert_entity_ids(model, ids)
        else:
            model.objects.bulk_create(
                [model(id=entity_id) for entity_id in ids],
                ignore_conflicts=True,
                batch_size=INSERT_CHUNK,
            )


def _execute_binary(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """PostgreSQL: run one statement with its `%b` parameters bound by the server in binary.

    Django's cursors interpolate parameters into the statement's text; an array of a
    thousand ids is dumped as text several times slower than in binary. Never prepared, as
    Django's own statements are not, so a transaction-pooling proxy in front stays safe.
    """
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=False)
        return cursor.fetchall() if cursor.description else []


def _insert_entity_ids(model: type[Model], ids: list[int]) -> None:
    """PostgreSQL: insert the ids not stored yet, the other columns at their defaults."""
    now = timezone.now()
    columns, values = [], []
    for model_field in model._meta.concrete_fields:
        if model_field.primary_key or model_field.null:
            continue
        columns.append(model_field.column)
        auto_now = getattr(model_field, "auto_now_add", False)
        values.append(now if auto_now else model_field.get_default())
    table = connection.ops.quote_name(model._meta.db_table)
    # One array parameter instead of a VALUES row per id: a short statement.
    _execute_binary(
        f"INSERT INTO {table} (id, {', '.join(columns)}) "
        f"SELECT id, {', '.join(['%s'] * len(values))} FROM unnest(%b::bigint[]) AS id "
        "ORDER BY id ON CONFLICT (id) DO NOTHING",
        [*values, ids],
    )


def insert_killmails(rows: list[list[Any]]) -> set[int]:
    """Insert killmail rows that are not stored yet; return the ids this call inserted."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    table = connection.ops.quote_name(Killmail._meta.db_table)
    columns = ", ".join((*KILLMAIL_COLUMNS, "created_at"))
    if connection.vendor == "postgresql":
        # One array per column, zipped back into rows by unnest(): a short statement with
        # 22 parameters instead of 22 per row.
        arrays = [list(column) for column in zip(*rows, strict=True)]
        unnest = ", ".join(f"%b::{sql_type}[]" for sql_type in KILLMAIL_TYPES)
        returned = _execute_binary(
            f"INSERT INTO {table} ({columns}) SELECT *, %s FROM unnest({unnest}) "
            "ON CONFLICT (killmail_id) DO NOTHING RETURNING killmail_id",
            [now, *arrays],
        )
        return {killmail_id for (killmail_id,) in returned}
    inserted: set[int] = set()
    row_sql = f"({', '.join(['%s'] * (len(KILLMAIL_COLUMNS) + 1))})"
    with connection.cursor() as cursor:
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start : start + INSERT_CHUNK]
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([row_sql] * len(chunk))} "
                "ON CONFLICT (killmail_id) DO NOTHING RETURNING killmail_id",
                [value for row in chunk for value in (*row, now)],
            )
            inserted.update(killmail_id for (killmail_id,) in cursor.fetchall())
    return inserted


def write_rows(
    model: type[Model], columns: tuple[str, ...], types: tuple[str, ...], rows: list[tuple]
) -> None:
    """Append rows that cannot conflict: COPY on PostgreSQL, executemany elsewhere."""
    if not rows:
        return
    table = connection.ops.quote_name(model._meta.db_table)
    column_list = ", ".join(columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Binary: no number is formatted as text here and parsed again by the server.
            sql = f"COPY {table} ({column_list}) FROM STDIN (FORMAT BINARY)"
            # COPY goes through psycopg's own cursor: wrap its errors into Django's, as for
            # every other query, so a lost connection is an OperationalError callers handle.
            with connection.wrap_database_errors, cursor.cursor.copy(sql) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)
        else:
            placeholders = ", ".join(["%s"] * len(columns))
            cursor.executemany(f"INSERT INTO {table} ({column_list}) VALUES ({placeholders})", rows)
