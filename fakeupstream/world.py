"""A deterministic, lazily generated EVE Online world for the fake upstream.

The world registers which killmails exist and who of the *tracked* characters appears in each;
everything else (bodies, zKillboard metadata, names, details) is generated on demand from the
world seed and the id, so a character with 25,000 killmails costs a few dictionaries, not
25,000 bodies. Killmail ids encode their time (one id per second since EVE's launch), so ids
strictly increase with ``killmail_time`` across the whole world.

Pools of ship, weapon and item types, item flags, NPC corporations and solar systems are read
from the real samples in ``fakeupstream/data/``.

Every type has a group and every group a category (GROUPS, CATEGORIES); every solar system
has a constellation (one per region) in its region. Groups and categories have no name on
/universe/names/, as on ESI. ``add_corporations``, ``add_characters`` and ``add_types`` grow
the world for benchmarks without changing any killmail body.

Searches by character, corporation or alliance read the registry; searches by ship type, solar
system or region read an index of the generated bodies, built on first use and again after
killmails are added (every body is generated once for it: fine for test-sized worlds).

Why one long module: the world's generators (bodies, zkb, names, details) read the same
pools and per-id random streams; split apart they would pass those around.
"""

from __future__ import annotations

import bisect
import enum
import functools
import hashlib
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

SAMPLES_DIR = Path(__file__).resolve().parent / "data"
SAMPLE_KILLMAILS = (
    "esi_killmail_119455394.json",
    "esi_killmail_107220741.json",
    "esi_killmail_108794056.json",
)

EVE_EPOCH = datetime(2003, 5, 6, tzinfo=UTC)
DEFAULT_NEWEST = datetime(2026, 11, 1, tzinfo=UTC)
DEFAULT_DAYS = 365 * 3
LABELS_SINCE = datetime(2024, 1, 1, tzinfo=UTC)
TOTAL_DROPPABLE_SINCE = datetime(2026, 1, 1, tzinfo=UTC)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

BODY_CACHE_SIZE = 8192  # bodies kept as JSON text; a 200-item page touches 200 of them

# Upwell structures: victims without a character, and the occasional structure attacker.
STRUCTURE_TYPES = (35825, 35826, 35827, 35832, 35833, 35834, 35835, 35836)
CONTAINER_TYPES = (3465, 3466, 3467, 11488, 11489)
NPC_SHIP_TYPES = (16817, 17634, 23324, 23336, 31853, 3879)
CAPSULE_TYPE = 670
FACTIONS = {
    500001: "Caldari State",
    500002: "Minmatar Republic",
    500003: "Amarr Empire",
    500004: "Gallente Federation",
    500010: "Guristas Pirates",
    500011: "Angel Cartel",
    500012: "Blood Raider Covenant",
    500019: "Sansha's Nation",
    500020: "Serpentis",
}
MILITIA_FACTIONS = (500001, 500002, 500003, 500004)
PIRATE_FACTIONS = (500010, 500011, 500012, 500019, 500020)
CONCORD_CORPORATION = 1000125
# Systems from the samples plus a few well-known ones, with a security status for zkb labels.
SOLAR_SYSTEMS = {
    30000142: 0.95,
    30000144: 0.95,
    30002187: 1.0,
    30002053: 0.5,
    30003442: 0.7,
    30002813: 0.3,
    30002537: 0.4,
    30045349: 0.2,
    30004859: -0.3,
    30001198: -0.2,
    30004759: -0.4,
    30000848: -0.6,
    31000005: -1.0,
    31002238: -1.0,
}
# The region of every system above: real for the named ones, plausible for the others.
REGIONS = {
    30000142: 10000002,  # Jita, The Forge
    30000144: 10000002,  # Perimeter, The Forge
    30002187: 10000043,  # Amarr, Domain
    30002053: 10000042,  # Hek, Metropolis
    30003442: 10000064,  # Essence
    30002813: 10000033,  # Tama, The Citadel
    30002537: 10000030,  # Amamake, Heimatar
    30045349: 10000069,  # Black Rise
    30004859: 10000050,  # Querious
    30001198: 10000012,  # Curse
    30004759: 10000060,  # 1DQ1-A, Delve
    30000848: 10000006,  # Wicked Creek
    31000005: 11000031,  # Thera
    31002238: 11000030,
}


def constellation_of(system_id: int) -> int:
    """Return the constellation of a system of SOLAR_SYSTEMS: one per region here."""
    region_id = REGIONS[system_id]
    if region_id >= 11_000_000:  # wormhole regions
        return 20_005_000 + (region_id - 11_000_000) * 10
    return 20_000_000 + (region_id - 10_000_000) * 10


CONSTELLATIONS = {constellation_of(s): REGIONS[s] for s in SOLAR_SYSTEMS}  # id -> region id
# date_founded of a corporation or alliance with no tracked member that has killmails.
FOUNDED_WITHOUT_KILLMAILS = "2010-01-01T12:00:00Z"
FOUNDED_DAYS_BEFORE_OLDEST = 30  # a founding date this many days before the oldest killmail
SHIP_GROUPS = (25, 26, 27, 28, 30, 31, 237, 358, 419, 420, 463, 485, 513, 540, 541, 547, 659, 833)
MODULE_GROUPS = (38, 40, 41, 46, 53, 55, 60, 62, 63, 74, 77, 83, 85, 86, 87, 212, 1308)
STRUCTURE_GROUP = 1657
CONTAINER_GROUP = 448
NPC_SHIP_GROUP = 1665
# /universe/categories/ of the groups above: id -> (name, published).
CATEGORIES = {
    2: ("Celestial", True),
    6: ("Ship", True),
    7: ("Module", True),
    11: ("Entity", False),
    65: ("Structure", True),
}
# /universe/groups/: id -> (name, category id); EVE's names where known, plausible otherwise.
GROUPS = {
    25: ("Frigate", 6),
    26: ("Cruiser", 6),
    27: ("Battleship", 6),
    28: ("Hauler", 6),
    30: ("Titan", 6),
    31: ("Shuttle", 6),
    237: ("Corvette", 6),
    358: ("Heavy Assault Cruiser", 6),
    419: ("Combat Battlecruiser", 6),
    420: ("Destroyer", 6),
    463: ("Mining Barge", 6),
    485: ("Dreadnought", 6),
    513: ("Freighter", 6),
    540: ("Command Ship", 6),
    541: ("Interdictor", 6),
    547: ("Carrier", 6),
    659: ("Supercarrier", 6),
    833: ("Force Recon Ship", 6),
    38: ("Shield Extender", 7),
    40: ("Shield Booster", 7),
    41: ("Remote Shield Booster", 7),
    46: ("Propulsion Module", 7),
    53: ("Energy Weapon", 7),
    55: ("Projectile Weapon", 7),
    60: ("Damage Control", 7),
    62: ("Armor Repair Unit", 7),
    63: ("Hull Repair Unit", 7),
    74: ("Hybrid Weapon", 7),
    77: ("Shield Hardener", 7),
    83: ("Projectile Ammo", 7),
    85: ("Hybrid Charge", 7),
    86: ("Frequency Crystal", 7),
    87: ("Capacitor Booster Charge", 7),
    212: ("Sensor Booster", 7),
    1308: ("Rig Armor", 7),
    STRUCTURE_GROUP: ("Citadel", 65),
    CONTAINER_GROUP: ("Audit Log Secure Container", 2),
    NPC_SHIP_GROUP: ("Pirate NPC Ship", 11),
}
UNPUBLISHED_GROUPS = frozenset({NPC_SHIP_GROUP})
WORMHOLE_SYSTEMS_FROM = 31_000_000  # J-space ids; this world's wormhole systems are starless
FILLER_FACTION_SHARE = 0.04  # characters enlisted in a militia
# Ids of what add_corporations, add_characters and add_types create, clear of every other
# range of the world (filler corporations sit below, tracked ones from 98_900_001).
ADDED_CORPORATIONS = range(98_800_001, 98_900_000)
ADDED_CHARACTERS = range(2_124_000_001, 2_140_000_000)
ADDED_TYPES = range(200_001, 500_000)


