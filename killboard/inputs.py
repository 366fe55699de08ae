"""What people type, parsed in one place: whole numbers, EVE ids and dates.

Every app reads user input (command arguments, admin forms and searches, GraphQL arguments)
through these parsers, so the same text is accepted or refused the same way everywhere:
- A whole number is ASCII digits only: `str.isdigit()` also takes '١٢٣' and '²', which
  `int()` would read as numbers nobody typed.
- An id (EVE's, a killmail's, a job's) is a whole number from 1 to the int64 maximum, the
  range of the bigint columns that hold them; anything beyond would overflow a query.
- A date is `YYYY-MM-DD` and real (no 2023-02-30).
Each refusal is an `InvalidInput` whose `str()` is one clear line naming what was wrong and
what was given; callers show it as it is.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

from killboard.shapes import INT64_MAX

DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")


class InvalidInput(ValueError):
    """Input that cannot be used; `str()` is one clear line for the user."""


def is_whole_number(text: str) -> bool:
    """Whether `text` is ASCII digits only (`str.isdigit()` also takes '١٢٣' and '²')."""
    return text.isascii() and text.isdigit()


def positive_id(text: str) -> int | None:
    """The id `text` spells (1 to the int64 maximum, ASCII digits, nothing around), else None."""
    if not is_whole_number(text) or not 0 < int(text) <= INT64_MAX:
        return None
    return int(text)


def parse_whole_number(value: Any, what: str) -> int:
    """A whole number from user input (spaces around allowed), or `InvalidInput`."""
    text = str(value).strip()
    if not is_whole_number(text):
        raise InvalidInput(f"{what} must be a whole number, got {value!r}")
    return int(text)


def parse_positive_id(value: Any, what: str) -> int:
    """An id from user input (spaces around allowed), or `InvalidInput`."""
    parsed = positive_id(str(value).strip())
    if parsed is None:
        raise InvalidInput(f"{what} must be a positive whole number, got {value!r}")
    return parsed


def parse_seconds(value: Any, what: str) -> float:
    """A positive, finite number of seconds from user input, or `InvalidInput`."""
    try:
        seconds = float(str(value).strip())
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidInput(f"{what} must be a positive number of seconds, got {value!r}")
    return seconds


def parse_date(value: Any, what: str) -> date | None:
    """A YYYY-MM-DD date from user input (None or empty: none), or `InvalidInput`."""
    if value in (None, ""):
        return None
    if isinstance(value, date):
        return value
    text = str(value).strip()
    if DATE_PATTERN.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise InvalidInput(f"{what} must be a real date like 2023-01-01, got {value!r}")
