"""Hypothesis strategies for ESI killmails covering every optional field and edge case.

Every object may carry fields unknown today (ESI adds fields over time) and every list may be
empty, as ESI's schema allows: ingest must keep all of it.
"""

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
# Values of fields unknown today: any JSON (NaN aside, which is no JSON and equals nothing).
unknown_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


def _with_unknown(objects: st.SearchStrategy[dict], known: set[str]) -> st.SearchStrategy[dict]:
    """Objects that may also hold a few fields unknown today."""
    names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
        lambda name: name not in known
    )
    unknown = st.dictionaries(names, unknown_values, max_size=2)
    return st.tuples(objects, unknown).map(lambda pair: {**pair[1], **pair[0]})


IDS = {"character_id", "corporation_id", "alliance_id", "faction_id"}
ITEM_KEYS = {"flag", "item_type_id", "singleton", "quantity_destroyed", "quantity_dropped", "items"}


def _item(nested: bool) -> st.SearchStrategy[dict]:
    optional = {"quantity_destroyed": counts, "quantity_dropped": counts}
    if nested:
        optional["items"] = st.lists(_item(nested=False), max_size=3)
    item = st.fixed_dictionaries(
        {"flag": st.integers(0, 200), "item_type_id": small_ids, "singleton": st.integers(0, 2)},
        optional=optional,
    )
    return _with_unknown(item, ITEM_KEYS)


positions = _with_unknown(
    st.fixed_dictionaries({"x": finite, "y": finite, "z": finite}), set("xyz")
)
_victims = st.fixed_dictionaries(
    {"damage_taken": counts, "ship_type_id": small_ids},
    optional={
        "character_id": ids,
        "corporation_id": ids,
        "alliance_id": ids,
        "faction_id": ids,
        "position": positions,
        "items": st.lists(_item(nested=True), max_size=6),
    },
)
victims = _with_unknown(_victims, {"damage_taken", "ship_type_id", "position", "items", *IDS})
_attackers = st.fixed_dictionaries(
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
attackers = _with_unknown(
    _attackers,
    {"damage_done", "final_blow", "security_status", "ship_type_id", "weapon_type_id", *IDS},
)
_zkbs = st.fixed_dictionaries(
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
# zkb as zKillboard may send it, values out of shape included: kept, never refused.
zkbs = st.tuples(
    _zkbs, st.dictionaries(st.sampled_from(["points", "npc", "hash", "labels"]), unknown_values)
).map(lambda pair: {**pair[0], **pair[1]})
_killmails = st.fixed_dictionaries(
    {
        "killmail_id": ids,
        "killmail_time": times,
        "solar_system_id": small_ids,
        "victim": victims,
        "attackers": st.lists(attackers, max_size=6),
    },
    optional={"moon_id": ids, "war_id": ids, "zkb": zkbs},
)
killmails = _with_unknown(
    _killmails,
    {
        "killmail_id",
        "killmail_time",
        "solar_system_id",
        "moon_id",
        "war_id",
        "victim",
        "attackers",
        # Keys that say how a record is wrapped (see killboard.ingest.split_record).
        "zkb",
        "killmail",
        "package",
    },
)
