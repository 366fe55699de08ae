"""Hypothesis strategies for ESI killmails covering every optional field and edge case."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

INT64 = 2**63 - 1

ids = st.integers(min_value=1, max_value=INT64)
small_ids = st.integers(min_value=1, max_value=2**31 - 1)
counts = st.integers(min_value=0, max_value=INT64)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
times = st.datetimes(min_value=datetime(2003, 5, 6), max_value=datetime(2026, 11, 28)).map(
    lambda moment: moment.replace(tzinfo=UTC, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
)
hashes = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)


def _item(nested: bool) -> st.SearchStrategy[dict]:
    optional = {"quantity_destroyed": counts, "quantity_dropped": counts}
    if nested:
        optional["items"] = st.lists(_item(nested=False), min_size=1, max_size=3)
    return st.fixed_dictionaries(
        {"flag": st.integers(0, 200), "item_type_id": small_ids, "singleton": st.integers(0, 2)},
        optional=optional,
    )


positions = st.fixed_dictionaries({"x": finite, "y": finite, "z": finite})
victims = st.fixed_dictionaries(
    {"damage_taken": counts, "ship_type_id": small_ids},
    optional={
        "character_id": ids,
        "corporation_id": ids,
        "alliance_id": ids,
        "faction_id": ids,
        "position": positions,
        "items": st.lists(_item(nested=True), min_size=1, max_size=6),
    },
)
attackers = st.fixed_dictionaries(
    {"damage_done": counts, "final_blow": st.booleans(), "security_status": finite},
    optional={
        "character_id": ids,
        "corporation_id": ids,
        "alliance_id": ids,
        "faction_id": ids,
        "ship_type_id": small_ids,
        "weapon_type_id": small_ids,
    },
)
zkbs = st.fixed_dictionaries(
    {"hash": hashes},
    optional={
        "locationID": ids,
        "fittedValue": finite,
        "droppedValue": finite,
        "destroyedValue": finite,
        "totalValue": finite,
        "totalDroppableValue": finite,
        "points": st.integers(-1000, 1000),
        "npc": st.booleans(),
        "solo": st.booleans(),
        "awox": st.booleans(),
        # PostgreSQL's JSON holds no NUL, so the validator rejects it (tested apart).
        "labels": st.lists(
            st.text(st.characters(exclude_characters="\x00"), max_size=12), max_size=4
        ),
        "href": st.just("https://esi.evetech.net/v1/killmails/1/x/"),
    },
)
killmails = st.fixed_dictionaries(
    {
        "killmail_id": ids,
        "killmail_time": times,
        "solar_system_id": small_ids,
        "victim": victims,
        "attackers": st.lists(attackers, min_size=1, max_size=6),
    },
    optional={"moon_id": ids, "war_id": ids, "zkb": zkbs},
)
