"""Store batches of killmails: validate, then write in bulk, once, in one transaction.

Idempotency lives in the database: killmails go in with `INSERT ... ON CONFLICT DO NOTHING
RETURNING`, and participants and items are written only for the killmails that this very
statement inserted, so a rerun, a redelivered message or two workers racing can never store
a killmail, a participant or an item twice. Every id is written in ascending order, so two
batches that share killmails or entities wait for each other instead of deadlocking.

Nothing is lost: the rows' columns and extras follow `killboard.shapes`, and a killmail that
cannot be stored (it breaks meaning, or the database refuses one of its values) is kept whole
in `RejectedKillmail`, in the same transaction as its batch, while the rest is stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from django.db import DataError, connection, reset_queries, transaction
from django.db.models import AutoField, Model
from django.utils import timezone

from killboard.models import Item, Killmail, Participant, RejectedKillmail
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
    parse_time,
    short_repr,
    validate_body,
)
from killboard.signals import killmails_stored

logger = logging.getLogger(__name__)

# Rows per INSERT statement: well under SQLite's 32766 bound variables at 26 columns a row.
INSERT_CHUNK = 1000

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


def _entity_keys(*shapes: Shape) -> dict[type[Model], tuple[str, ...]]:
    """The JSON keys that reference each entity model, from the shapes' foreign keys."""
    keys: dict[type[Model], list[str]] = defaultdict(list)
    for shape in shapes:
        for name, key in shape.keys.items():
            model_field = shape.model._meta.get_field(key.column)
            if model_field.is_relation and name not in keys[model_field.related_model]:
                keys[model_field.related_model].append(name)
    return {model: tuple(names) for model, names in keys.items()}


PARTICIPANT_ENTITIES = _entity_keys(VICTIM, ATTACKER)
ITEM_ENTITIES = _entity_keys(ITEM)
KILLMAIL_ENTITIES = _entity_keys(KILLMAIL)


@dataclass(frozen=True)
class Rejection:
    """A killmail that was not stored, why, and the record as it came."""

    killmail_id: int | None
    reason: str
    record: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return f"killmail {self.killmail_id or '?'}: {self.reason}"


@dataclass
class IngestResult:
    """What one or more batches did: ids stored now, ids already stored, rejections."""

    new_ids: list[int] = field(default_factory=list)
    existing_ids: list[int] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def new(self) -> int:
        return len(self.new_ids)

    @property
    def existing(self) -> int:
        return len(self.existing_ids)

    def add(self, other: IngestResult) -> None:
        """Fold another batch's result into this one."""
        self.new_ids.extend(other.new_ids)
        self.existing_ids.extend(other.existing_ids)
        self.rejected.extend(other.rejected)

    def summary(self) -> str:
        """One line for humans."""
        return f"{self.new} new, {self.existing} already stored, {len(self.rejected)} rejected"


def split_record(record: Any) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    """Return (ESI body, zkb or None) from any shape zKillboard or ESI hands out.

    Accepted: the body with an optional `zkb` key (zKillboard pages since 2026-06-27, our
    export), `{"killmail": body, "zkb": ...}`, a RedisQ `{"package": {...}}` and an R2Z2
    package `{"killmail_id", "hash", "esi": body, "zkb": ...}`.
    """
    if isinstance(record, Mapping) and "package" in record:
        package = record["package"]
        if not isinstance(package, Mapping):
            raise InvalidKillmail(None, "empty RedisQ package, no killmail in it")
        if "killmail" not in package:
            raise InvalidKillmail(package.get("killID"), "no killmail body, only its zkb")
        return package["killmail"], _zkb(package, package["killmail"])
    if not isinstance(record, Mapping):
        raise InvalidKillmail(None, f"expected a killmail object, got {short_repr(record)}")
    if "killmail" in record:
        return record["killmail"], _zkb(record, record["killmail"])
    if "esi" in record:
        # An R2Z2 package: its killmail_id, hash, uploaded_at and sequence_id are the feed's.
        return record["esi"], _zkb(record, record["esi"])
    if "zkb" in record:
        body = {key: value for key, value in record.items() if key != "zkb"}
        if body.keys() <= {"killmail_id"}:
            raise InvalidKillmail(body.get("killmail_id"), "no killmail body, only its zkb")
        return body, _zkb(record, body)
    return record, None