class Auto(enum.Enum):
    """Sentinel type: let the world choose a value."""

    AUTO = "auto"


AUTO = Auto.AUTO


class Participation(NamedTuple):
    """Which tracked characters appear in one killmail, and which of them is the victim."""

    victim: int | None
    attackers: tuple[int, ...]


@dataclass(frozen=True)
class Character:
    """A character's affiliation, as bodies and /characters/{id}/ show it."""

    corporation_id: int
    alliance_id: int | None


@dataclass(frozen=True)
class Corporation:
    """A corporation's alliance and CEO; NPC corporations have no alliance."""

    alliance_id: int | None
    ceo_id: int
    npc: bool = False


class BodyIndex(NamedTuple):
    """Killmail ids by what their generated bodies show: ships flown and the system."""

    victim_ships: dict[int, set[int]]
    attacker_ships: dict[int, set[int]]
    systems: dict[int, set[int]]


class SamplePools(NamedTuple):
    """Ids and shapes taken from the real sample killmails."""

    ship_types: tuple[int, ...]
    weapon_types: tuple[int, ...]
    items: tuple[tuple[int, int], ...]  # (item_type_id, flag) pairs as they occur
    npc_corporations: tuple[int, ...]
    victim_ships: tuple[int, ...]


@functools.cache
def sample_pools() -> SamplePools:
    """Read the type, flag and NPC corporation pools from the real sample killmails."""
    ships: list[int] = []
    weapons: list[int] = []
    items: list[tuple[int, int]] = []
    npc_corps: set[int] = set()
    victims: list[int] = []
    for name in SAMPLE_KILLMAILS:
        body = json.loads((SAMPLES_DIR / name).read_text())
        victims.append(body["victim"]["ship_type_id"])
        for attacker in body["attackers"]:
            ships.append(attacker.get("ship_type_id", 0))
            weapons.append(attacker.get("weapon_type_id", 0))
            corporation_id = attacker.get("corporation_id", 0)
            if 1_000_000 <= corporation_id < 2_000_000:
                npc_corps.add(corporation_id)
        items.extend((item["item_type_id"], item["flag"]) for item in body["victim"]["items"])
    ship_types = tuple(sorted({s for s in ships if s} - set(STRUCTURE_TYPES)))
    return SamplePools(
        ship_types=ship_types,
        weapon_types=tuple(sorted({w for w in weapons if w})),
        items=tuple(items),
        npc_corporations=tuple(sorted(npc_corps)),
        victim_ships=tuple(sorted(set(ship_types) | {v for v in victims if v < 35000})),
    )


def killmail_time(killmail_id: int) -> datetime:
    """Return the time a killmail id stands for (ids count seconds since EVE's launch)."""
    return EVE_EPOCH + timedelta(seconds=killmail_id - 1)


def killmail_id_at(moment: datetime) -> int:
    """Return the killmail id that stands for a moment (the inverse of killmail_time)."""
    return int((moment - EVE_EPOCH).total_seconds()) + 1


