"""The shape of a killmail record: which JSON key is kept in which column, and what is refused.

A record is an ESI killmail body plus zKillboard's zkb object. Each JSON object in it (the
body, the victim, its position, an attacker, an item, an item in a container, zkb) has one
`Shape`: its known keys, the column that keeps each, and a check derived from that column's
type. Validation, ingest's rows and export all read these shapes, so a new typed field is
its model field, its migration and one line here.

Refused is only what breaks meaning: a required key missing, a value of the wrong JSON type,
a number its column cannot hold. Everything else is kept: keys unknown today, empty lists,
and values a column cannot give back exactly (an integer beyond a float's precision, a time
written another way) stay verbatim in the extras of their row, which export lays back over
the columns. zkb is zKillboard's metadata and never costs a body: a value out of shape there
goes to the extras too.

With msgspec installed, each shape also derives a msgspec Struct that accepts exactly what
`Shape.fits` accepts (never more), nested as the record is, so that ingest checks a plain
record and takes its column values in one pass in C; without it, or for anything the Struct
refuses, the checks here decide.

Why one long module: every shape and the checks they derive, read as one description.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any

try:
    import msgspec
except ImportError:  # `Shape.fits` checks plain bodies alone
    msgspec = None  # type: ignore[assignment]

from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import Model

from killboard.models import Item, Killmail, Participant
from upstream.esi import is_killmail_hash

INT64_MAX = 2**63 - 1
# Integers a float64 holds exactly; a larger one in a float column is also kept verbatim.
FLOAT_EXACT = 2**53
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# ESI's own spelling of a time, which export writes back.
CANONICAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
# Any RFC 3339 time: kept in the column as a moment, and verbatim in the extras.
RFC3339_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

# A float column's values taken as exact by a Struct: an integer beyond it may not survive a
# float, so the Struct refuses it (and the larger floats, which the checks here then accept).
STRUCT_FLOAT_BOUND = float(FLOAT_EXACT - 1)

# The kinds of value a key holds, as checked and converted.
ID, INTEGER, FLOAT, BOOLEAN, TIME, HASH, LABELS = (
    "id",
    "integer",
    "float",
    "boolean",
    "time",
    "hash",
    "labels",
)


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


def parse_time(value: str) -> datetime:
    """An RFC 3339 time (ESI writes `2024-07-14T15:49:53Z`) in UTC; `ValueError` if not one."""
    if not RFC3339_TIME.fullmatch(value):
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    return datetime.fromisoformat(value.upper()).astimezone(UTC)


def format_time(value: datetime) -> str:
    """Format a stored time the way ESI writes killmail_time."""
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def storable_text(value: str) -> bool:
    """Whether a text survives jsonb: no NUL and no lone surrogate."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Key:
    """One known key of an object: the column keeping it and the kind of value it holds."""

    name: str
    column: str
    kind: str
    required: bool = False
    low: int = 0
    high: int = INT64_MAX

    def problem(self, value: Any) -> str | None:
        """Why the column cannot hold `value`, or None."""
        kind = self.kind
        if kind in (ID, INTEGER):
            if type(value) is not int:
                return f"expected an integer, got {short_repr(value)}"
            if not self.low <= value <= self.high:
                return f"{short_repr(value)} is out of range ({self.low}..{self.high})"
        elif kind == FLOAT:
            if type(value) is float and math.isfinite(value):
                return None
            if type(value) is int and value.bit_length() <= 1023:
                return None  # any integer a float can come near; export gives the exact one
            return f"expected a number, got {short_repr(value)}"
        elif kind == BOOLEAN:
            if type(value) is not bool:
                return f"expected true or false, got {short_repr(value)}"
        elif kind == TIME:
            try:
                parse_time(value)
            except (TypeError, ValueError):
                return f"expected a time like 2024-07-14T15:49:53Z, got {short_repr(value)}"
        elif kind == HASH:
            if not is_killmail_hash(value):
                return f"expected 40 lowercase hex digits, got {short_repr(value, 50)}"
        elif kind == LABELS and not (
            type(value) is list
            and all(type(label) is str and storable_text(label) for label in value)
        ):
            return f"expected a list of texts, got {short_repr(value)}"
        return None

    def exact(self, value: Any) -> bool:
        """Whether the column gives back a valid `value` as it came (else extras keep it too)."""
        if self.kind == FLOAT:
            return type(value) is float or -FLOAT_EXACT <= value <= FLOAT_EXACT
        if self.kind == TIME:
            return CANONICAL_TIME.fullmatch(value) is not None
        return True


