"""Rebuild ESI killmail bodies (plus zkb) from the normalized rows.

The rebuilt body has ESI's keys in ESI's (alphabetical) order, absent keys stay absent, and
attackers and items keep their order, so a diff against the source proves nothing was lost.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from killboard.ingest import ZKB_COLUMNS
from killboard.models import Item, Killmail, Participant
from killboard.schema import format_time

# Killmails loaded per round of queries while exporting.
EXPORT_CHUNK = 500

ATTACKER_FIELDS = (
    ("alliance_id", "alliance_id"),
    ("character_id", "character_id"),
    ("corporation_id", "corporation_id"),
    ("damage_done", "damage"),
    ("faction_id", "faction_id"),
    ("final_blow", "final_blow"),
    ("security_status", "security_status"),
    ("ship_type_id", "ship_type_id"),
    ("weapon_type_id", "weapon_type_id"),
)
VICTIM_FIELDS = (
    ("alliance_id", "alliance_id"),
    ("character_id", "character_id"),
    ("corporation_id", "corporation_id"),
    ("damage_taken", "damage"),
    ("faction_id", "faction_id"),
)


def _present(row: dict[str, Any], fields: Iterable[tuple[str, str]]) -> dict[str, Any]:
    return {key: row[column] for key, column in fields if row[column] is not None}


def _item(row: dict[str, Any]) -> dict[str, Any]:
    item = {"flag": row["flag"], "item_type_id": row["item_type_id"]}
    if row["quantity_destroyed"] is not None:
        item["quantity_destroyed"] = row["quantity_destroyed"]
    if row["quantity_dropped"] is not None:
        item["quantity_dropped"] = row["quantity_dropped"]
    item["singleton"] = row["singleton"]
    return item


def _items(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    top: list[dict[str, Any]] = []
    by_ordinal: dict[int, dict[str, Any]] = {}
    for row in rows:
        item = _item(row)
        if row["container_ordinal"] is None:
            top.append(item)
            by_ordinal[row["ordinal"]] = item
        else:
            # "items" sorts after "item_type_id" and before the quantities.
            container = by_ordinal[row["container_ordinal"]]
            container.setdefault("items", []).append(item)
    return [dict(sorted(item.items())) for item in top]


def _zkb(killmail: dict[str, Any]) -> dict[str, Any] | None:
    zkb: dict[str, Any] = {}
    if killmail["location_id"] is not None:
        zkb["locationID"] = killmail["location_id"]
    if killmail["killmail_hash"]:
        zkb["hash"] = killmail["killmail_hash"]
    for key, column in ZKB_COLUMNS.items():
        if key != "locationID" and killmail[column] is not None:
            zkb[key] = killmail[column]
    zkb.update(killmail["zkb_other"] or {})
    return zkb or None


def build_record(
    killmail: dict[str, Any], participants: list[dict[str, Any]], items: list[dict[str, Any]]
) -> dict[str, Any]:
    """Rebuild one ESI body, with its zkb when one is stored, from `.values()` rows."""
    victim_row = next(row for row in participants if row["is_victim"])
    victim = _present(victim_row, VICTIM_FIELDS)
    if items:
        victim["items"] = _items(items)
    if killmail["position_x"] is not None:
        victim["position"] = {
            "x": killmail["position_x"],
            "y": killmail["position_y"],
            "z": killmail["position_z"],
        }
    victim["ship_type_id"] = victim_row["ship_type_id"]
    body: dict[str, Any] = {
        "attackers": [
            _present(row, ATTACKER_FIELDS) for row in participants if not row["is_victim"]
        ],
        "killmail_id": killmail["killmail_id"],
        "killmail_time": format_time(killmail["killmail_time"]),
    }
    if killmail["moon_id"] is not None:
        body["moon_id"] = killmail["moon_id"]
    body["solar_system_id"] = killmail["solar_system_id"]
    body["victim"] = dict(sorted(victim.items()))
    if killmail["war_id"] is not None:
        body["war_id"] = killmail["war_id"]
    zkb = _zkb(killmail)
    if zkb is not None:
        body["zkb"] = zkb
    return body


def iter_records(killmails: Any = None) -> Iterator[dict[str, Any]]:
    """Yield rebuilt records for a queryset of killmails (all by default), by killmail id.

    Walks the ids EXPORT_CHUNK at a time with three queries a chunk, so memory stays bounded.
    """
    queryset = killmails if killmails is not None else Killmail.objects.all()
    last_id = 0
    while True:
        chunk = list(
            queryset.filter(killmail_id__gt=last_id).order_by("killmail_id").values()[:EXPORT_CHUNK]
        )
        if not chunk:
            return
        ids = [killmail["killmail_id"] for killmail in chunk]
        participants: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in (
            Participant.objects.filter(killmail_id__in=ids)
            .order_by("killmail_id", "-is_victim", "ordinal")
            .values()
        ):
            participants[row["killmail_id"]].append(row)
        items: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in (
            Item.objects.filter(killmail_id__in=ids).order_by("killmail_id", "ordinal").values()
        ):
            items[row["killmail_id"]].append(row)
        for killmail in chunk:
            killmail_id = killmail["killmail_id"]
            yield build_record(killmail, participants[killmail_id], items[killmail_id])
        last_id = ids[-1]