def _zkb(record: Mapping[str, Any], body: Any) -> Mapping[str, Any] | None:
    """The record's zkb, None without one; `InvalidKillmail` if it is not an object.

    zkb values out of shape are kept apart (see `killboard.shapes.ZKB`); a zkb that is no
    object at all has nowhere to go.
    """
    if "zkb" not in record:
        return None
    zkb = record["zkb"]
    if not isinstance(zkb, dict):
        killmail_id = body.get("killmail_id") if isinstance(body, dict) else None
        raise InvalidKillmail(killmail_id, f"zkb: expected an object, got {short_repr(zkb)}")
    return zkb


def validate_record(record: Any) -> tuple[Mapping[str, Any], Mapping[str, Any] | None, bool]:
    """Split and validate one record: (body, zkb or None, plain); `InvalidKillmail` if bad.

    A plain body holds nothing for the extras (see `killboard.shapes.validate_body`).
    """
    body, zkb = split_record(record)
    return body, zkb, validate_body(body)


@dataclass
class _Batch:
    """A batch validated, rid of in-batch duplicates and turned into rows: what `_store` writes.

    Building the rows is Python work with no database in it, so `ingest_stream` does it in
    its reader thread while the server is busy writing the batch before.
    """

    result: IngestResult
    # In killmail id order; a killmail row is KILLMAIL_COLUMNS.
    killmails: list[list[Any]] = field(default_factory=list)
    participants: list[tuple] = field(default_factory=list)
    items: list[tuple] = field(default_factory=list)
    # Sorted ids of every entity the killmails reference, by entity model.
    entities: dict[type[Model], list[int]] = field(default_factory=dict)
    # The records as they came, by killmail id: quarantined if the database refuses one.
    records: dict[int, Any] = field(default_factory=dict)


def _prepare(records: Iterable[Any]) -> _Batch:
    """Validate a batch and build its rows (no database work)."""
    result = IngestResult()
    valid: dict[int, tuple[Mapping[str, Any], Mapping[str, Any] | None, bool]] = {}
    raw: dict[int, Any] = {}
    for record in records:
        try:
            body, zkb, plain = validate_record(record)
        except InvalidKillmail as exc:
            result.rejected.append(Rejection(exc.killmail_id, str(exc), record))
            continue
        killmail_id = body["killmail_id"]
        if killmail_id in valid:
            result.existing_ids.append(killmail_id)
        else:
            valid[killmail_id] = (body, zkb, plain)
            raw[killmail_id] = record
    batch = _Batch(result)
    bodies = []
    for killmail_id in sorted(valid):
        body, zkb, plain = valid[killmail_id]
        try:
            time = connection.ops.adapt_datetimefield_value(parse_time(body["killmail_time"]))
            killmail = _killmail_row(body, zkb, time, plain)
            participants = _participant_rows(body, time, plain)
            items = _item_rows(body, plain)
        except InvalidKillmail as exc:
            result.rejected.append(Rejection(killmail_id, str(exc), raw[killmail_id]))
            continue
        batch.killmails.append(killmail)
        batch.participants.extend(participants)
        batch.items.extend(items)
        batch.records[killmail_id] = raw[killmail_id]
        bodies.append(body)
    batch.entities = _entity_ids(bodies)
    return batch


def _store(
    batch: _Batch, *, source: str = "", job_id: int | None = None, durable: bool = True
) -> IngestResult:
    """Write a prepared batch and its rejections in one transaction; report what happened."""
    result = batch.result
    inserted: set[int] = set()
    validated = len(result.rejected)
    with transaction.atomic():
        if not durable and connection.vendor == "postgresql":
            # An import is rerun safely: a server crash may lose the last moment's commits,
            # never half a batch, and the commit need not wait for the disk.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        if batch.killmails:
            inserted = _write_refusing_one_by_one(batch, result)
        quarantine(result.rejected, source, job_id)
        new_ids = sorted(inserted)
        if new_ids:
            transaction.on_commit(
                lambda: killmails_stored.send(sender=Killmail, killmail_ids=new_ids)
            )
    # Those the database refused were neither stored now nor before.
    refused = {rejection.killmail_id for rejection in result.rejected[validated:]}
    result.new_ids.extend(new_ids)
    result.existing_ids.extend(
        row[0] for row in batch.killmails if row[0] not in inserted and row[0] not in refused
    )
    return result


