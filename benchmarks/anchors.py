"""Anchors: what this machine allows, measured in the same run as the figures judged by them.

- The raw COPY limit: the rows ingest would write for a file's killmails, built beforehand
  (not timed), streamed into the same tables and indexes with one binary COPY per table in
  one transaction; no reading, no validation, no conflict handling. Ingest does all of that
  and more, so the share of this rate it reaches is what its own work costs.
- JSON parsing alone: the file's lines decoded by the parser ingest uses, and by the
  standard library's, nothing else.
- The naive ORM baseline lives in `benchmarks.ingest` (it is that module's baseline).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.environment import timer


@dataclass
class Rows:
    """Every row a set of killmails makes: what ingest would write, ready for COPY."""

    killmails: list[list[Any]] = field(default_factory=list)
    participants: list[tuple] = field(default_factory=list)
    items: list[tuple] = field(default_factory=list)
    # Entity model: its distinct ids, sorted.
    entities: dict[Any, list[int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.killmails)


def build_rows(records: Iterable[Any]) -> Rows:
    """The rows ingest builds for `records` (its own builder, batch by batch, in the order
    ingest writes them), all together."""
    from killboard.ingest import STREAM_BATCH, prepare_batch

    rows = Rows()
    entities: dict[Any, set[int]] = defaultdict(set)
    chunk: list[Any] = []

    def add(batch_records: list[Any]) -> None:
        batch = prepare_batch(batch_records)
        rows.killmails += batch.killmails
        rows.participants += batch.participants
        rows.items += batch.items
        for model, ids in batch.entities.items():
            entities[model].update(ids)

    for record in records:
        chunk.append(record)
        if len(chunk) >= STREAM_BATCH:
            add(chunk)
            chunk = []
    add(chunk)
    rows.entities = {model: sorted(ids) for model, ids in entities.items()}
    return rows


def _entity_columns(model: Any) -> tuple[list[str], list[str], list[Any]]:
    """(columns, PostgreSQL types, values) of a new entity row besides its id."""
    from django.utils import timezone

    from killboard.rows import PG_TYPES

    now = timezone.now()
    columns, types, values = [], [], []
    for model_field in model._meta.concrete_fields:
        if model_field.primary_key or model_field.null:
            continue
        columns.append(model_field.column)
        types.append(PG_TYPES[model_field.get_internal_type()])
        auto_now = getattr(model_field, "auto_now_add", False)
        values.append(now if auto_now else model_field.get_default())
    return columns, types, values


def copy_rows(rows: Rows) -> None:
    """Stream `rows` into their tables with binary COPY, one transaction (PostgreSQL only)."""
    from django.db import transaction
    from django.utils import timezone

    from killboard import bulk
    from killboard.models import Item, Killmail, Participant
    from killboard.rows import (
        ITEM_COLUMNS,
        ITEM_TYPES,
        KILLMAIL_COLUMNS,
        KILLMAIL_TYPES,
        PARTICIPANT_COLUMNS,
        PARTICIPANT_TYPES,
    )

    now = timezone.now()
    with transaction.atomic():
        for model, ids in rows.entities.items():
            columns, types, values = _entity_columns(model)
            bulk.copy_rows(
                model,
                ["id", *columns],
                ["int8", *types],
                ((entity_id, *values) for entity_id in ids),
            )
        bulk.copy_rows(
            Killmail,
            [*KILLMAIL_COLUMNS, "created_at"],
            [*KILLMAIL_TYPES, "timestamptz"],
            ((*row, now) for row in rows.killmails),
        )
        bulk.copy_rows(Participant, PARTICIPANT_COLUMNS, PARTICIPANT_TYPES, rows.participants)
        bulk.copy_rows(Item, ITEM_COLUMNS, ITEM_TYPES, rows.items)


def copy_rate(rows: Rows) -> float:
    """Killmails per second of `copy_rows` into empty tables (the caller empties them)."""
    with timer() as took:
        copy_rows(rows)
    return rows.count / took["seconds"]


def parse_rates(path: Path) -> tuple[float, float]:
    """Killmails per second of decoding the file's lines: (ingest's parser, the stdlib's)."""
    from killboard.readers import loads

    rates = []
    for decode in (loads, json.loads):
        with path.open(encoding="utf-8") as lines, timer() as took:
            count = sum(1 for line in lines if decode(line) is not None)
        rates.append(count / took["seconds"])
    return rates[0], rates[1]
