"""Store batches of killmails: validate, then write in bulk, once, in one transaction.

Idempotency lives in the database: killmails go in with `INSERT ... ON CONFLICT DO NOTHING
RETURNING`, and participants and items are written only for the killmails that this very
statement inserted, so a rerun, a redelivered message or two workers racing can never store
a killmail, a participant or an item twice. Every id is written in ascending order, so two
batches that share killmails or entities wait for each other instead of deadlocking.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import connection, reset_queries, transaction
from django.db.models import Model
from django.utils import timezone

from killboard.models import (
    Alliance,
    Character,
    Corporation,
    Faction,
    Item,
    ItemType,
    Killmail,
    Participant,
    SolarSystem,
)
from killboard.schema import (
    ZKB,
    InvalidKillmail,
    parse_time,
    short_repr,
    validate_body,
    validate_zkb,
)
from killboard.signals import killmails_stored

logger = logging.getLogger(__name__)

# Rows per INSERT statement: well under SQLite's 32766 bound variables at 23 columns a row.
INSERT_CHUNK = 1000

KILLMAIL_COLUMNS = (
    "killmail_id",
    "killmail_time",
    "solar_system_id",
    "moon_id",
    "war_id",
    "position_x",
    "position_y",
    "position_z",
    "killmail_hash",
    "location_id",
    "fitted_value",
    "dropped_value",
    "destroyed_value",
    "total_value",
    "total_droppable_value",
    "points",
    "npc",
    "solo",
    "awox",
    "labels",
    "zkb_other",
    "created_at",
)
# PostgreSQL types of KILLMAIL_COLUMNS but created_at, for the unnest() insert.
KILLMAIL_TYPES = (
    "bigint",
    "timestamptz",
    "bigint",
    "bigint",
    "bigint",
    *["float8"] * 3,
    "text",
    "bigint",
    *["float8"] * 5,
    "integer",
    *["boolean"] * 3,
    "jsonb",
    "jsonb",
)
# zkb keys stored in their own columns, in KILLMAIL_COLUMNS order after killmail_hash.
ZKB_COLUMNS = {
    "locationID": "location_id",
    "fittedValue": "fitted_value",
    "droppedValue": "dropped_value",
    "destroyedValue": "destroyed_value",
    "totalValue": "total_value",
    "totalDroppableValue": "total_droppable_value",
    "points": "points",
    "npc": "npc",
    "solo": "solo",
    "awox": "awox",
    "labels": "labels",
}
PARTICIPANT_COLUMNS = (
    "killmail_id",
    "killmail_time",
    "is_victim",
    "ordinal",
    "character_id",
    "corporation_id",
    "alliance_id",
    "faction_id",
    "ship_type_id",
    "weapon_type_id",
    "damage",
    "final_blow",
    "security_status",
)
# PostgreSQL types of PARTICIPANT_COLUMNS, for COPY in binary format.
PARTICIPANT_TYPES = (
    "int8",
    "timestamptz",
    "bool",
    "int4",
    *["int8"] * 6,
    "int8",
    "bool",
    "float8",
)
ITEM_COLUMNS = (
    "killmail_id",
    "ordinal",
    "container_ordinal",
    "item_type_id",
    "flag",
    "singleton",
    "quantity_destroyed",
    "quantity_dropped",
)
# PostgreSQL types of ITEM_COLUMNS, for COPY in binary format.
ITEM_TYPES = ("int8", "int4", "int4", "int8", "int4", "int4", "int8", "int8")
ENTITY_KEYS: tuple[tuple[type[Model], tuple[str, ...]], ...] = (
    (Character, ("character_id",)),
    (Corporation, ("corporation_id",)),
    (Alliance, ("alliance_id",)),
    (Faction, ("faction_id",)),
    (ItemType, ("ship_type_id", "weapon_type_id")),
)


@dataclass(frozen=True)
class Rejection:
    """A killmail that was not stored, and why."""

    killmail_id: int | None
    reason: str

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
    export), `{"killmail": body, "zkb": ...}`, and a RedisQ `{"package": {...}}`.
    """
    if isinstance(record, Mapping) and "package" in record:
        package = record["package"]
        if not isinstance(package, Mapping):
            raise InvalidKillmail(None, "empty RedisQ package, no killmail in it")
        if "killmail" not in package:
            raise InvalidKillmail(package.get("killID"), "no killmail body, only its zkb")
        return package["killmail"], package.get("zkb")
    if not isinstance(record, Mapping):
        raise InvalidKillmail(None, f"expected a killmail object, got {short_repr(record)}")
    if "killmail" in record:
        return record["killmail"], record.get("zkb")
    if "zkb" in record:
        body = {key: value for key, value in record.items() if key != "zkb"}
        if body.keys() <= {"killmail_id"}:
            raise InvalidKillmail(body.get("killmail_id"), "no killmail body, only its zkb")
        return body, record["zkb"]
    return record, None


