"""The rows of the normalized tables for one validated killmail, as `killboard.shapes` says.

Column lists and their PostgreSQL types are read from the models; which JSON key fills which
column is read from the shapes, so a new typed field is the model, its migration and one line
in its shape. Building rows is Python work with no database in it: `killboard.ingest` does it
in its reader thread while the server writes the batch before.

A plain record (almost every killmail) is checked and turned into column values in one pass
by msgspec when it is installed (`fit`, `fitted_rows`), with Structs derived from the same
shapes; the rows are the same either way.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from operator import itemgetter
from typing import Any

from django.db import connection
from django.db.models import AutoField, Model

from killboard.models import Item, Killmail, Participant
from killboard.shapes import (
    ATTACKER,
    CONTENT,
    FLOAT,
    ITEM,
    KILLMAIL,
    POSITION,
    VICTIM,
    ZKB,
    InvalidKillmail,
    Shape,
    msgspec,
    nonempty_list,
)

astuple = None if msgspec is None else msgspec.structs.astuple

# PostgreSQL types of the columns written in binary (COPY, unnest arrays), by field type.
PG_TYPES = {
    "BigIntegerField": "int8",
    "IntegerField": "int4",
    "PositiveIntegerField": "int4",
    "FloatField": "float8",
    "BooleanField": "bool",
    "DateTimeField": "timestamptz",
    "CharField": "text",
    "TextField": "text",
    "JSONField": "jsonb",
}


def _columns(model: type[Model], first: tuple[str, ...], last: tuple[str, ...]) -> tuple[str, ...]:
    """A table's written columns: `first`, the model's other columns in order, then `last`."""
    rest = [
        f.column
        for f in model._meta.concrete_fields
        if not isinstance(f, AutoField) and f.column not in first + last
    ]
    return (*first, *rest, *last)


def _pg_types(model: type[Model], columns: tuple[str, ...]) -> tuple[str, ...]:
    fields = {f.column: f for f in model._meta.concrete_fields}
    types = []
    for column in columns:
        model_field = fields[column]
        if model_field.is_relation:
            model_field = model_field.target_field
        types.append(PG_TYPES[model_field.get_internal_type()])
    return tuple(types)


# The killmail row: created_at is set by the insert itself.
KILLMAIL_COLUMNS = _columns(Killmail, (), ("created_at",))[:-1]


KILLMAIL_TYPES = _pg_types(Killmail, KILLMAIL_COLUMNS)


# Participant and item rows: the columns the record does not give come first.
PARTICIPANT_COLUMNS = _columns(
    Participant, ("killmail_id", "killmail_time", "is_victim", "ordinal"), ("extra",)
)


PARTICIPANT_TYPES = _pg_types(Participant, PARTICIPANT_COLUMNS)


ITEM_COLUMNS = _columns(Item, ("killmail_id", "ordinal", "container_ordinal"), ("extra",))


ITEM_TYPES = _pg_types(Item, ITEM_COLUMNS)


ZKB_COLUMNS = tuple(key.column for key in ZKB.keys.values())


class _Layout:
    """Where a shape's keys go among a table's data columns (those between first and last)."""

    def __init__(self, shape: Shape, columns: tuple[str, ...]) -> None:
        by_column = {key.column: name for name, key in shape.keys.items()}
        # None for a column this shape does not fill: `dict.get(None)` is None.
        self.names = tuple(by_column.get(column) for column in columns)
        self.floats = tuple(
            index
            for index, name in enumerate(self.names)
            if name is not None and shape.keys[name].kind is FLOAT
        )

    def values(self, value: Mapping[str, Any]) -> list[Any]:
        values = [value.get(name) for name in self.names]  # type: ignore[arg-type]
        for index in self.floats:
            if values[index] is not None:
                # JSON writes whole numbers as integers; the column and binary COPY want floats.
                values[index] = float(values[index])
        return values


_VICTIM_ROW = _Layout(VICTIM, PARTICIPANT_COLUMNS[4:-1])


_ATTACKER_ROW = _Layout(ATTACKER, PARTICIPANT_COLUMNS[4:-1])


_ITEM_ROW = _Layout(ITEM, ITEM_COLUMNS[3:-1])


def _record_struct() -> Any:
    """The Struct of a plain record: a body whose every object fits its shape, with or
    without its zkb (which then fits too), and nothing else; None without msgspec."""
    if msgspec is None:
        return None
    contents = nonempty_list(CONTENT.struct(ITEM_COLUMNS[3:-1]))
    item = ITEM.struct(ITEM_COLUMNS[3:-1], nested=(("items", contents, False),))
    victim = VICTIM.struct(
        nested=(("position", POSITION.struct(), False), ("items", nonempty_list(item), False))
    )
    attackers = nonempty_list(ATTACKER.struct(PARTICIPANT_COLUMNS[4:-1]))
    zkb = ZKB.struct()
    return KILLMAIL.struct(
        nested=(("victim", victim, True), ("attackers", attackers, True), ("zkb", zkb, False))
    )


# Attackers' and items' fields are in their rows' order, so a row is the Struct's tuple.
_RECORD_FIT = _record_struct()


def fit(record: Any) -> Any:
    """A plain record checked, and its values taken, in one pass in C: a Struct, or None for
    anything else (or without msgspec), which `split_record` and `validate_body` decide."""
    if _RECORD_FIT is None or type(record) is not dict:
        return None
    try:
        fitted = msgspec.convert(record, _RECORD_FIT)
    except msgspec.ValidationError:
        return None
    # The Struct checks the time's spelling; whether it is a date is checked here.
    if KILLMAIL.keys["killmail_time"].problem(fitted.killmail_time) is not None:
        return None
    return fitted


def _entity_columns(model: type[Model], columns: tuple[str, ...]) -> list[tuple[int, Any]]:
    """(index in a row, entity model) of each of a table's columns that names an entity."""
    fields = {f.column: f for f in model._meta.concrete_fields}
    return [
        (index, fields[column].related_model)
        for index, column in enumerate(columns)
        if fields[column].is_relation and fields[column].related_model is not Killmail
    ]


