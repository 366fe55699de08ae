"""Store batches of killmails: validate, then write in bulk, once, in one transaction.

Idempotency lives in the database: killmails go in only where their primary key is free
(on PostgreSQL a COPY of those not stored yet, in a savepoint, falling back to `INSERT ...
ON CONFLICT DO NOTHING RETURNING` should another writer store one in between; see
`killboard.bulk`), and participants and items are written only for the killmails that this
very call inserted, so a rerun, a redelivered message or two workers racing can never store
a killmail, a participant or an item twice. Every id is written in ascending order, so two
batches that share killmails or entities wait for each other instead of deadlocking.

Nothing is lost: the rows' columns and extras follow `killboard.shapes`, and a killmail that
cannot be stored (it breaks meaning, or the database refuses one of its values) is kept whole
in `RejectedKillmail`, in the same transaction as its batch, while the rest is stored.
`killboard.rows` turns killmails into rows; `killboard.bulk` writes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from django.db import DataError, connection, reset_queries, transaction
from django.db.models import Model

from killboard.bulk import INSERT_CHUNK, insert_killmails, register_entities, write_rows
from killboard.models import Item, Killmail, Participant, RejectedKillmail
from killboard.rows import (
    ITEM_COLUMNS,
    ITEM_TYPES,
    PARTICIPANT_COLUMNS,
    PARTICIPANT_TYPES,
    ZKB_COLUMNS,
    entity_ids,
    fit,
    fitted_rows,
    item_rows,
    killmail_row,
    participant_rows,
    zkb_fields,
)
from killboard.shapes import (
    InvalidKillmail,
    parse_time,
    short_repr,
    validate_body,
)
from killboard.signals import killmails_stored

logger = logging.getLogger(__name__)

# Killmails per transaction of `ingest_stream`. Larger batches cost the server less (each
# entity registered once a batch, fewer statements and commits; 1,000 -> 2,000 took a fifth
# off a 20,000-killmail import), and hold more memory: about 45 MB a batch of the benchmark's
# mix, with one batch written while the next is prepared.
STREAM_BATCH = 2000


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
class PreparedBatch:
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


def prepare_batch(records: Iterable[Any]) -> PreparedBatch:
    """Validate a batch and build the rows `_store` writes for it (no database work)."""
    result = IngestResult()
    # Killmail id: (body, zkb, plain) of a record checked in Python, or the Struct of a
    # plain record checked by msgspec (`fit`), as almost every record is.
    valid: dict[int, tuple[Mapping[str, Any], Mapping[str, Any] | None, bool] | Any] = {}
    raw: dict[int, Any] = {}
    for record in records:
        checked = fit(record)
        if checked is None:
            try:
                body, zkb = split_record(record)
                checked = (body, zkb, validate_body(body))
            except InvalidKillmail as exc:
                result.rejected.append(Rejection(exc.killmail_id, str(exc), record))
                continue
            killmail_id = body["killmail_id"]
        else:
            killmail_id = checked.killmail_id
        if killmail_id in valid:
            result.existing_ids.append(killmail_id)
        else:
            valid[killmail_id] = checked
            raw[killmail_id] = record
    batch = PreparedBatch(result)
    adapt = connection.ops.adapt_datetimefield_value
    for killmail_id in sorted(valid):
        checked = valid[killmail_id]
        try:
            if type(checked) is tuple:
                body, zkb, plain = checked
                time = adapt(parse_time(body["killmail_time"]))
                killmail = killmail_row(body, zkb, time, plain)
                participants = participant_rows(body, time, plain)
                items = item_rows(body, plain)
            else:
                time = adapt(parse_time(checked.killmail_time))
                killmail, participants, items = fitted_rows(checked, time)
        except InvalidKillmail as exc:
            result.rejected.append(Rejection(killmail_id, str(exc), raw[killmail_id]))
            continue
        batch.killmails.append(killmail)
        batch.participants.extend(participants)
        batch.items.extend(items)
        batch.records[killmail_id] = raw[killmail_id]
    batch.entities = entity_ids(batch.killmails, batch.participants, batch.items)
    return batch


def _store(
    batch: PreparedBatch, *, source: str = "", job_id: int | None = None, durable: bool = True
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


def _write_refusing_one_by_one(batch: PreparedBatch, result: IngestResult) -> set[int]:
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


def _write(batch: PreparedBatch) -> set[int]:
    """Write the batch's entities, killmails and, for those inserted now, their rows."""
    register_entities(batch.entities)
    inserted = insert_killmails(batch.killmails)
    participants, items = batch.participants, batch.items
    if len(inserted) < len(batch.killmails):
        participants = [row for row in participants if row[0] in inserted]
        items = [row for row in items if row[0] in inserted]
    write_rows(Participant, PARTICIPANT_COLUMNS, PARTICIPANT_TYPES, participants)
    write_rows(Item, ITEM_COLUMNS, ITEM_TYPES, items)
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
        logger.warning(
            "Rejected %s (from %s)",
            rejection,
            source or "an unnamed source",
            extra={"killmail_id": rejection.killmail_id, "job_id": job_id},
        )
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
    return _store(prepare_batch(records), source=source, job_id=job_id)


def ingest_stream(
    records: Iterable[Any], batch_size: int = STREAM_BATCH, *, source: str = ""
) -> IngestResult:
    """Ingest an iterable of any length in batches of `batch_size`, one transaction each.

    A thread reads, validates and turns into rows the next batch while this one writes the
    current batch (mostly waiting for the server). When reading fails half-way (a broken
    file), the whole records read before the failure are stored, then the error goes on.
    """
    prepared: queue.Queue[PreparedBatch | BaseException | None] = queue.Queue(maxsize=1)

    def read() -> None:
        batch: list[Any] = []
        try:
            for record in records:
                batch.append(record)
                if len(batch) >= batch_size:
                    prepared.put(prepare_batch(batch))
                    batch = []
        except BaseException as exc:
            prepared.put(prepare_batch(batch))
            prepared.put(exc)
            return
        prepared.put(prepare_batch(batch))
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
        values, extra = zkb_fields(zkb)
        killmails.append(Killmail(killmail_id=killmail_id, zkb_extra=extra, **values))
    Killmail.objects.bulk_update(
        killmails, [*ZKB_COLUMNS, "zkb_extra"], batch_size=INSERT_CHUNK // 10
    )
    return len(killmails)