def _key(model: type[Model], name: str, column: str, kind: str | None, required: bool) -> Key:
    """A key whose kind and range follow its column's type (`kind` only for texts and JSON)."""
    model_field = model._meta.get_field(column)
    if model_field.is_relation or model_field.primary_key:
        # An EVE id: positive, and a path segment or an entity of its own.
        return Key(name, column, ID, required, low=1)
    internal = model_field.get_internal_type()
    if internal in BaseDatabaseOperations.integer_field_ranges:
        low, high = BaseDatabaseOperations.integer_field_ranges[internal]
        return Key(name, column, INTEGER, required, low=low, high=high)
    derived = {"FloatField": FLOAT, "BooleanField": BOOLEAN, "DateTimeField": TIME}
    found = kind or derived.get(internal)
    if found is None:
        raise TypeError(f"{model.__name__}.{column}: say which kind of value {name!r} holds")
    return Key(name, column, found, required)


@dataclass(frozen=True)
class Shape:
    """The known keys of one kind of JSON object and where they are kept."""

    model: type[Model]
    # JSON key: Key, in the order export writes them.
    keys: dict[str, Key]
    # Keys whose values are objects or lists of objects with shapes of their own.
    nested: frozenset[str] = frozenset()
    nested_required: frozenset[str] = frozenset()
    required: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        required = {name for name, key in self.keys.items() if key.required}
        object.__setattr__(self, "required", frozenset(required | self.nested_required))

    @cached_property
    def pairs(self) -> list[tuple[str, str]]:
        """(JSON key, column) for every known key, in export order (read for every row)."""
        return [(name, key.column) for name, key in self.keys.items()]

    def fits(self, value: Any) -> bool:
        """Whether `value` holds only known keys with exact values: one quick pass.

        Never a false yes; a no sends the object down the slow path (`check`, `extra`).
        """
        if type(value) is not dict:
            return False
        keys = self.keys
        for name, item in value.items():
            key = keys.get(name)
            if key is None:
                if name not in self.nested:
                    return False
                continue
            kind = key.kind
            # Ids and counts are most of a body's fields: test them inline, without a call.
            if kind is ID or kind is INTEGER:
                if type(item) is not int or not key.low <= item <= key.high:
                    return False
            elif kind is FLOAT:
                if type(item) is float:
                    if not math.isfinite(item):
                        return False
                elif type(item) is not int or not -FLOAT_EXACT <= item <= FLOAT_EXACT:
                    return False
            elif kind is BOOLEAN:
                if type(item) is not bool:
                    return False
            elif kind is TIME:
                if type(item) is not str or not CANONICAL_TIME.fullmatch(item):
                    return False
                if key.problem(item) is not None:
                    return False
            elif key.problem(item) is not None:
                return False
        return self.required <= value.keys()

    def struct(self, columns: tuple[str, ...] | None = None, nested: tuple[tuple, ...] = ()) -> Any:
        """A msgspec Struct for the objects that fit this shape; None without msgspec.

        Its fields are the keys of `columns` in that order (every column one of this
        shape's), else every key in the shape's order, then `nested`: (name, msgspec type,
        required) for the nested objects and lists, which must match their own Structs. It
        accepts exactly what `fits` accepts, never more.
        """
        if msgspec is None:
            return None
        by_column = {key.column: key for key in self.keys.values()}
        keys = self.keys.values() if columns is None else [by_column[c] for c in columns]
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for key in keys:
            # An absent key is None; a null is refused, as `fits` refuses it.
            kind = _struct_kind(key)
            fields.append((key.name, kind) if key.required else (key.name, kind, None))
        for name, kind, required in nested:
            fields.append((name, kind) if required else (name, kind, None))
        name = f"{self.model.__name__}{len(fields)}Fit"
        return msgspec.defstruct(name, fields, forbid_unknown_fields=True, kw_only=True)

    def check(self, value: Any, path: str) -> None:
        """Raise `ValueError` naming the field when `value` breaks meaning; extras are fine."""
        if not isinstance(value, dict):
            raise ValueError(f"{path or 'killmail'}: expected an object, got {short_repr(value)}")
        prefix = f"{path}." if path else ""
        for name, key in self.keys.items():
            if name not in value:
                if key.required:
                    raise ValueError(f"{prefix}{name}: required field is missing")
                continue
            problem = key.problem(value[name])
            if problem:
                raise ValueError(f"{prefix}{name}: {problem}")
        for name in sorted(self.nested_required - value.keys()):
            raise ValueError(f"{prefix}{name}: required field is missing")

    def extra(self, value: dict[str, Any]) -> dict[str, Any] | None:
        """What the columns and the nested rows do not hold of a checked object, verbatim."""
        rest = {}
        for name, item in value.items():
            key = self.keys.get(name)
            if key is None:
                # An empty list of nested objects leaves no row to say it was there.
                if name not in self.nested or (item == [] and name not in self.required):
                    rest[name] = item
            elif not key.exact(item):
                rest[name] = item
        return rest or None

    def values(self, value: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Lenient shapes (zkb): (column: value) for the keys in shape, and the rest verbatim."""
        columns: dict[str, Any] = {}
        rest = {}
        for name, item in value.items():
            key = self.keys.get(name)
            if key is None or key.problem(item) is not None:
                rest[name] = item
                continue
            if not key.exact(item):
                rest[name] = item
            columns[key.column] = float(item) if key.kind is FLOAT else item
        return columns, rest or None


def shape(
    model: type[Model],
    keys: list[tuple[str, str] | tuple[str, str, str]],
    *,
    required: tuple[str, ...] = (),
    nested: tuple[str, ...] = (),
    nested_required: tuple[str, ...] = (),
) -> Shape:
    """A shape from (JSON key, column[, kind]) entries; kinds follow the columns' types."""
    built = {}
    for name, column, *kind in keys:
        built[name] = _key(model, name, column, kind[0] if kind else None, name in required)
    return Shape(model, built, frozenset(nested), frozenset(nested_required))


# Keys in ESI's (alphabetical) order, which export writes.
KILLMAIL = shape(
    Killmail,
    [
        ("killmail_id", "killmail_id"),
        ("killmail_time", "killmail_time"),
        ("moon_id", "moon_id"),
        ("solar_system_id", "solar_system_id"),
        ("war_id", "war_id"),
    ],
    required=("killmail_id", "killmail_time", "solar_system_id"),
    nested=("attackers", "victim"),
    nested_required=("attackers", "victim"),
)
POSITION = shape(
    Killmail,
    [("x", "position_x"), ("y", "position_y"), ("z", "position_z")],
    required=("x", "y", "z"),
)
VICTIM = shape(
    Participant,
    [
        ("alliance_id", "alliance_id"),
        ("character_id", "character_id"),
        ("corporation_id", "corporation_id"),
        ("damage_taken", "damage"),
        ("faction_id", "faction_id"),
        ("ship_type_id", "ship_type_id"),
    ],
    required=("damage_taken", "ship_type_id"),
    nested=("items", "position"),
)
ATTACKER = shape(
    Participant,
    [
        ("alliance_id", "alliance_id"),
        ("character_id", "character_id"),
        ("corporation_id", "corporation_id"),
        ("damage_done", "damage"),
        ("faction_id", "faction_id"),
        ("final_blow", "final_blow"),
        ("security_status", "security_status"),
        ("ship_type_id", "ship_type_id"),
        ("weapon_type_id", "weapon_type_id"),
    ],
    required=("damage_done", "final_blow", "security_status"),
)
_ITEM_KEYS: list[tuple[str, str] | tuple[str, str, str]] = [
    ("flag", "flag"),
    ("item_type_id", "item_type_id"),
    ("quantity_destroyed", "quantity_destroyed"),
    ("quantity_dropped", "quantity_dropped"),
    ("singleton", "singleton"),
]
_ITEM_REQUIRED = ("flag", "item_type_id", "singleton")
ITEM = shape(Item, _ITEM_KEYS, required=_ITEM_REQUIRED, nested=("items",))
# An item inside a container: ESI nests one level only, so an `items` here is an extra.
CONTENT = shape(Item, _ITEM_KEYS, required=_ITEM_REQUIRED)
# zkb keys in the order zKillboard writes them.
ZKB = shape(
    Killmail,
    [
        ("locationID", "location_id"),
        ("hash", "killmail_hash", HASH),
        ("fittedValue", "fitted_value"),
        ("droppedValue", "dropped_value"),
        ("destroyedValue", "destroyed_value"),
        ("totalValue", "total_value"),
        ("totalDroppableValue", "total_droppable_value"),
        ("points", "points"),
        ("npc", "npc"),
        ("solo", "solo"),
        ("awox", "awox"),
        ("labels", "labels", LABELS),
    ],
)


def _struct_kind(key: Key) -> Any:
    """The msgspec type of the values a column holds exactly, as `Shape.fits` checks them."""
    kind = key.kind
    if kind is ID or kind is INTEGER:
        return Annotated[int, msgspec.Meta(ge=key.low, le=key.high)]
    if kind is FLOAT:
        return Annotated[float, msgspec.Meta(ge=-STRUCT_FLOAT_BOUND, le=STRUCT_FLOAT_BOUND)]
    if kind is BOOLEAN:
        return bool
    if kind is TIME:
        # The canonical spelling only; `parse_time` still checks the date is one.
        return Annotated[str, msgspec.Meta(pattern=rf"\A{CANONICAL_TIME.pattern}\Z")]
    if kind is HASH:
        return Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{40}\Z")]
    if kind is LABELS:
        # `storable_text`: no NUL, no lone surrogate.
        return list[Annotated[str, msgspec.Meta(pattern=r"\A[^\x00\ud800-\udfff]*\Z")]]
    raise TypeError(f"{key.column}: a Struct does not check {kind} values")


def nonempty_list(struct: Any) -> Any:
    """The msgspec type of a non-empty list of `struct` (an empty list is not plain)."""
    return Annotated[list[struct], msgspec.Meta(min_length=1)]


def _items_fit(items: Any, item_shape: Shape) -> bool:
    if type(items) is not list or not items:
        return False
    for item in items:
        if not item_shape.fits(item):
            return False
        if "items" in item and not _items_fit(item["items"], CONTENT):
            return False
    return True


def head_fits(body: Any) -> bool:
    """Whether the body's own keys, its victim's and the victim's position are plain."""
    if not KILLMAIL.fits(body):
        return False
    victim = body["victim"]
    if not VICTIM.fits(victim):
        return False
    return "position" not in victim or POSITION.fits(victim["position"])


def _body_fits(body: Any) -> bool:
    """Whether the body is plain: only known keys, exact values, no empty list."""
    if not head_fits(body):
        return False
    victim, attackers = body["victim"], body["attackers"]
    if "items" in victim and not _items_fit(victim["items"], ITEM):
        return False
    if type(attackers) is not list or not attackers:
        return False
    return all(ATTACKER.fits(attacker) for attacker in attackers)


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected a list, got {short_repr(value)}")
    return value


def _check_body(body: Any) -> None:
    KILLMAIL.check(body, "")
    victim = body["victim"]
    VICTIM.check(victim, "victim")
    if "position" in victim:
        POSITION.check(victim["position"], "victim.position")
    for index, item in enumerate(_list(victim.get("items", []), "victim.items")):
        path = f"victim.items[{index}]"
        ITEM.check(item, path)
        for inner, content in enumerate(_list(item.get("items", []), f"{path}.items")):
            CONTENT.check(content, f"{path}.items[{inner}]")
    for index, attacker in enumerate(_list(body["attackers"], "attackers")):
        ATTACKER.check(attacker, f"attackers[{index}]")


def validate_body(body: Any) -> bool:
    """Raise `InvalidKillmail` unless `body` is an ESI killmail; True if it is plain.

    A plain body has nothing for the extras, so ingest skips looking for them.
    """
    # Almost every body is plain: check it in one quick pass, and walk it again with the
    # error messages only when that pass finds something.
    if _body_fits(body):
        return True
    killmail_id = body.get("killmail_id") if isinstance(body, dict) else None
    try:
        _check_body(body)
    except ValueError as exc:
        raise InvalidKillmail(killmail_id, str(exc)) from None
    return False