_KILLMAIL_ENTITIES = _entity_columns(Killmail, KILLMAIL_COLUMNS)


_PARTICIPANT_ENTITIES = _entity_columns(Participant, PARTICIPANT_COLUMNS)


_ITEM_ENTITIES = _entity_columns(Item, ITEM_COLUMNS)


def walk_items(items: Iterable[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], bool]]:
    """Yield (item, is_container_content) depth-first: each container before its contents."""
    for item in items:
        yield item, False
        for content in item.get("items", ()):
            yield content, True


def entity_ids(
    killmails: list[list[Any]], participants: list[tuple], items: list[tuple]
) -> dict[type[Model], list[int]]:
    """The sorted ids of every entity the rows reference, by model."""
    ids: dict[type[Model], set[int]] = defaultdict(set)
    for rows, references in (
        (killmails, _KILLMAIL_ENTITIES),
        (participants, _PARTICIPANT_ENTITIES),
        (items, _ITEM_ENTITIES),
    ):
        for index, model in references:
            ids[model].update(map(itemgetter(index), rows))  # a loop in C
    for model_ids in ids.values():
        model_ids.discard(None)  # type: ignore[arg-type]
    return {model: sorted(model_ids) for model, model_ids in ids.items() if model_ids}


def _extra_text(shape: Shape, value: Mapping[str, Any], where: str) -> str | None:
    """The JSON text of what the columns do not hold of `value`, or None."""
    return _json_text(shape.extra(value), where)  # type: ignore[arg-type]


def _json_text(extra: dict[str, Any] | None, where: str) -> str | None:
    if extra is None:
        return None
    try:
        return json.dumps(extra, separators=(",", ":"))
    except (ValueError, RecursionError) as exc:  # an int of 5,000 digits, nesting too deep
        raise InvalidKillmail(None, f"{where}: cannot be kept as JSON ({exc})") from None