class World:
    """Killmails of tracked characters plus every entity their bodies reference."""

    def __init__(self, seed: int = 0, novel_share: float = 0.0) -> None:
        """Create an empty world; the same seed and calls always give the same data.

        `novel_share` of the killmails carry what ESI's schema allows but today's bodies
        rarely show: fields ESI may add (`killmarks`, `item_id`, ...) and empty lists.
        """
        self.seed = seed
        self.novel_share = novel_share
        # Killmail id -> the id whose body ESI wrongly answers with, as a broken cache might.
        self.misfiled: dict[int, int] = {}
        # Killmail id -> a body served instead of the generated one (zkb stays generated).
        self.served_bodies: dict[int, dict[str, Any]] = {}
        self.unresolvable_ids: set[int] = set()
        # UTC days whose R2Z2 raw dump is missing (404), as days before 2026-07 are.
        self.days_without_raw: set[date] = set()
        self._killmails: dict[int, Participation] = {}
        self._version = 0  # counts registrations, so caches built meanwhile are not kept
        self._ascending: list[int] | None = None
        self._index: BodyIndex | None = None
        self._index_lock = threading.Lock()
        self._by_character: dict[int, list[int]] = {}
        self._sorted: dict[int, list[int]] = {}
        self._tracked: dict[int, Character] = {}
        self._characters: dict[int, Character] = {}
        self._corporations: dict[int, Corporation] = {}
        self._alliances: dict[int, int] = {}  # alliance id -> executor corporation id
        self._types: dict[int, int] = {}  # type id -> group id
        self._filler_characters: list[int] = []
        self._filler_alliances: list[int] = []
        self._player_corporations: list[int] = []
        self._added_corporations: list[int] = []
        self._added_characters = 0
        self._added_types = 0
        self._next_corporation = 98_900_000
        self._next_alliance = 99_100_000
        self._build_pools()
        self._body_json = functools.lru_cache(maxsize=BODY_CACHE_SIZE)(self._generate_body_json)
        self._zkb_json = functools.lru_cache(maxsize=BODY_CACHE_SIZE)(self._generate_zkb_json)

    # -- registering killmails ---------------------------------------------------------------

    def add_character(
        self,
        character_id: int,
        killmails: int,
        newest: datetime = DEFAULT_NEWEST,
        days: int = DEFAULT_DAYS,
        corporation_id: int | None = None,
        alliance_id: int | Auto | None = AUTO,
    ) -> list[int]:
        """Create killmails for a character (victim in about 1 of 4); return their ids.

        Without a corporation the character gets a corporation of its own (and, unless
        alliance_id is None, an alliance of its own), so corporation and alliance filters
        on zKillboard see exactly this character's killmails.
        """
        self._track(character_id, corporation_id, alliance_id)
        rng = random.Random(f"{self.seed}:add:{character_id}:{len(self._killmails)}")
        ids = []
        for moment in self._spread(rng, killmails, newest, days):
            victim = character_id if rng.random() < 0.25 else None
            attackers = () if victim else (character_id,)
            ids.append(self._register(moment, Participation(victim, attackers)))
        return ids

    def add_shared(
        self,
        character_ids: list[int],
        killmails: int,
        newest: datetime = DEFAULT_NEWEST,
        days: int = DEFAULT_DAYS,
    ) -> list[int]:
        """Create killmails in which all the given characters appear; return their ids."""
        for character_id in character_ids:
            if character_id not in self._tracked:
                self._track(character_id, None, AUTO)
        rng = random.Random(f"{self.seed}:shared:{character_ids}:{len(self._killmails)}")
        ids = []
        for moment in self._spread(rng, killmails, newest, days):
            victim = rng.choice(character_ids) if rng.random() < 0.25 else None
            attackers = tuple(c for c in character_ids if c != victim)
            ids.append(self._register(moment, Participation(victim, attackers)))
        return ids

    def add_feed_killmail(self, moment: datetime) -> int:
        """Register a killmail no tracked character appears in (R2Z2's live feed's); return its id.

        The id stands for `moment`, or the nearest free earlier second.
        """
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return self._register(moment.replace(microsecond=0), Participation(None, ()))

    def add_unresolvable(self, ids: set[int] | list[int]) -> None:
        """Make ids fail /universe/names/ and their detail routes, like brand-new ids do."""
        self.unresolvable_ids.update(ids)

    def add_corporations(self, count: int) -> list[int]:
        """Create count player corporations no killmail shows; return their ids.

        Each has a CEO pilot of its own (resolvable, with details) and about half of them are
        in an existing alliance. Killmail bodies never change: they draw from other pools.
        """
        if len(self._added_corporations) + count > len(ADDED_CORPORATIONS):
            raise ValueError(f"at most {len(ADDED_CORPORATIONS)} corporations can be added")
        rng = random.Random(f"{self.seed}:corporations:{len(self._added_corporations)}")
        ids = []
        for _ in range(count):
            corporation_id = ADDED_CORPORATIONS[len(self._added_corporations)]
            alliance_id = rng.choice(self._filler_alliances) if rng.random() < 0.5 else None
            ceo_id = self._next_added_character()
            self._corporations[corporation_id] = Corporation(alliance_id, ceo_id)
            self._characters[ceo_id] = Character(corporation_id, alliance_id)
            self._added_corporations.append(corporation_id)
            ids.append(corporation_id)
        return ids

    def add_characters(self, count: int) -> list[int]:
        """Create count pilots in existing player corporations, no killmail shows; return ids."""
        rng = random.Random(f"{self.seed}:characters:{self._added_characters}")
        corporations = self._player_corporations + self._added_corporations
        ids = []
        for _ in range(count):
            corporation_id = rng.choice(corporations)
            character_id = self._next_added_character()
            alliance_id = self._corporations[corporation_id].alliance_id
            self._characters[character_id] = Character(corporation_id, alliance_id)
            ids.append(character_id)
        return ids

    def add_types(self, count: int) -> list[int]:
        """Create count item types spread over GROUPS, no killmail shows; return their ids."""
        if self._added_types + count > len(ADDED_TYPES):
            raise ValueError(f"at most {len(ADDED_TYPES)} types can be added")
        rng = random.Random(f"{self.seed}:types:{self._added_types}")
        groups = sorted(GROUPS)
        ids = []
        for _ in range(count):
            type_id = ADDED_TYPES[self._added_types]
            self._added_types += 1
            self._types[type_id] = rng.choice(groups)
            ids.append(type_id)
        return ids

    def _next_added_character(self) -> int:
        if self._added_characters >= len(ADDED_CHARACTERS):
            raise ValueError(f"at most {len(ADDED_CHARACTERS)} characters can be added")
        character_id = ADDED_CHARACTERS[self._added_characters]
        self._added_characters += 1
        return character_id

    # -- reading killmails -------------------------------------------------------------------

    def killmail_ids(self, character_id: int) -> list[int]:
        """Return the ids of a tracked character's killmails, newest first."""
        return list(self._sorted_ids(character_id))

    def has_killmail(self, killmail_id: int) -> bool:
        """Tell whether a killmail exists in this world."""
        return killmail_id in self._killmails

    def all_killmail_ids(self) -> list[int]:
        """Return every killmail id in the world, newest first."""
        return sorted(self._killmails, reverse=True)

    def killmail_ids_on(self, day: date) -> list[int]:
        """Return the ids of the killmails of one UTC day, ascending."""
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        ids = self._ascending_ids()
        low = bisect.bisect_left(ids, killmail_id_at(start))
        high = bisect.bisect_left(ids, killmail_id_at(start + timedelta(days=1)))
        return ids[low:high]

    def day_counts(self) -> dict[date, int]:
        """Return how many killmails each UTC day holds, for days with any, ascending."""
        counts = Counter(killmail_time(i).date() for i in self._ascending_ids())
        return dict(sorted(counts.items()))

    def participation(self, killmail_id: int) -> Participation:
        """Return which tracked characters appear in a killmail (KeyError if unknown)."""
        return self._killmails[killmail_id]

    def tracked_character(self, character_id: int) -> Character | None:
        """Return a tracked character's affiliation, or None if it is not tracked."""
        return self._tracked.get(character_id)

    def tracked_characters(self) -> dict[int, Character]:
        """Return every tracked character with its affiliation."""
        return dict(self._tracked)

    def killmail_hash(self, killmail_id: int) -> str:
        """Return the 40-hex zKillboard/ESI hash of a killmail (no body generated)."""
        return hashlib.sha1(f"{self.seed}:{killmail_id}".encode()).hexdigest()

    def body(self, killmail_id: int) -> dict[str, Any]:
        """Return a fresh copy of the ESI body of a killmail (KeyError if unknown)."""
        return json.loads(self.body_json(killmail_id))

    def body_json(self, killmail_id: int) -> str:
        """Return the ESI body of a killmail as the compact JSON text ESI would send."""
        if killmail_id not in self._killmails:
            raise KeyError(killmail_id)
        if killmail_id in self.served_bodies:
            return json.dumps(self.served_bodies[killmail_id], separators=(",", ":"))
        return self._body_json(killmail_id)

    def zkb(self, killmail_id: int) -> dict[str, Any]:
        """Return a fresh copy of the zkb object of a killmail (KeyError if unknown)."""
        return json.loads(self.zkb_json(killmail_id))

    def zkb_json(self, killmail_id: int) -> str:
        """Return the zkb object of a killmail as compact JSON text."""
        if killmail_id not in self._killmails:
            raise KeyError(killmail_id)
        return self._zkb_json(killmail_id)

    def search(
        self,
        *,
        character_ids: tuple[int, ...] = (),
        corporation_ids: tuple[int, ...] = (),
        alliance_ids: tuple[int, ...] = (),
        ship_type_ids: tuple[int, ...] = (),
        solar_system_ids: tuple[int, ...] = (),
        region_ids: tuple[int, ...] = (),
        side: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[int]:
        """Return killmail ids matching zKillboard-style filters, newest first.

        A killmail matches when it matches every given filter, each on its own:
        - character, corporation, alliance: some tracked participant matches it (for side
          "losses": the victim; for "kills": an attacker). Only tracked characters are
          indexed, which is all the filters of this fake need.
        - ship type: the victim flew it ("losses"), an attacker did ("kills"), or either.
        - solar system, region: the killmail happened there; the side restricts nothing.
        No filter at all matches nothing.
        """
        wanted = [(character_ids, 0), (corporation_ids, 1), (alliance_ids, 2)]
        wanted = [(set(ids), position) for ids, position in wanted if ids]
        by_body = self._body_matches(ship_type_ids, solar_system_ids, region_ids, side)
        if not wanted and not by_body:
            return []
        candidates = self._candidates(wanted) if wanted else min(by_body, key=len)
        low = killmail_id_at(start) if start else 0
        high = killmail_id_at(end) if end else None
        found = []
        for killmail_id in candidates:
            if killmail_id < low or (high is not None and killmail_id >= high):
                continue
            if not all(killmail_id in ids for ids in by_body):
                continue
            participation = self._killmails[killmail_id]
            if not wanted or self._participation_matches(participation, wanted, side):
                found.append(killmail_id)
        found.sort(reverse=True)
        return found

    def body_index(self) -> BodyIndex:
        """Return the index of the generated bodies (built now if killmails were added).

        Bodies replaced through `served_bodies` are indexed as generated.
        """
        with self._index_lock:
            index = self._index
            if index is None:
                # The live feed may register killmails from another thread meanwhile: index
                # a snapshot, and keep it only if nothing was added during the build.
                version = self._version
                index = BodyIndex({}, {}, {})
                for killmail_id in list(self._killmails):
                    _index_body(index, _BodyBuilder(self, killmail_id).build())
                if version == self._version:
                    self._index = index
            return index

    def referenced_entities(self) -> dict[str, set[int]]:
        """Return, by /universe/names/ category, every id that any killmail body references.

        Generates every body, so it is meant for tests on small worlds.
        """
        found: dict[str, set[int]] = {
            "character": set(),
            "corporation": set(),
            "alliance": set(),
            "faction": set(),
            "inventory_type": set(),
            "solar_system": set(),
        }
        for killmail_id in list(self._killmails):
            _collect_references(self.body(killmail_id), found)
        return found

    # -- entities ----------------------------------------------------------------------------

    def category(self, entity_id: int) -> str | None:
        """Return the /universe/names/ category of an id, or None if the world lacks it."""
        if entity_id in self._characters:
            return "character"
        if entity_id in self._corporations:
            return "corporation"
        if entity_id in self._alliances:
            return "alliance"
        if entity_id in self._types:
            return "inventory_type"
        if entity_id in SOLAR_SYSTEMS:
            return "solar_system"
        if entity_id in FACTIONS:
            return "faction"
        if entity_id in CONSTELLATIONS:
            return "constellation"
        if entity_id in CONSTELLATIONS.values():
            return "region"
        return None

    def is_resolvable(self, entity_id: int) -> bool:
        """Tell whether /universe/names/ and detail routes can answer for an id."""
        return entity_id not in self.unresolvable_ids and self.category(entity_id) is not None

    def name(self, entity_id: int) -> str:
        """Return the deterministic name of a known entity."""
        category = self.category(entity_id)
        if category == "faction":
            return FACTIONS[entity_id]
        prefix = {
            "character": "Pilot",
            "corporation": "Corporation",
            "alliance": "Alliance",
            "inventory_type": "Type",
            "solar_system": "System",
            "constellation": "Constellation",
            "region": "Region",
        }
        if category is None:
            raise KeyError(entity_id)
        return f"{prefix[category]} {entity_id}"

    def character_details(self, character_id: int) -> dict[str, Any] | None:
        """Return the /characters/{id}/ body (without the id), or None if unknown."""
        character = self._characters.get(character_id)
        if character is None or not self.is_resolvable(character_id):
            return None
        rng = random.Random(f"{self.seed}:character:{character_id}")
        details: dict[str, Any] = {
            "ancestry_id": rng.randint(1, 42),
            "birthday": _random_date(rng, 2003, 2025),
            "bloodline_id": rng.randint(1, 14),
            "corporation_id": character.corporation_id,
            "description": "",
            "gender": rng.choice(("male", "female")),
            "name": self.name(character_id),
            "race_id": rng.choice((1, 2, 4, 8)),
            "security_status": round(rng.uniform(-10.0, 5.0), 2),
        }
        details.update(self.affiliation(character_id) or {})
        return details

    def affiliation(self, character_id: int) -> dict[str, int] | None:
        """Return a character's /characters/affiliation/ entry (without the id), or None.

        Keys: corporation_id, and alliance_id and faction_id only when it has one.
        """
        character = self._characters.get(character_id)
        if character is None or not self.is_resolvable(character_id):
            return None
        affiliation = {"corporation_id": character.corporation_id}
        if character.alliance_id:
            affiliation["alliance_id"] = character.alliance_id
        rng = random.Random(f"{self.seed}:faction:{character_id}")
        if rng.random() < FILLER_FACTION_SHARE:
            affiliation["faction_id"] = rng.choice(MILITIA_FACTIONS)
        return affiliation

    def corporation_details(self, corporation_id: int) -> dict[str, Any] | None:
        """Return the /corporations/{id}/ body (without the id), or None if unknown.

        `date_founded` is never later than the oldest killmail of a tracked member, so a walk
        that starts at the founding date misses none.
        """
        corporation = self._corporations.get(corporation_id)
        if corporation is None or not self.is_resolvable(corporation_id):
            return None
        rng = random.Random(f"{self.seed}:corporation:{corporation_id}")
        details: dict[str, Any] = {
            "ceo_id": corporation.ceo_id,
            "creator_id": corporation.ceo_id,
            "date_founded": self._founded(1, corporation_id),
            "description": "",
            "member_count": rng.randint(1, 4000),
            "name": self.name(corporation_id),
            "tax_rate": round(rng.choice((0.0, 0.05, 0.1, 0.11)), 2),
            "ticker": f"C{corporation_id % 10000:04d}",
        }
        if corporation.alliance_id:
            details["alliance_id"] = corporation.alliance_id
        return details

    def alliance_details(self, alliance_id: int) -> dict[str, Any] | None:
        """Return the /alliances/{id}/ body (without the id), or None if unknown.

        `date_founded` is never later than the oldest killmail of a tracked member.
        """
        executor = self._alliances.get(alliance_id)
        if executor is None or not self.is_resolvable(alliance_id):
            return None
        return {
            "creator_corporation_id": executor,
            "creator_id": self._corporations[executor].ceo_id,
            "date_founded": self._founded(2, alliance_id),
            "executor_corporation_id": executor,
            "name": self.name(alliance_id),
            "ticker": f"A{alliance_id % 10000:04d}",
        }

    def type_details(self, type_id: int) -> dict[str, Any] | None:
        """Return the /universe/types/{id}/ body (without the id), or None if unknown."""
        group_id = self._types.get(type_id)
        if group_id is None or not self.is_resolvable(type_id):
            return None
        return {
            "description": "",
            "group_id": group_id,
            "name": self.name(type_id),
            "published": True,
        }

    def group_details(self, group_id: int) -> dict[str, Any] | None:
        """Return the /universe/groups/{id}/ body, or None if unknown."""
        if group_id not in GROUPS:
            return None
        name, category_id = GROUPS[group_id]
        return {
            "category_id": category_id,
            "group_id": group_id,
            "name": name,
            "published": group_id not in UNPUBLISHED_GROUPS,
            "types": sorted(t for t, g in self._types.items() if g == group_id),
        }

    def category_details(self, category_id: int) -> dict[str, Any] | None:
        """Return the /universe/categories/{id}/ body, or None if unknown."""
        if category_id not in CATEGORIES:
            return None
        name, published = CATEGORIES[category_id]
        return {
            "category_id": category_id,
            "groups": sorted(g for g, (_, c) in GROUPS.items() if c == category_id),
            "name": name,
            "published": published,
        }

    def system_details(self, system_id: int) -> dict[str, Any] | None:
        """Return the /universe/systems/{id}/ body, or None if unknown."""
        if system_id not in SOLAR_SYSTEMS or not self.is_resolvable(system_id):
            return None
        details: dict[str, Any] = {
            "constellation_id": constellation_of(system_id),
            "name": self.name(system_id),
            "position": self._position(system_id),
            "security_status": SOLAR_SYSTEMS[system_id],
            "system_id": system_id,
        }
        if system_id < WORMHOLE_SYSTEMS_FROM:
            details["star_id"] = 40_000_000 + (system_id % 100_000) * 10
        return details

    def constellation_details(self, constellation_id: int) -> dict[str, Any] | None:
        """Return the /universe/constellations/{id}/ body, or None if unknown."""
        if constellation_id not in CONSTELLATIONS or not self.is_resolvable(constellation_id):
            return None
        systems = sorted(s for s in SOLAR_SYSTEMS if constellation_of(s) == constellation_id)
        positions = [self._position(s) for s in systems]
        return {
            "constellation_id": constellation_id,
            "name": self.name(constellation_id),
            "position": {
                axis: round(sum(p[axis] for p in positions) / len(positions), 1) for axis in "xyz"
            },
            "region_id": CONSTELLATIONS[constellation_id],
            "systems": systems,
        }

    def region_details(self, region_id: int) -> dict[str, Any] | None:
        """Return the /universe/regions/{id}/ body, or None if unknown."""
        if self.category(region_id) != "region" or not self.is_resolvable(region_id):
            return None
        return {
            "constellations": sorted(c for c, r in CONSTELLATIONS.items() if r == region_id),
            "description": "",
            "name": self.name(region_id),
            "region_id": region_id,
        }

    def _position(self, system_id: int) -> dict[str, float]:
        rng = random.Random(f"{self.seed}:position:{system_id}")
        return {axis: round(rng.uniform(-5e17, 5e17), 1) for axis in "xyz"}

    def _founded(self, position: int, entity_id: int) -> str:
        """Return a founding time before every killmail of the entity's tracked members.

        `position` is 1 for a corporation, 2 for an alliance (as in an affiliation tuple).
        """
        oldest: int | None = None
        for character_id, character in self._tracked.items():
            affiliation = (character_id, character.corporation_id, character.alliance_id)
            ids = self._sorted_ids(character_id) if affiliation[position] == entity_id else []
            if ids and (oldest is None or ids[-1] < oldest):
                oldest = ids[-1]
        if oldest is None:
            return FOUNDED_WITHOUT_KILLMAILS
        founded = killmail_time(oldest) - timedelta(days=FOUNDED_DAYS_BEFORE_OLDEST)
        return founded.replace(hour=12, minute=0, second=0).strftime(TIME_FORMAT)

    # -- internals: registration -------------------------------------------------------------

    def _build_pools(self) -> None:
        """Create the filler alliances, corporations, characters and the type table."""
        rng = random.Random(f"{self.seed}:pools")
        pools = sample_pools()
        alliance_ids = rng.sample(range(99_000_000, 99_014_000), 120)
        self._filler_alliances = alliance_ids
        corporation_ids = [c for c in rng.sample(range(98_000_000, 98_800_000), 600)]
        for index, corporation_id in enumerate(corporation_ids):
            if index < len(alliance_ids):
                alliance_id: int | None = alliance_ids[index]
                self._alliances[alliance_ids[index]] = corporation_id
            else:
                alliance_id = rng.choice(alliance_ids) if rng.random() < 0.6 else None
            self._corporations[corporation_id] = Corporation(alliance_id, ceo_id=0)
        self._player_corporations = corporation_ids
        for npc_corporation in (*pools.npc_corporations, CONCORD_CORPORATION):
            self._corporations[npc_corporation] = Corporation(None, ceo_id=0, npc=True)
        npc_corporations = list(pools.npc_corporations)
        character_ids = rng.sample(range(90_000_000, 97_999_999), 2000)
        character_ids += rng.sample(range(2_112_000_000, 2_124_000_000), 2000)
        for character_id in character_ids:
            if rng.random() < 0.15:
                corporation_id = rng.choice(npc_corporations)
            else:
                corporation_id = rng.choice(corporation_ids)
            self._add_filler_character(character_id, corporation_id)
        self._appoint_ceos()
        self._register_types(rng, pools)

    def _add_filler_character(self, character_id: int, corporation_id: int) -> None:
        alliance_id = self._corporations[corporation_id].alliance_id
        self._characters[character_id] = Character(corporation_id, alliance_id)
        self._filler_characters.append(character_id)

    def _appoint_ceos(self) -> None:
        """Make a member of every corporation its CEO, creating one where none exists."""
        members: dict[int, int] = {}
        for character_id, character in self._characters.items():
            members.setdefault(character.corporation_id, character_id)
        next_npc_ceo = 3_004_000
        for corporation_id, corporation in list(self._corporations.items()):
            ceo_id = members.get(corporation_id)
            if ceo_id is None or corporation.npc:
                # NPC corporations are run by NPC characters, which are never killmail pilots.
                ceo_id = next_npc_ceo
                next_npc_ceo += 1
                self._characters[ceo_id] = Character(corporation_id, corporation.alliance_id)
            self._corporations[corporation_id] = Corporation(
                corporation.alliance_id, ceo_id, corporation.npc
            )

    def _register_types(self, rng: random.Random, pools: SamplePools) -> None:
        for type_id in (*pools.ship_types, *pools.victim_ships, CAPSULE_TYPE):
            self._types[type_id] = rng.choice(SHIP_GROUPS)
        for type_id in (*pools.weapon_types, *(t for t, _ in pools.items)):
            self._types.setdefault(type_id, rng.choice(MODULE_GROUPS))
        for type_id in STRUCTURE_TYPES:
            self._types[type_id] = STRUCTURE_GROUP
        for type_id in CONTAINER_TYPES:
            self._types[type_id] = CONTAINER_GROUP
        for type_id in NPC_SHIP_TYPES:
            self._types[type_id] = NPC_SHIP_GROUP

    def _track(
        self, character_id: int, corporation_id: int | None, alliance_id: int | Auto | None
    ) -> None:
        """Register a tracked character, creating its corporation and alliance if new."""
        if character_id in self._tracked:
            return
        if corporation_id is None:
            corporation_id = self._new_id("corporation")
        corporation = self._corporations.get(corporation_id)
        if corporation is None:
            if alliance_id is AUTO:
                alliance_id = self._new_id("alliance")
            if alliance_id is not None and alliance_id not in self._alliances:
                self._alliances[alliance_id] = corporation_id
            corporation = Corporation(alliance_id, ceo_id=character_id)
            self._corporations[corporation_id] = corporation
        elif alliance_id is not AUTO and alliance_id != corporation.alliance_id:
            raise ValueError(
                f"corporation {corporation_id} is in alliance {corporation.alliance_id}, "
                f"not {alliance_id}"
            )
        character = Character(corporation_id, corporation.alliance_id)
        self._characters[character_id] = character
        self._tracked[character_id] = character

    def _new_id(self, kind: str) -> int:
        if kind == "corporation":
            self._next_corporation += 1
            return self._next_corporation
        self._next_alliance += 1
        return self._next_alliance

    def _spread(
        self, rng: random.Random, count: int, newest: datetime, days: int
    ) -> list[datetime]:
        """Return count distinct whole-second moments in the days up to newest, oldest first."""
        if newest.tzinfo is None:
            newest = newest.replace(tzinfo=UTC)
        span = max(days * 86400, count)
        newest = newest.replace(microsecond=0)
        offsets = sorted(rng.sample(range(span), count), reverse=True)
        return [newest - timedelta(seconds=offset) for offset in offsets]

    def _register(self, moment: datetime, participation: Participation) -> int:
        killmail_id = killmail_id_at(moment)
        # Two characters' killmails may land on the same second; the id is the time, so
        # move to the nearest free earlier second.
        while killmail_id in self._killmails:
            killmail_id -= 1
        self._killmails[killmail_id] = participation
        self._version += 1
        self._ascending = None
        self._index = None
        for character_id in (*participation.attackers, participation.victim):
            if character_id is not None:
                self._by_character.setdefault(character_id, []).append(killmail_id)
                self._sorted.pop(character_id, None)
        return killmail_id

    def _ascending_ids(self) -> list[int]:
        ids = self._ascending
        if ids is None:
            version = self._version
            ids = sorted(self._killmails)
            if version == self._version:
                self._ascending = ids
        return ids

    def _body_matches(
        self,
        ship_type_ids: tuple[int, ...],
        solar_system_ids: tuple[int, ...],
        region_ids: tuple[int, ...],
        side: str | None,
    ) -> list[set[int]]:
        """Return, per given body filter, the killmails that match it (read-only sets)."""
        if not (ship_type_ids or solar_system_ids or region_ids):
            return []
        index = self.body_index()
        matches: list[set[int]] = []
        if ship_type_ids:
            ships: set[int] = set()
            for type_id in ship_type_ids:
                if side != "kills":
                    ships |= index.victim_ships.get(type_id, set())
                if side != "losses":
                    ships |= index.attacker_ships.get(type_id, set())
            matches.append(ships)
        systems = set(solar_system_ids)
        if systems:
            matches.append(set().union(*(index.systems.get(s, ()) for s in systems)))
        if region_ids:
            in_regions = [s for s, region in REGIONS.items() if region in region_ids]
            matches.append(set().union(*(index.systems.get(s, ()) for s in in_regions)))
        return matches

    def _sorted_ids(self, character_id: int) -> list[int]:
        ids = self._sorted.get(character_id)
        if ids is None:
            ids = sorted(set(self._by_character.get(character_id, ())), reverse=True)
            self._sorted[character_id] = ids
        return ids

    def _candidates(self, wanted: list[tuple[set[int], int]]) -> set[int]:
        """Return the killmails of every tracked character that could match the first filter."""
        ids, position = wanted[0]
        candidates: set[int] = set()
        for character_id, character in self._tracked.items():
            affiliation = (character_id, character.corporation_id, character.alliance_id)
            if affiliation[position] in ids:
                candidates.update(self._by_character.get(character_id, ()))
        return candidates

    def _participation_matches(
        self, participation: Participation, wanted: list[tuple[set[int], int]], side: str | None
    ) -> bool:
        if side == "losses":
            people = [participation.victim] if participation.victim else []
        elif side == "kills":
            people = list(participation.attackers)
        else:
            people = [*participation.attackers, participation.victim]
        affiliations = []
        for character_id in people:
            if character_id is not None:
                character = self._tracked[character_id]
                affiliations.append((character_id, character.corporation_id, character.alliance_id))
        return all(any(a[position] in ids for a in affiliations) for ids, position in wanted)

    # -- internals: bodies -------------------------------------------------------------------

    def is_novel(self, killmail_id: int) -> bool:
        """Whether the killmail carries fields unknown today and empty lists."""
        rng = random.Random(f"{self.seed}:novel:{killmail_id}")
        return rng.random() < self.novel_share

    def _generate_body_json(self, killmail_id: int) -> str:
        body = _BodyBuilder(self, killmail_id).build()
        if self.is_novel(killmail_id):
            _add_novelties(body, random.Random(f"{self.seed}:novelties:{killmail_id}"))
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def _generate_zkb_json(self, killmail_id: int) -> str:
        body = json.loads(self._body_json(killmail_id))
        zkb = _zkb_for(body, self.killmail_hash(killmail_id), self.seed)
        if self.is_novel(killmail_id):
            # R2Z2 adds these; the API may one day too.
            zkb["attackerCount"] = len(body["attackers"])
            zkb["href"] = f"https://esi.evetech.net/killmails/{killmail_id}/{zkb['hash']}/"
        return json.dumps(zkb, separators=(",", ":"))

    def _party(self, character_id: int) -> dict[str, int]:
        """Return the id keys a character carries in a body (character, corporation, alliance)."""
        character = self._characters[character_id]
        party = {"character_id": character_id, "corporation_id": character.corporation_id}
        if character.alliance_id:
            party["alliance_id"] = character.alliance_id
        return party


class _BodyBuilder:
    """Builds one ESI killmail body from the world and a per-killmail random generator."""

    def __init__(self, world: World, killmail_id: int) -> None:
        self.world = world
        self.killmail_id = killmail_id
        self.participation = world.participation(killmail_id)
        self.rng = random.Random(f"{world.seed}:killmail:{killmail_id}")
        self.pools = sample_pools()

    def build(self) -> dict[str, Any]:
        rng = self.rng
        victim = self._victim()
        structure = victim["ship_type_id"] in STRUCTURE_TYPES
        attackers = self._attackers(structure)
        victim["damage_taken"] = sum(a["damage_done"] for a in attackers)
        body: dict[str, Any] = {
            "attackers": attackers,
            "killmail_id": self.killmail_id,
            "killmail_time": killmail_time(self.killmail_id).strftime(TIME_FORMAT),
            "solar_system_id": rng.choice(sorted(SOLAR_SYSTEMS)),
            "victim": victim,
        }
        if structure and rng.random() < 0.3:
            body["moon_id"] = 40_000_000 + rng.randint(1, 400_000)
        if rng.random() < 0.03:
            body["war_id"] = rng.randint(700_000, 760_000)
        return body

    def _victim(self) -> dict[str, Any]:
        rng = self.rng
        victim: dict[str, Any]
        if self.participation.victim is not None:
            victim = self.world._party(self.participation.victim)
            victim["ship_type_id"] = self._victim_ship()
        elif rng.random() < 0.03:
            corporation_id = rng.choice(self.world._player_corporations)
            victim = {"corporation_id": corporation_id, "ship_type_id": rng.choice(STRUCTURE_TYPES)}
            alliance_id = self.world._corporations[corporation_id].alliance_id
            if alliance_id:
                victim["alliance_id"] = alliance_id
        else:
            victim = self.world._party(self._filler())
            victim["ship_type_id"] = self._victim_ship()
        if "character_id" in victim and rng.random() < 0.04:
            victim["faction_id"] = rng.choice(MILITIA_FACTIONS)
        structure = victim["ship_type_id"] in STRUCTURE_TYPES
        if structure or rng.random() < 0.92:
            victim["position"] = {axis: round(rng.uniform(-5e12, 5e12), 4) for axis in "xyz"}
        items = self._items(structure, victim["ship_type_id"] == CAPSULE_TYPE)
        if items:
            victim["items"] = items
        return victim

    def _victim_ship(self) -> int:
        return CAPSULE_TYPE if self.rng.random() < 0.1 else self.rng.choice(self.pools.victim_ships)

    def _filler(self) -> int:
        while True:
            character_id = self.rng.choice(self.world._filler_characters)
            if character_id not in self.world._tracked:
                return character_id

    def _attacker_count(self, structure: bool) -> int:
        roll = self.rng.random()
        if structure:
            return self.rng.randint(3, 60) if roll < 0.85 else self.rng.randint(100, 600)
        if roll < 0.3:
            return 1
        if roll < 0.9:
            return self.rng.randint(2, 15)
        if roll < 0.99:
            return self.rng.randint(16, 80)
        return self.rng.randint(100, 1000)

    def _attackers(self, structure: bool) -> list[dict[str, Any]]:
        rng = self.rng
        tracked = list(self.participation.attackers)
        count = max(self._attacker_count(structure), len(tracked))
        attackers = [self._player_attacker(self.world._party(c)) for c in tracked]
        npc_only = not tracked and not structure and rng.random() < 0.06
        npcs = count if npc_only else (rng.randint(1, 3) if rng.random() < 0.08 else 0)
        attackers += [self._npc_attacker() for _ in range(min(npcs, count - len(attackers)))]
        while len(attackers) < count:
            if rng.random() < 0.01:
                attackers.append(self._structure_attacker())
            else:
                attackers.append(self._player_attacker(self.world._party(self._filler())))
        attackers.sort(key=lambda a: a["damage_done"], reverse=True)
        players = [a for a in attackers if "character_id" in a] or attackers
        rng.choice(players)["final_blow"] = True
        return attackers

    def _damage(self) -> int:
        return max(1, int(self.rng.paretovariate(1.2) * 300))

    def _player_attacker(self, party: dict[str, int]) -> dict[str, Any]:
        rng = self.rng
        attacker: dict[str, Any] = {
            **party,
            "damage_done": self._damage(),
            "final_blow": False,
            "security_status": round(rng.uniform(-10.0, 5.0), 1),
        }
        if rng.random() < 0.97:
            attacker["ship_type_id"] = rng.choice(self.pools.ship_types)
        if rng.random() < 0.95:
            attacker["weapon_type_id"] = rng.choice(self.pools.weapon_types)
        if rng.random() < 0.03:
            attacker["faction_id"] = rng.choice(MILITIA_FACTIONS)
        return attacker

    def _npc_attacker(self) -> dict[str, Any]:
        attacker: dict[str, Any] = {
            "damage_done": self._damage(),
            "faction_id": self.rng.choice(PIRATE_FACTIONS),
            "final_blow": False,
            "security_status": 0.0,
            "ship_type_id": self.rng.choice(NPC_SHIP_TYPES),
        }
        if self.rng.random() < 0.3:
            attacker["corporation_id"] = CONCORD_CORPORATION
        return attacker

    def _structure_attacker(self) -> dict[str, Any]:
        corporation_id = self.rng.choice(self.world._player_corporations)
        structure = self.rng.choice(STRUCTURE_TYPES)
        attacker: dict[str, Any] = {
            "corporation_id": corporation_id,
            "damage_done": self._damage(),
            "final_blow": False,
            "security_status": 0.0,
            "ship_type_id": structure,
            "weapon_type_id": structure,
        }
        alliance_id = self.world._corporations[corporation_id].alliance_id
        if alliance_id:
            attacker["alliance_id"] = alliance_id
        return attacker

    def _items(self, structure: bool, capsule: bool) -> list[dict[str, Any]]:
        rng = self.rng
        if structure:
            count = rng.randint(20, 150)
        elif capsule:
            count = rng.choice((0, 0, 1, 2, 3))
        elif rng.random() < 0.12:
            count = 0
        else:
            count = min(40, int(rng.expovariate(1 / 12)) + 1)
        items = [self._item(*rng.choice(self.pools.items)) for _ in range(count)]
        if count and rng.random() < 0.06:
            container = self._item(rng.choice(CONTAINER_TYPES), 5, singleton=1, quantity=1)
            nested = rng.randint(1, 8)
            container["items"] = [self._item(*rng.choice(self.pools.items)) for _ in range(nested)]
            for item in container["items"]:
                item["flag"] = container["flag"]
            items.insert(rng.randrange(len(items) + 1), container)
        return items

    def _item(
        self, type_id: int, flag: int, singleton: int | None = None, quantity: int | None = None
    ) -> dict[str, Any]:
        rng = self.rng
        if singleton is None:
            singleton = 0 if rng.random() < 0.93 else rng.choice((1, 2))
        if quantity is None:
            quantity = self._quantity()
        item: dict[str, Any] = {"flag": flag, "item_type_id": type_id, "singleton": singleton}
        roll = rng.random()
        if roll < 0.02 and quantity > 1:
            # Both keys at once happen for stacks that partly survived.
            dropped = rng.randint(1, quantity - 1)
            item["quantity_dropped"] = dropped
            item["quantity_destroyed"] = quantity - dropped
        elif roll < 0.51:
            item["quantity_dropped"] = quantity
        else:
            item["quantity_destroyed"] = quantity
        return item

    def _quantity(self) -> int:
        roll = self.rng.random()
        if roll < 0.7:
            return 1
        if roll < 0.995:
            return self.rng.randint(2, 5000)
        return self.rng.randint(2**31, 2**40)  # int64 stacks (ore, ISK tokens) exist


def _add_novelties(body: dict[str, Any], rng: random.Random) -> None:
    """Give a body what ESI's schema allows beyond today's bodies, in place."""
    body["killmarks"] = [{"type_id": rng.randint(1, 90_000), "count": rng.randint(1, 50)}]
    victim = body["victim"]
    victim.setdefault("items", [])  # an empty list where there were no items
    for item in victim["items"]:
        item["item_id"] = rng.randint(10**12, 2 * 10**12)
        if "items" in item and rng.random() < 0.5:
            item["items"] = []  # an emptied container
    if "position" in victim:
        victim["position"]["w"] = 0.0
    victim["ship_name"] = rng.choice(["", "Rifter", "Ünïcødé"])
    attacker = rng.choice(body["attackers"])
    attacker["standing"] = {"value": rng.uniform(-10, 10), "source": None}


def _zkb_for(body: dict[str, Any], killmail_hash: str, seed: int) -> dict[str, Any]:
    """Return the zKillboard metadata for a body, with the keys its era had."""
    rng = random.Random(f"{seed}:zkb:{body['killmail_id']}")
    victim = body["victim"]
    attackers = body["attackers"]
    structure = victim["ship_type_id"] in STRUCTURE_TYPES
    npc = all("character_id" not in a and "faction_id" in a for a in attackers)
    players = [a for a in attackers if "character_id" in a]
    solo = not npc and len(players) == 1 and len(attackers) <= 2
    awox = any(
        a.get("corporation_id") == victim.get("corporation_id") and "character_id" in victim
        for a in players
    )
    total_cents = int(rng.paretovariate(1.1) * (5e10 if structure else 1e9))
    dropped_cents = int(total_cents * rng.random())
    zkb: dict[str, Any] = {}
    if "position" in victim:
        zkb["locationID"] = (
            40_000_000 + (body["solar_system_id"] % 100_000) * 10 + rng.randint(1, 9)
        )
    zkb["hash"] = killmail_hash
    zkb["fittedValue"] = round(total_cents * rng.uniform(0.6, 1.0) / 100, 2)
    zkb["droppedValue"] = dropped_cents / 100
    zkb["destroyedValue"] = (total_cents - dropped_cents) / 100
    zkb["totalValue"] = total_cents / 100
    when = killmail_time(body["killmail_id"])
    if when >= TOTAL_DROPPABLE_SINCE:
        zkb["totalDroppableValue"] = round(total_cents * rng.uniform(0.2, 0.9) / 100, 2)
    zkb["points"] = 1 if npc else max(1, int(rng.paretovariate(1.5) * 5))
    zkb["npc"] = npc
    zkb["solo"] = solo
    zkb["awox"] = awox
    if when >= LABELS_SINCE:
        zkb["labels"] = _labels(body, total_cents / 100, npc=npc, solo=solo, awox=awox)
    return zkb


def _labels(
    body: dict[str, Any], total_value: float, *, npc: bool, solo: bool, awox: bool
) -> list[str]:
    """Return zKillboard's labels (since 2024) for a body."""
    structure = body["victim"]["ship_type_id"] in STRUCTURE_TYPES
    labels = [f"cat:{65 if structure else 6}"]
    hour = int(body["killmail_time"][11:13])
    labels.append(
        "tz:au" if hour < 6 else "tz:ru" if hour < 12 else "tz:eu" if hour < 18 else "tz:use"
    )
    count = len(body["attackers"])
    for threshold in (1000, 100, 50, 25, 10, 5, 2):
        if count >= threshold:
            labels.append(f"#:{threshold}+")
            break
    if solo:
        labels.append("solo")
    if awox:
        labels.append("awox")
    labels.append("npc" if npc else "pvp")
    security = SOLAR_SYSTEMS[body["solar_system_id"]]
    if body["solar_system_id"] >= 31_000_000:
        labels.append("loc:w-space")
    else:
        labels.append(
            "loc:highsec" if security >= 0.45 else "loc:lowsec" if security > 0 else "loc:nullsec"
        )
    for threshold, label in ((1e11, "isk:100b+"), (1e10, "isk:10b+"), (1e9, "isk:1b+")):
        if total_value >= threshold:
            labels.append(label)
            break
    return labels


def _index_body(index: BodyIndex, body: dict[str, Any]) -> None:
    """Add one body's ships and system to the index."""
    killmail_id = body["killmail_id"]
    index.victim_ships.setdefault(body["victim"]["ship_type_id"], set()).add(killmail_id)
    for attacker in body["attackers"]:
        if "ship_type_id" in attacker:
            index.attacker_ships.setdefault(attacker["ship_type_id"], set()).add(killmail_id)
    index.systems.setdefault(body["solar_system_id"], set()).add(killmail_id)


def _collect_references(body: dict[str, Any], found: dict[str, set[int]]) -> None:
    """Add every entity id of one body to found, by /universe/names/ category."""
    found["solar_system"].add(body["solar_system_id"])
    for party in (body["victim"], *body["attackers"]):
        for key, category in (
            ("character_id", "character"),
            ("corporation_id", "corporation"),
            ("alliance_id", "alliance"),
            ("faction_id", "faction"),
            ("ship_type_id", "inventory_type"),
            ("weapon_type_id", "inventory_type"),
        ):
            if key in party:
                found[category].add(party[key])
    for item in body["victim"].get("items", ()):
        found["inventory_type"].add(item["item_type_id"])
        for nested in item.get("items", ()):
            found["inventory_type"].add(nested["item_type_id"])


def _random_date(rng: random.Random, first_year: int, last_year: int) -> str:
    start = datetime(first_year, 1, 1, tzinfo=UTC)
    span = (datetime(last_year, 12, 31, tzinfo=UTC) - start).total_seconds()
    return (start + timedelta(seconds=rng.randrange(int(span)))).strftime(TIME_FORMAT)
