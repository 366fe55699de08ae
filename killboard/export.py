"""Rebuild ESI killmail bodies (plus zkb) from the normalized rows.

The rebuilt body has ESI's keys in ESI's (alphabetical) order, absent keys stay absent,
attackers and items keep their order, and each row's extras are laid back over its columns
(see `killboard.shapes`), so a diff against the source proves nothing was lost.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from itertools import islice
from typing import Any

from django.db.models import QuerySet

from killboard.models import Item, Killmail, Participant
from killboard.shapes import (
    ATTACKER,
    CONTENT,
    ITEM,
    KILLMAIL,
    POSITION,
    VICTIM,
    ZKB,
    Shape,
    format_time,
)

# Killmails loaded per round of queries while exporting (the memory an export holds).
EXPORT_CHUNK = 500
# By id, so two exports line up line by line whatever the order the rows were stored in.
EXPORT_ORDER = ("killmail_id",)


def _object(
    shape: Shape, row: dict[str, Any], extra: dict[str, Any] | None, *, ordered: bool = True
) -> dict[str, Any]:
    """A JSON object from a row: its known keys in shape order, then the extras laid over.

    Shapes list their keys in ESI's (alphabetical) order; with extras, `ordered` sorts again.
    """
    value = {name: row[column] for name, column in shape.pairs if row[column] not in (None, "")}
    if extra:
        value.update(extra)
        if ordered:
            return _sorted(value)
    return value


def _sorted(value: dict[str, Any]) -> dict[str, Any]:
    # ESI writes keys in alphabetical order.
    return dict(sorted(value.items()))


def _items(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    top: list[dict[str, Any]] = []
    by_ordinal: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row["container_ordinal"] is None:
            item = _object(ITEM, row, None)
            top.append(item)
            by_ordinal[row["ordinal"]] = item
        else:
            content = _object(CONTENT, row, row["extra"])
            by_ordinal[row["container_ordinal"]].setdefault("items", []).append(content)
    # The extras go on last: they may say `"items": []`, or hold what ESI adds later.
    for row in rows:
        if row["container_ordinal"] is None and row["extra"]:
            by_ordinal[row["ordinal"]].update(row["extra"])
    return [_sorted(item) for item in top]


def build_record(
    killmail: dict[str, Any], participants: list[dict[str, Any]], items: list[dict[str, Any]]
) -> dict[str, Any]:
    """Rebuild one ESI body, with its zkb when one is stored, from `.values()` rows."""
    victim_row = next(row for row in participants if row["is_victim"])
    victim = _object(VICTIM, victim_row, None)
    if items:
        victim["items"] = _items(items)
    if killmail["position_x"] is not None:
        victim["position"] = _object(POSITION, killmail, killmail["position_extra"])
    victim.update(victim_row["extra"] or {})
    body = _object(KILLMAIL, killmail, None)
    body["killmail_time"] = format_time(killmail["killmail_time"])
    body["attackers"] = [
        _object(ATTACKER, row, row["extra"]) for row in participants if not row["is_victim"]
    ]
    body["victim"] = _sorted(victim)
    body = _sorted({**body, **(killmail["extra"] or {})})
    # zkb keeps zKillboard's order, not ESI's.
    zkb = _object(ZKB, killmail, killmail["zkb_extra"], ordered=False)
    if zkb or killmail["zkb_extra"] is not None:
        body["zkb"] = zkb
    return body


def iter_records(killmails: QuerySet[Killmail] | None = None) -> Iterator[dict[str, Any]]:
    """Yield rebuilt records for a queryset of killmails (all by default), in EXPORT_ORDER.

    One pass over the queryset's ids on a database cursor (server-side on PostgreSQL), and
    three queries by primary key for each EXPORT_CHUNK of them: memory stays bounded and each
    chunk costs the same however far the export has gone.
    """
    queryset = killmails if killmails is not None else Killmail.objects.all()
    ids = (
        queryset.order_by(*EXPORT_ORDER)
        .values_list("killmail_id", flat=True)
        .iterator(chunk_size=EXPORT_CHUNK)
    )
    while chunk := list(islice(ids, EXPORT_CHUNK)):
        yield from _chunk_records(chunk)


def _chunk_records(ids: list[int]) -> Iterator[dict[str, Any]]:
    killmails = {
        row["killmail_id"]: row for row in Killmail.objects.filter(killmail_id__in=ids).values()
    }
    participants: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in (
        Participant.objects.filter(killmail_id__in=ids)
        .order_by("killmail_id", "-is_victim", "ordinal")
        .values()
    ):
        participants[row["killmail_id"]].append(row)
    items: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in Item.objects.filter(killmail_id__in=ids).order_by("killmail_id", "ordinal").values():
        items[row["killmail_id"]].append(row)
    for killmail_id in ids:
        # Gone since the ids were read: nothing left to export.
        if killmail_id in killmails:
            yield build_record(
                killmails[killmail_id], participants[killmail_id], items[killmail_id]
            )
