"""`BigInt`: the GraphQL scalar of every EVE id, quantity and damage.

GraphQL's `Int` is 32 bits: character ids above 2^31 and quantities of ammunition outgrow it,
and one such value in an answer turned the whole answer into `null`. `BigInt` holds what the
database's 64-bit columns hold. It is strict: a JSON integer, or (for JavaScript clients, whose
numbers lose digits past 2^53) a string of decimal digits; never a float (not even `1.0`), a
boolean or any other string, so a wrong value is refused rather than guessed at.
"""

from __future__ import annotations

import re
from typing import Any, NewType

import strawberry
from graphql import IntValueNode, StringValueNode, ValueNode, print_ast

BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1  # the database's bigint
_DIGITS = re.compile(r"-?[0-9]+")

BigInt = NewType("BigInt", int)


def _checked(number: int) -> int:
    if not BIGINT_MIN <= number <= BIGINT_MAX:
        raise ValueError(f"BigInt must be from {BIGINT_MIN} to {BIGINT_MAX}, got {number}")
    return number


def parse_value(value: Any) -> int:
    """A variable's value: an integer (not a bool) or a string of decimal digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _checked(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return _checked(int(value))
    raise ValueError(f"BigInt takes a whole number or a string of decimal digits, got {value!r}")


def parse_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> int:
    """A value written in the query: an integer literal or a string of decimal digits."""
    if isinstance(node, IntValueNode | StringValueNode):
        return parse_value(int(node.value) if isinstance(node, IntValueNode) else node.value)
    raise ValueError(
        f"BigInt takes a whole number or a string of decimal digits, got {print_ast(node)}"
    )


def serialize(value: Any) -> int:
    """An integer out, as a JSON number (EVE ids stay below 2^53, exact in JavaScript)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"BigInt cannot represent {value!r}")
    return _checked(value)


BIG_INT = strawberry.scalar(
    name="BigInt",
    serialize=serialize,
    parse_value=parse_value,
    parse_literal=parse_literal,
    description="A whole number of up to 64 bits (EVE ids, quantities, damage): a JSON "
    "integer, or a string of decimal digits; floats and booleans are refused.",
)