def zkb_fields(zkb: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Every zkb column's value (None when absent, no hash ""), and the zkb extras.

    The extras hold what the columns do not, and are `{}` for an empty zkb, which leaves no
    column to say it was there.
    """
    columns, extra = ZKB.values(zkb)  # type: ignore[arg-type]
    values = {column: columns.get(column) for column in ZKB_COLUMNS}
    values["killmail_hash"] = values["killmail_hash"] or ""
    return values, extra if zkb else {}


def killmail_row(
    body: Mapping[str, Any], zkb: Mapping[str, Any] | None, time: Any, plain: bool
) -> list[Any]:
    """KILLMAIL_COLUMNS for one killmail."""
    row: dict[str, Any] = dict.fromkeys(KILLMAIL_COLUMNS)
    for name, column in KILLMAIL.pairs:
        row[column] = body.get(name)
    row["killmail_time"] = time
    position = body["victim"].get("position")
    if position is not None:
        for name, column in POSITION.pairs:
            row[column] = float(position[name])
    if not plain:
        row["extra"] = _extra_text(KILLMAIL, body, "killmail")
        if position is not None:
            row["position_extra"] = _extra_text(POSITION, position, "victim.position")
    row["killmail_hash"] = ""
    if zkb is not None:
        columns, zkb_extra = zkb_fields(zkb)
        row.update(columns)
        row["zkb_extra"] = _json_text(zkb_extra, "zkb")
    if row["labels"] is not None:
        row["labels"] = _LABELS.get_db_prep_save(row["labels"], connection)
    return list(row.values())


_LABELS = Killmail._meta.get_field("labels")


def fitted_rows(record: Any, time: Any) -> tuple[list[Any], list[tuple], list[tuple]]:
    """The killmail row, participant rows and item rows of a plain record's Struct (`fit`):
    what `killmail_row`, `participant_rows` and `item_rows` make of it, without extras."""
    killmail_id = record.killmail_id
    victim, zkb = record.victim, record.zkb
    row: dict[str, Any] = dict.fromkeys(KILLMAIL_COLUMNS)
    for name, column in KILLMAIL.pairs:
        row[column] = getattr(record, name)
    row["killmail_time"] = time
    if victim.position is not None:
        for name, column in POSITION.pairs:
            row[column] = getattr(victim.position, name)
    row["killmail_hash"] = ""
    if zkb is not None:
        for name, column in ZKB.pairs:
            row[column] = getattr(zkb, name)
        row["killmail_hash"] = zkb.hash or ""
        if row["labels"] is not None:
            row["labels"] = _LABELS.get_db_prep_save(row["labels"], connection)
        if all(value is None for value in astuple(zkb)):
            row["zkb_extra"] = "{}"  # an empty zkb: no column says it was there
    victim_values = (None if name is None else getattr(victim, name) for name in _VICTIM_ROW.names)
    participants = [(killmail_id, time, True, 0, *victim_values, None)]
    for ordinal, attacker in enumerate(record.attackers):
        participants.append((killmail_id, time, False, ordinal, *astuple(attacker), None))
    items: list[tuple] = []
    for item in victim.items or ():
        container = len(items)
        items.append((killmail_id, container, None, *astuple(item)[:-1], None))
        for content in item.items or ():
            items.append((killmail_id, len(items), container, *astuple(content), None))
    return list(row.values()), participants, items


def participant_rows(body: Mapping[str, Any], time: Any, plain: bool) -> list[tuple]:
    """PARTICIPANT_COLUMNS for the victim and each attacker of one killmail."""
    killmail_id = body["killmail_id"]
    victim = body["victim"]
    extra = None if plain else _extra_text(VICTIM, victim, "victim")
    rows = [(killmail_id, time, True, 0, *_VICTIM_ROW.values(victim), extra)]
    for ordinal, attacker in enumerate(body["attackers"]):
        extra = None if plain else _extra_text(ATTACKER, attacker, f"attackers[{ordinal}]")
        rows.append((killmail_id, time, False, ordinal, *_ATTACKER_ROW.values(attacker), extra))
    return rows


def item_rows(body: Mapping[str, Any], plain: bool) -> list[tuple]:
    """ITEM_COLUMNS for each item of one killmail, container contents after their container."""
    killmail_id = body["killmail_id"]
    rows: list[tuple] = []
    container = None
    for ordinal, (item, is_content) in enumerate(walk_items(body["victim"].get("items", ()))):
        if not is_content:
            container = ordinal
        extra = None
        if not plain:
            shape = CONTENT if is_content else ITEM
            extra = _extra_text(shape, item, f"victim.items, item {ordinal}")
        rows.append(
            (
                killmail_id,
                ordinal,
                container if is_content else None,
                *_ITEM_ROW.values(item),
                extra,
            )
        )
    return rows
