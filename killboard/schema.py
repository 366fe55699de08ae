"""The ESI killmail schema and zKillboard's zkb object, checked before anything is stored.

`validate_killmail` raises `InvalidKillmail` with one clear reason naming the field, so a
rejected killmail can be reported and changes nothing. Unknown keys in the ESI body are
rejected rather than dropped: the body is versioned by X-Compatibility-Date, and storing
it partly would break the promise that export gives back exactly what came in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

INT64_MAX = 2**63 - 1
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
HASH_PATTERN = re.compile(r"[0-9a-f]{40}")
# ESI's own spelling of TIME_FORMAT, which datetime.fromisoformat parses far faster.
CANONICAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


class InvalidKillmail(ValueError):
    """A killmail that breaks the schema; `str()` is the reason, naming the field."""

    def __init__(self, killmail_id: Any, reason: str) -> None:
        super().__init__(reason)
        # Only a usable id is kept: the rejection is reported and recorded by it.
        valid = type(killmail_id) is int and 0 < killmail_id <= INT64_MAX
        self.killmail_id: int | None = killmail_id if valid else None


def short_repr(value: Any, width: int = 40) -> str:
    """The start of `repr(value)` for a message, whatever the value (huge or deep ones too)."""
    if type(value) is int and value.bit_length() > 128:
        return f"a {value.bit_length()}-bit integer"
    try:
        return repr(value)[:width]
    except (ValueError, RecursionError):  # an integer of over 4300 digits, deep nesting
        return f"a {type(value).__name__}"


Check = Callable[[Any], str | None]


def _integer(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not int:
            return f"expected an integer, got {short_repr(value)}"
        if not minimum <= value <= INT64_MAX:
            return f"{short_repr(value)} is out of range ({minimum}..2^63-1)"
        return None

    return check


def _number(value: Any) -> str | None:
    # An int as a float column's value must fit in int64 (SQLite) and in a float at all.
    if type(value) is float and math.isfinite(value):
        return None
    if type(value) is int and -INT64_MAX - 1 <= value <= INT64_MAX:
        return None
    return f"expected a number, got {short_repr(value)}"


def _boolean(value: Any) -> str | None:
    return None if type(value) is bool else f"expected true or false, got {short_repr(value)}"


def _time(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            parse_time(value)
            return None
        except ValueError:
            pass
    return f"expected a time like 2024-07-14T15:49:53Z, got {short_repr(value)}"


def _hash(value: Any) -> str | None:
    if isinstance(value, str) and HASH_PATTERN.fullmatch(value):
        return None
    return f"expected 40 lowercase hex digits, got {short_repr(value, 50)}"


def _labels(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(label, str) for label in value):
        return None
    return f"expected a list of strings, got {short_repr(value)}"


ID = _integer(1)
COUNT = _integer(0)

# name: (check, required)
POSITION: dict[str, tuple[Check, bool]] = {
    "x": (_number, True),
    "y": (_number, True),
    "z": (_number, True),
}
ITEM: dict[str, tuple[Check, bool]] = {
    "flag": (COUNT, True),
    "item_type_id": (ID, True),
    "singleton": (COUNT, True),
    "quantity_destroyed": (COUNT, False),
    "quantity_dropped": (COUNT, False),
}
VICTIM: dict[str, tuple[Check, bool]] = {
    "damage_taken": (COUNT, True),
    "ship_type_id": (ID, True),
    "character_id": (ID, False),
    "corporation_id": (ID, False),
    "alliance_id": (ID, False),
    "faction_id": (ID, False),
}
ATTACKER: dict[str, tuple[Check, bool]] = {
    "damage_done": (COUNT, True),
    "final_blow": (_boolean, True),
    "security_status": (_number, True),
    "character_id": (ID, False),
    "corporation_id": (ID, False),
    "alliance_id": (ID, False),
    "faction_id": (ID, False),
    "ship_type_id": (ID, False),
    "weapon_type_id": (ID, False),
}
KILLMAIL: dict[str, tuple[Check, bool]] = {
    "killmail_id": (ID, True),
    "killmail_time": (_time, True),
    "solar_system_id": (ID, True),
    "moon_id": (ID, False),
    "war_id": (ID, False),
}
# zkb keys and their checks, in the order zKillboard writes them; any other key is kept as is.
ZKB: dict[str, Check] = {
    "locationID": ID,
    "hash": _hash,
    "fittedValue": _number,
    "droppedValue": _number,
    "destroyedValue": _number,
    "totalValue": _number,
    "totalDroppableValue": _number,
    "points": _integer(-(2**31)),
    "npc": _boolean,
    "solo": _boolean,
    "awox": _boolean,
    "labels": _labels,
}


def _check_object(
    value: Any,
    fields: dict[str, tuple[Check, bool]],
    path: str,
    nested: frozenset[str] = frozenset(),
) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path or 'killmail'}: expected an object, got {short_repr(value)}")
    prefix = f"{path}." if path else ""
    for key in sorted(value.keys() - fields.keys() - nested):
        raise ValueError(f"{prefix}{key}: unknown field")
    for key, (check, required) in fields.items():
        if key not in value:
            if required:
                raise ValueError(f"{prefix}{key}: required field is missing")
            continue
        problem = check(value[key])
        if problem:
            raise ValueError(f"{prefix}{key}: {problem}")


def _check_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{path}: expected a non-empty list, got {short_repr(value)}")
    return value


def _check_items(items: Any, path: str, depth: int) -> None:
    for index, item in enumerate(_check_list(items, path)):
        item_path = f"{path}[{index}]"
        # Container contents are one level deep, never deeper.
        _check_object(item, ITEM, item_path, frozenset({"items"} if depth == 0 else ()))
        if "items" in item:
            _check_items(item["items"], f"{item_path}.items", depth + 1)


def _fits(
    value: Any,
    fields: dict[str, tuple[Check, bool]],
    required: frozenset[str],
    nested: frozenset[str],
) -> bool:
    """Whether `value` is a dict that `_check_object` would accept (never a false yes).

    `required` is `_required(fields)`, computed once.
    """
    if type(value) is not dict:
        return False
    for key, item in value.items():
        spec = fields.get(key)
        if spec is None:
            if key not in nested:
                return False
            continue
        check = spec[0]
        # Ids and counts are most of a body's fields: test them inline, without a call.
        if check is ID:
            if type(item) is not int or not 0 < item <= INT64_MAX:
                return False
        elif check is COUNT:
            if type(item) is not int or not 0 <= item <= INT64_MAX:
                return False
        elif check(item) is not None:
            return False
    return required <= value.keys()


def _required(fields: dict[str, tuple[Check, bool]]) -> frozenset[str]:
    return frozenset(key for key, (_, required) in fields.items() if required)


_KILLMAIL_REQUIRED = _required(KILLMAIL)
_VICTIM_REQUIRED = _required(VICTIM)
_POSITION_REQUIRED = _required(POSITION)
_ITEM_REQUIRED = _required(ITEM)
_ATTACKER_REQUIRED = _required(ATTACKER)
_ITEM_NESTED = frozenset({"items"})
_NOTHING: frozenset[str] = frozenset()
_VICTIM_NESTED = frozenset({"position", "items"})
_KILLMAIL_NESTED = frozenset({"victim", "attackers"})


def _body_fits(body: Any) -> bool:
    """Whether `validate_body` would accept the body: one quick pass, without messages."""
    if not _fits(body, KILLMAIL, _KILLMAIL_REQUIRED, _KILLMAIL_NESTED):
        return False
    victim, attackers = body.get("victim"), body.get("attackers")
    if not _fits(victim, VICTIM, _VICTIM_REQUIRED, _VICTIM_NESTED):
        return False
    if "position" in victim and not _fits(
        victim["position"], POSITION, _POSITION_REQUIRED, _NOTHING
    ):
        return False
    items = victim.get("items", [None])
    if type(items) is not list or not items:
        return False
    if "items" in victim:
        for item in items:
            if not _fits(item, ITEM, _ITEM_REQUIRED, _ITEM_NESTED):
                return False
            contents = item.get("items", [None])
            if type(contents) is not list or not contents:
                return False
            if "items" in item and not all(
                _fits(c, ITEM, _ITEM_REQUIRED, _NOTHING) for c in contents
            ):
                return False
    if type(attackers) is not list or not attackers:
        return False
    return all(_fits(attacker, ATTACKER, _ATTACKER_REQUIRED, _NOTHING) for attacker in attackers)


def validate_body(body: Any) -> None:
    """Raise `InvalidKillmail` unless `body` is a well-formed ESI killmail."""
    # Almost every body is valid: check it in one quick pass, and walk it again with the
    # error messages only when that pass finds a problem.
    if _body_fits(body):
        return
    killmail_id = body.get("killmail_id") if isinstance(body, Mapping) else None
    if type(killmail_id) is not int:
        killmail_id = None
    try:
        _check_object(body, KILLMAIL, "", frozenset({"victim", "attackers"}))
        for key in ("victim", "attackers"):
            if key not in body:
                raise ValueError(f"{key}: required field is missing")
        victim = body["victim"]
        _check_object(victim, VICTIM, "victim", frozenset({"position", "items"}))
        if "position" in victim:
            _check_object(victim["position"], POSITION, "victim.position")
        if "items" in victim:
            _check_items(victim["items"], "victim.items", 0)
        for index, attacker in enumerate(_check_list(body["attackers"], "attackers")):
            _check_object(attacker, ATTACKER, f"attackers[{index}]")
    except ValueError as exc:
        raise InvalidKillmail(killmail_id, str(exc)) from None


def validate_zkb(killmail_id: int, zkb: Any) -> None:
    """Raise `InvalidKillmail` unless the known keys of a zkb object have their types."""
    if not isinstance(zkb, Mapping):
        raise InvalidKillmail(killmail_id, f"zkb: expected an object, got {short_repr(zkb)}")
    for key, check in ZKB.items():
        if key in zkb:
            problem = check(zkb[key])
            if problem:
                raise InvalidKillmail(killmail_id, f"zkb.{key}: {problem}")
    # Labels and unknown keys are stored as JSON, which PostgreSQL refuses to hold a NUL in.
    if _holds_nul(zkb):
        raise InvalidKillmail(killmail_id, "zkb: a text holds a NUL character (\\u0000)")


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def parse_time(value: str) -> datetime:
    """Parse ESI's killmail_time; `ValueError` if it is not one."""
    if CANONICAL_TIME.fullmatch(value):
        try:
            return datetime.fromisoformat(value)  # "Z" makes it UTC
        except ValueError:
            pass
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)


def format_time(value: datetime) -> str:
    """Format a stored time the way ESI writes killmail_time."""
    return value.astimezone(UTC).strftime(TIME_FORMAT)