def validate_record(record: Any) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    """Split and validate one record; raise `InvalidKillmail` with the reason."""
    body, zkb = split_record(record)
    validate_body(body)
    if zkb is not None:
        validate_zkb(body["killmail_id"], zkb)
    return body, zkb


@dataclass
class _Batch:
    """A batch validated, rid of in-batch duplicates and turned into rows: what `_store` writes.

    Building the rows is Python work with no database in it, so `ingest_stream` does it in
    its reader thread while the server is busy writing the batch before.
    """

    result: IngestResult
    # In killmail id order; a killmail row is KILLMAIL_COLUMNS without created_at.
    killmails: list[list[Any]] = field(default_factory=list)
    participants: list[tuple] = field(default_factory=list)
    items: list[tuple] = field(default_factory=list)
    # Sorted ids of every entity the killmails reference, by entity model.
    entities: dict[type[Model], list[int]] = field(default_factory=dict)


def _prepare(records: Iterable[Any]) -> _Batch:
    """Validate a batch and build its rows (no database work)."""
    result = IngestResult()
    valid: dict[int, tuple[Mapping[str, Any], Mapping[str, Any] | None]] = {}
    for record in records:
        try:
            body, zkb = validate_record(record)
        except InvalidKillmail as exc:
            result.rejected.append(Rejection(exc.killmail_id, str(exc)))
            continue
        killmail_id = body["killmail_id"]
        if killmail_id in valid:
            result.existing_ids.append(killmail_id)
        else:
            valid[killmail_id] = (body, zkb)
    batch = _Batch(result)
    for killmail_id in sorted(valid):
        body, zkb = valid[killmail_id]
        time = connection.ops.adapt_datetimefield_value(parse_time(body["killmail_time"]))
        batch.killmails.append(_killmail_row(body, zkb, time))
        batch.participants.extend(_participant_rows(body, time))
        batch.items.extend(_item_rows(body))
    batch.entities = _entity_ids([body for body, _ in valid.values()])
    return batch


def _store(batch: _Batch, *, durable: bool = True) -> IngestResult:
    """Write a prepared batch in one transaction; report what happened."""
    result = batch.result
    for rejection in result.rejected:
        logger.warning("Rejected %s", rejection)
    if not batch.killmails:
        return result
    with transaction.atomic():
        if not durable and connection.vendor == "postgresql":
            # An import is rerun safely: a server crash may lose the last moment's commits,
            # never half a batch, and the commit need not wait for the disk.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        _register_entities(batch.entities)
        inserted = _insert_killmails(batch.killmails)
        participants, items = batch.participants, batch.items
        if len(inserted) < len(batch.killmails):
            participants = [row for row in participants if row[0] in inserted]
            items = [row for row in items if row[0] in inserted]
        _write_rows(Participant, PARTICIPANT_COLUMNS, PARTICIPANT_TYPES, participants)
        _write_rows(Item, ITEM_COLUMNS, ITEM_TYPES, items)
        new_ids = sorted(inserted)
        if new_ids:
            transaction.on_commit(
                lambda: killmails_stored.send(sender=Killmail, killmail_ids=new_ids)
            )
    result.new_ids.extend(new_ids)
    result.existing_ids.extend(row[0] for row in batch.killmails if row[0] not in inserted)
    return result


def ingest_killmails(records: Iterable[Any]) -> IngestResult:
    """Validate and store one batch of killmails in one transaction; report what happened.

    A rejected killmail changes nothing; the valid ones of its batch are stored.
    """
    return _store(_prepare(records))


def _walk_items(items: Iterable[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], bool]]:
    """Yield (item, is_container_content) depth-first: each container before its contents."""
    for item in items:
        yield item, False
        for content in item.get("items", ()):
            yield content, True


def _entity_ids(bodies: list[Mapping[str, Any]]) -> dict[type[Model], list[int]]:
    """The sorted ids of every entity the bodies reference, by model."""
    participants = [p for body in bodies for p in (body["victim"], *body["attackers"])]
    ids: dict[type[Model], set[int]] = {
        model: {p[key] for p in participants for key in keys if key in p}
        for model, keys in ENTITY_KEYS
    }
    ids[SolarSystem] = {body["solar_system_id"] for body in bodies}
    ids[ItemType].update(
        item["item_type_id"]
        for body in bodies
        for item, _ in _walk_items(body["victim"].get("items", ()))
    )
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