def _write_refusing_one_by_one(batch: _Batch, result: IngestResult) -> set[int]:
    """Write the batch; if the database refuses a value, write its killmails one by one.

    Values are checked against their columns before, so this is the last line: a killmail
    the database refuses is rejected alone, never its whole batch or page.
    """
    try:
        with transaction.atomic():
            return _write(batch)
    except DataError as exc:
        if len(batch.killmails) == 1:
            killmail_id = batch.killmails[0][0]
            reason = f"the database refused a value: {str(exc).splitlines()[0]}"
            result.rejected.append(Rejection(killmail_id, reason, batch.records[killmail_id]))
            return set()
    participants, items = defaultdict(list), defaultdict(list)
    for row in batch.participants:
        participants[row[0]].append(row)
    for row in batch.items:
        items[row[0]].append(row)
    inserted: set[int] = set()
    for killmail in batch.killmails:
        killmail_id = killmail[0]
        single = replace(
            batch,
            killmails=[killmail],
            participants=participants[killmail_id],
            items=items[killmail_id],
        )
        inserted |= _write_refusing_one_by_one(single, result)
    return inserted


def _write(batch: _Batch) -> set[int]:
    """Write the batch's entities, killmails and, for those inserted now, their rows."""
    _register_entities(batch.entities)
    inserted = _insert_killmails(batch.killmails)
    participants, items = batch.participants, batch.items
    if len(inserted) < len(batch.killmails):
        participants = [row for row in participants if row[0] in inserted]
        items = [row for row in items if row[0] in inserted]
    _write_rows(Participant, PARTICIPANT_COLUMNS, PARTICIPANT_TYPES, participants)
    _write_rows(Item, ITEM_COLUMNS, ITEM_TYPES, items)
    return inserted


def _record_text(record: Any) -> tuple[Any, str]:
    """The record and its JSON text; a record JSON cannot write is described instead."""
    try:
        return record, json.dumps(record, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError) as exc:
        described = {"unrepresentable": short_repr(record, 2000), "error": str(exc)[:200]}
        return described, json.dumps(described, separators=(",", ":"))


def quarantine(rejections: list[Rejection], source: str, job_id: int | None = None) -> None:
    """Keep each rejected record whole; the same record rejected again updates its row."""
    rows: dict[str, RejectedKillmail] = {}
    for rejection in rejections:
        logger.warning("Rejected %s (from %s)", rejection, source or "an unnamed source")
        record, text = _record_text(rejection.record)
        digest = hashlib.sha256(text.encode()).hexdigest()
        rows[digest] = RejectedKillmail(
            killmail_id=rejection.killmail_id,
            record=record,
            digest=digest,
            reason=rejection.reason,
            source=source[:255],
            job_id=job_id,
        )
    if rows:
        RejectedKillmail.objects.bulk_create(
            list(rows.values()),
            update_conflicts=True,
            unique_fields=["digest"],
            update_fields=["reason", "source", "job_id", "rejected_at"],
        )


def ingest_killmails(
    records: Iterable[Any], *, source: str = "", job_id: int | None = None
) -> IngestResult:
    """Validate and store one batch of killmails in one transaction; report what happened.

    A rejected killmail is quarantined with its record, `source` and `job_id`; the rest of
    its batch is stored.
    """
    return _store(_prepare(records), source=source, job_id=job_id)


def _walk_items(items: Iterable[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], bool]]:
    """Yield (item, is_container_content) depth-first: each container before its contents."""
    for item in items:
        yield item, False
        for content in item.get("items", ()):
            yield content, True


def _entity_ids(bodies: list[Mapping[str, Any]]) -> dict[type[Model], list[int]]:
    """The sorted ids of every entity the bodies reference, by model."""
    ids: dict[type[Model], set[int]] = defaultdict(set)
    participants = [p for body in bodies for p in (body["victim"], *body["attackers"])]
    for model, keys in PARTICIPANT_ENTITIES.items():
        ids[model].update(p[key] for p in participants for key in keys if key in p)
    for model, keys in KILLMAIL_ENTITIES.items():
        ids[model].update(body[key] for body in bodies for key in keys if key in body)
    items = [item for body in bodies for item, _ in _walk_items(body["victim"].get("items", ()))]
    for model, keys in ITEM_ENTITIES.items():
        ids[model].update(item[key] for item in items for key in keys if key in item)
    return {model: sorted(model_ids) for model, model_ids in ids.items() if model_ids}


