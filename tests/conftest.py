"""Shared fixtures: test data files and the killmails in them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data"
UPSTREAM = DATA / "upstream"


def load(name: str) -> Any:
    """A JSON file of tests/data/upstream/."""
    return json.loads((UPSTREAM / name).read_text())


@pytest.fixture
def sample_bodies() -> list[dict[str, Any]]:
    """The real ESI bodies: a solo kill, a Sotiyo with 581 attackers, a titan with 982."""
    return [load(path.name) for path in sorted(UPSTREAM.glob("esi_killmail_*.json"))]