def _float(value: int | float | None) -> float | None:
    """A JSON number for a float column (JSON writes whole numbers as integers)."""
    return None if value is None else float(value)


def _killmail_row(body: Mapping[str, Any], zkb: Mapping[str, Any] | None, time: Any) -> list[Any]:
    """KILLMAIL_COLUMNS but created_at, for one killmail."""
    zkb = zkb or {}
    position = body["victim"].get("position") or {}
    other = {key: value for key, value in zkb.items() if key not in ZKB}
    labels = zkb.get("labels")
    json_field = Killmail._meta.get_field("labels")
    return [
        body["killmail_id"],
        time,
        body["solar_system_id"],
        body.get("moon_id"),
        body.get("war_id"),
        _float(position.get("x")),
        _float(position.get("y")),
        _float(position.get("z")),
        zkb.get("hash", ""),
        zkb.get("locationID"),
        _float(zkb.get("fittedValue")),
        _float(zkb.get("droppedValue")),
        _float(zkb.get("destroyedValue")),
        _float(zkb.get("totalValue")),
        _float(zkb.get("totalDroppableValue")),
        zkb.get("points"),
        zkb.get("npc"),
        zkb.get("solo"),
        zkb.get("awox"),
        json_field.get_db_prep_save(labels, connection) if labels is not None else None,
        json_field.get_db_prep_save(other, connection) if other else None,
    ]


def _insert_killmails(rows: list[list[Any]]) -> set[int]:
    """Insert killmail rows that are not stored yet; return the ids this call inserted."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    table = connection.ops.quote_name(Killmail._meta.db_table)
    columns = ", ".join(KILLMAIL_COLUMNS)
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
    row_sql = f"({', '.join(['%s'] * len(KILLMAIL_COLUMNS))})"
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


def _participant_rows(body: Mapping[str, Any], time: Any) -> list[tuple]:
    """PARTICIPANT_COLUMNS for the victim and each attacker of one killmail."""
    killmail_id = body["killmail_id"]
    victim = body["victim"]
    rows = [
        (
            killmail_id,
            time,
            True,
            0,
            victim.get("character_id"),
            victim.get("corporation_id"),
            victim.get("alliance_id"),
            victim.get("faction_id"),
            victim["ship_type_id"],
            None,
            victim["damage_taken"],
            None,
            None,
        )
    ]
    for ordinal, attacker in enumerate(body["attackers"]):
        rows.append(
            (
                killmail_id,
                time,
                False,
                ordinal,
                attacker.get("character_id"),
                attacker.get("corporation_id"),
                attacker.get("alliance_id"),
                attacker.get("faction_id"),
                attacker.get("ship_type_id"),
                attacker.get("weapon_type_id"),
                attacker["damage_done"],
                attacker["final_blow"],
                _float(attacker["security_status"]),
            )
        )
    return rows


def _item_rows(body: Mapping[str, Any]) -> list[tuple]:
    """ITEM_COLUMNS for each item of one killmail, container contents after their container."""
    killmail_id = body["killmail_id"]
    rows = []
    container = None
    for ordinal, (item, is_content) in enumerate(_walk_items(body["victim"].get("items", ()))):
        if not is_content:
            container = ordinal
        rows.append(
            (
                killmail_id,
                ordinal,
                container if is_content else None,
                item["item_type_id"],
                item["flag"],
                item["singleton"],
                item.get("quantity_destroyed"),
                item.get("quantity_dropped"),
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


def ingest_stream(records: Iterable[Any], batch_size: int = INSERT_CHUNK) -> IngestResult:
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
        total.add(_store(item, durable=False))
        # With DEBUG on, Django keeps every statement; a long import must not.
        reset_queries()
    return total


def update_zkb(zkbs: dict[int, Any]) -> int:
    """Refresh the zkb columns of stored killmails (values change as prices do).

    Invalid zkb objects are skipped with a warning; returns how many killmails were updated.
    """
    killmails = []
    for killmail_id, zkb in zkbs.items():
        try:
            validate_zkb(killmail_id, zkb)
        except InvalidKillmail as exc:
            logger.warning("Kept the stored zkb of killmail %s: %s", killmail_id, exc)
            continue
        fields = {column: zkb.get(key) for key, column in ZKB_COLUMNS.items()}
        other = {key: value for key, value in zkb.items() if key not in ZKB}
        killmails.append(
            Killmail(
                killmail_id=killmail_id,
                killmail_hash=zkb.get("hash", ""),
                zkb_other=other or None,
                **fields,
            )
        )
    Killmail.objects.bulk_update(
        killmails,
        ["killmail_hash", "zkb_other", *ZKB_COLUMNS.values()],
        batch_size=INSERT_CHUNK // 10,
    )
    return len(killmails)