def _register_entities(entities: dict[type[Model], list[int]]) -> None:
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


def _killmail_row(
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
    if zkb is not None:
        columns, zkb_extra = ZKB.values(zkb)  # type: ignore[arg-type]
        row.update(columns)
        # An empty zkb leaves no column to say it was there.
        row["zkb_extra"] = _json_text(zkb_extra if zkb else {}, "zkb")
    row["killmail_hash"] = row["killmail_hash"] or ""
    if row["labels"] is not None:
        row["labels"] = _LABELS.get_db_prep_save(row["labels"], connection)
    return list(row.values())


_LABELS = Killmail._meta.get_field("labels")


def _insert_killmails(rows: list[list[Any]]) -> set[int]:
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


def _participant_rows(body: Mapping[str, Any], time: Any, plain: bool) -> list[tuple]:
    """PARTICIPANT_COLUMNS for the victim and each attacker of one killmail."""
    killmail_id = body["killmail_id"]
    victim = body["victim"]
    extra = None if plain else _extra_text(VICTIM, victim, "victim")
    rows = [(killmail_id, time, True, 0, *_VICTIM_ROW.values(victim), extra)]
    for ordinal, attacker in enumerate(body["attackers"]):
        extra = None if plain else _extra_text(ATTACKER, attacker, f"attackers[{ordinal}]")
        rows.append((killmail_id, time, False, ordinal, *_ATTACKER_ROW.values(attacker), extra))
    return rows


def _item_rows(body: Mapping[str, Any], plain: bool) -> list[tuple]:
    """ITEM_COLUMNS for each item of one killmail, container contents after their container."""
    killmail_id = body["killmail_id"]
    rows = []
    container = None
    for ordinal, (item, is_content) in enumerate(_walk_items(body["victim"].get("items", ()))):
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


def _write_rows(
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


def ingest_stream(
    records: Iterable[Any], batch_size: int = INSERT_CHUNK, *, source: str = ""
) -> IngestResult:
    """Ingest an iterable of any length in batches of `batch_size`, one transaction each.

    A thread reads, validates and turns into rows the next batch while this one writes the
    current batch (mostly waiting for the server). When reading fails half-way (a broken
    file), the whole records read before the failure are stored, then the error goes on.
    """
    prepared: queue.Queue[_Batch | BaseException | None] = queue.Queue(maxsize=2)

    def read() -> None:
        batch: list[Any] = []
        try:
            for record in records:
                batch.append(record)
                if len(batch) >= batch_size:
                    prepared.put(_prepare(batch))
                    batch = []
        except BaseException as exc:
            prepared.put(_prepare(batch))
            prepared.put(exc)
            return
        prepared.put(_prepare(batch))
        prepared.put(None)

    # A daemon: should writing fail, the reader left blocked on a full queue must not keep
    # the process alive.
    threading.Thread(target=read, name="ingest-reader", daemon=True).start()
    total = IngestResult()
    while (item := prepared.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        total.add(_store(item, source=source, durable=False))
        # With DEBUG on, Django keeps every statement; a long import must not.
        reset_queries()
    return total


def update_zkb(zkbs: dict[int, Any]) -> int:
    """Refresh the zkb of stored killmails (values change as prices do); return how many.

    Values out of shape are kept in the extras, as ingest keeps them; a zkb that is not an
    object is skipped with a warning.
    """
    killmails = []
    for killmail_id, zkb in zkbs.items():
        if not isinstance(zkb, dict):
            logger.warning("Kept the stored zkb of killmail %s: %s", killmail_id, short_repr(zkb))
            continue
        columns, extra = ZKB.values(zkb)
        values = {column: columns.get(column) for column in ZKB_COLUMNS}
        values["killmail_hash"] = values["killmail_hash"] or ""
        zkb_extra = extra if zkb else {}
        killmails.append(Killmail(killmail_id=killmail_id, zkb_extra=zkb_extra, **values))
    Killmail.objects.bulk_update(
        killmails, [*ZKB_COLUMNS, "zkb_extra"], batch_size=INSERT_CHUNK // 10
    )
    return len(killmails)
