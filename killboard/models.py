"""Killmails, their participants and items, and the entities they reference.

A killmail is stored normalized: one `Killmail` row (the ESI body's scalars and the zkb
object), one `Participant` row for the victim and one for each attacker, and one `Item` row
for each item, container contents pointing at their container. `killboard.export` rebuilds
the exact ESI body from these rows.

Nothing the upstreams send is lost: each JSON object of a killmail keeps its known keys in
typed columns and everything else (fields ESI adds after today, an empty list, a value a
typed column cannot give back exactly) verbatim in the `extra` of the row it belongs to,
which export lays back over the columns (see `killboard.shapes`). A killmail that cannot be
stored at all is kept whole in `RejectedKillmail` until it is retried.

Entity references are foreign keys without a database constraint: ingest registers every
referenced entity in the same transaction, and skipping the per-row constraint checks keeps
bulk ingest fast.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db import models
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone


class JSONTextField(models.TextField):
    """Any JSON value, kept as its text.

    jsonb cannot hold a NUL (\\u0000) or a lone surrogate and reorders keys; text holds every
    value exactly as `json.dumps` writes it (non-ASCII escaped, so the text is plain ASCII).
    """

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        return None if value is None else json.loads(value)

    def get_prep_value(self, value: Any) -> str | None:
        """The JSON text; `ValueError` for what JSON cannot write (an int of 5,000 digits).

        None is SQL NULL where the column allows it, else the JSON `null`.
        """
        if value is None and self.null:
            return None
        return json.dumps(value, separators=(",", ":"))


class EnrichmentStatus(models.TextChoices):
    """How far enrichment got with an entity; `ENRICHMENT_CONDITIONS` says which rows are which."""

    RESOLVED = "resolved", "Resolved"
    PENDING = "pending", "Pending"
    UNRESOLVABLE = "unresolvable", "Unresolvable (retry later)"
    NOT_FOUND = "not_found", "Not found"


_UNNAMED = models.Q(name="")
# The one definition of each status, used by the admin and by enrichment's counts. A named
# entity is resolved whatever else happened; among the unnamed, ESI answered 404 on the detail
# route (not found), could not name it yet (a retry time is set), or has not been asked.
# The conditions are exclusive and together cover every row.
ENRICHMENT_CONDITIONS: dict[EnrichmentStatus, models.Q] = {
    EnrichmentStatus.RESOLVED: ~_UNNAMED,
    EnrichmentStatus.PENDING: _UNNAMED & models.Q(not_found=False, name_retry_at__isnull=True),
    EnrichmentStatus.UNRESOLVABLE: (
        _UNNAMED & models.Q(not_found=False, name_retry_at__isnull=False)
    ),
    EnrichmentStatus.NOT_FOUND: _UNNAMED & models.Q(not_found=True),
}


class EntityQuerySet(models.QuerySet):
    """Queries over one entity table."""

    def in_enrichment_status(self, status: EnrichmentStatus) -> EntityQuerySet:
        """The entities in `status`."""
        return self.filter(ENRICHMENT_CONDITIONS[status])

    def with_enrichment_status(self) -> EntityQuerySet:
        """Each entity with its status as `enrichment_status` (an `EnrichmentStatus` value)."""
        whens = [
            models.When(condition, then=models.Value(status.value))
            for status, condition in ENRICHMENT_CONDITIONS.items()
        ]
        return self.annotate(enrichment_status=models.Case(*whens, output_field=models.CharField()))

    def count_by_enrichment_status(self) -> dict[EnrichmentStatus, int]:
        """How many entities are in each status, in one query."""
        counts = self.aggregate(
            **{
                status.value: models.Count("id", filter=condition)
                for status, condition in ENRICHMENT_CONDITIONS.items()
            }
        )
        return {status: counts[status.value] for status in EnrichmentStatus}


class Entity(models.Model):
    """Something a killmail references by id; its name and details come from ESI later."""

    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=255, blank=True, help_text="Empty until resolved.")
    # /universe/names/ could not resolve the id; try again after this time.
    name_retry_at = models.DateTimeField(null=True, blank=True)
    # The detail route answered 404: ESI does not know this id.
    not_found = models.BooleanField(default=False)
    details_updated_at = models.DateTimeField(null=True, blank=True)
    etag = models.CharField(max_length=128, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = EntityQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ("id",)
        indexes = [
            # Entities still waiting for a name: the enrichment scan after every batch.
            models.Index(fields=["id"], name="%(class)s_unnamed_idx", condition=models.Q(name="")),
            # Oldest details first: the periodic refresh.
            models.Index(fields=["details_updated_at"], name="%(class)s_details_age_idx"),
        ]

    def __str__(self) -> str:
        return self.name or f"#{self.id}"


class Character(Entity):
    """A pilot.

    Corporation, alliance and faction come from POST /characters/affiliation/ (a thousand
    pilots a call); security status and birthday only from /characters/{id}/, fetched where
    something shows them.
    """

    corporation_id = models.BigIntegerField(null=True, blank=True)
    alliance_id = models.BigIntegerField(null=True, blank=True)
    faction_id = models.BigIntegerField(null=True, blank=True)
    # When /characters/affiliation/ last answered for this pilot.
    affiliation_updated_at = models.DateTimeField(null=True, blank=True)
    security_status = models.FloatField(null=True, blank=True)
    birthday = models.DateTimeField(null=True, blank=True)

    class Meta(Entity.Meta):
        indexes = [
            *Entity.Meta.indexes,
            # Pilots whose affiliation is missing or oldest first: the bulk affiliation scan.
            models.Index(fields=["affiliation_updated_at"], name="character_affiliation_idx"),
        ]


class Corporation(Entity):
    """A player or NPC corporation."""

    ticker = models.CharField(max_length=16, blank=True)
    ceo_id = models.BigIntegerField(null=True, blank=True)
    alliance_id = models.BigIntegerField(null=True, blank=True)
    member_count = models.IntegerField(null=True, blank=True)
    date_founded = models.DateTimeField(null=True, blank=True)


class Alliance(Entity):
    """An alliance of corporations."""

    ticker = models.CharField(max_length=16, blank=True)
    executor_corporation_id = models.BigIntegerField(null=True, blank=True)
    date_founded = models.DateTimeField(null=True, blank=True)


def _reference(model: str) -> models.ForeignKey:
    """A reference from one entity to another that may not be stored (or named) yet."""
    return models.ForeignKey(
        model,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )


class ItemCategory(Entity):
    """An inventory category: Ship, Module, Charge... (/universe/categories/{id}/)."""

    published = models.BooleanField(null=True, blank=True)

    class Meta(Entity.Meta):
        verbose_name_plural = "item categories"


class ItemGroup(Entity):
    """An inventory group, a "ship class" for ships: Frigate, Battleship... (/universe/groups/)."""

    category = _reference("ItemCategory")
    published = models.BooleanField(null=True, blank=True)


class ItemType(Entity):
    """A ship, module, charge or any other inventory type."""

    group = _reference("ItemGroup")


class Region(Entity):
    """A region of New Eden (named by /universe/names/)."""


class Constellation(Entity):
    """A constellation: its region comes from /universe/constellations/{id}/."""

    region = _reference("Region")


class SolarSystem(Entity):
    """A solar system where killmails happen; its constellation from /universe/systems/{id}/."""

    constellation = _reference("Constellation")
    security_status = models.FloatField(null=True, blank=True)


class Faction(Entity):
    """An NPC faction (NPC attackers and faction warfare victims carry one)."""


def _entity(model: type[Entity], *, required: bool = False) -> models.ForeignKey:
    # No index of its own: the queries by entity are served by the named indexes below,
    # and every needless index slows down bulk ingest.
    return models.ForeignKey(
        model,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        null=not required,
        blank=not required,
        related_name="+",
    )


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


class KillmailQuerySet(models.QuerySet):
    """Queries over stored killmails."""

    def involving_character(self, character_id: int) -> KillmailQuerySet:
        """Killmails where the character is the victim or an attacker, newest first."""
        return self._involving(character_id=character_id)

    def involving_corporation(self, corporation_id: int) -> KillmailQuerySet:
        """Killmails where the corporation is the victim's or an attacker's, newest first."""
        return self._involving(corporation_id=corporation_id)

    def involving_alliance(self, alliance_id: int) -> KillmailQuerySet:
        """Killmails where the alliance is the victim's or an attacker's, newest first."""
        return self._involving(alliance_id=alliance_id)

    def _involving(self, **entity: int) -> KillmailQuerySet:
        return self._with(Participant.objects.filter(**entity)).order_by(
            "-killmail_time", "-killmail_id"
        )

    def of_ship_type(self, type_id: int) -> KillmailQuerySet:
        """Killmails whose victim flew a ship of this type (Rifter, Capsule...)."""
        return self._with(Participant.objects.filter(is_victim=True, ship_type_id=type_id))

    def _with(self, participants: models.QuerySet) -> KillmailQuerySet:
        """Killmails that have one of `participants` (those of one entity).

        Served by the entity's participant_*_time_idx, which holds its killmails in time
        order: matching on the participant's copy of the time as well as the id lets
        PostgreSQL merge that list with killmail_time_idx, and the entity's newest killmail
        (the index's first entry) bounds where a page starts, so a pilot gone quiet months
        ago is not looked for among everything since. At 1,000,000 killmails a page of the
        busiest pilot or of a ship type takes 3-4 ms, of the pilot gone quiet first 9 ms;
        asking each killmail "is X in it?" from the newest took 57 ms for the busiest, and
        300 ms for a pilot last seen 36,000 killmails ago.
        """
        same = participants.filter(
            killmail_id=OuterRef("killmail_id"), killmail_time=OuterRef("killmail_time")
        )
        newest = participants.order_by("-killmail_time").values("killmail_time")[:1]
        return self.filter(Exists(same), killmail_time__lte=Subquery(newest))

    def of_ship_group(self, group_id: int) -> KillmailQuerySet:
        """Killmails whose victim flew a ship of the group (its "ship class": Frigate...).

        Known through the stored types: a ship type whose group enrichment has not fetched
        yet is in no group, and a group no stored type is in matches nothing.
        """
        return self._victim_ship(ship_type__in=ItemType.objects.filter(group_id=group_id))

    def of_ship_category(self, category_id: int) -> KillmailQuerySet:
        """Killmails whose victim's ship is of the category (Ship, Structure...), known
        through the stored types and groups."""
        types = ItemType.objects.filter(group__category_id=category_id)
        return self._victim_ship(ship_type__in=types)

    def _victim_ship(self, **ship: Any) -> KillmailQuerySet:
        victims = Participant.objects.filter(is_victim=True, **ship)
        return self.filter(killmail_id__in=victims.values("killmail_id"))

    def in_constellation(self, constellation_id: int) -> KillmailQuerySet:
        """Killmails in a solar system of the constellation (as the stored systems say)."""
        return self._in_systems(SolarSystem.objects.filter(constellation_id=constellation_id))

    def in_region(self, region_id: int) -> KillmailQuerySet:
        """Killmails in a solar system of the region (as the stored systems say)."""
        return self._in_systems(SolarSystem.objects.filter(constellation__region_id=region_id))

    def _in_systems(self, systems: models.QuerySet) -> KillmailQuerySet:
        return self.filter(solar_system__in=systems.values("id"))

    def between(self, from_date: date | None, to_date: date | None) -> KillmailQuerySet:
        """Killmails of the UTC days `from_date` to `to_date`, both whole days included.

        None leaves that end open. Served by killmail_time_idx.
        """
        queryset = self
        if from_date is not None:
            queryset = queryset.filter(killmail_time__gte=_day_start(from_date))
        if to_date is not None and to_date < date.max:
            queryset = queryset.filter(killmail_time__lt=_day_start(to_date + timedelta(days=1)))
        return queryset


class Killmail(models.Model):
    """One killmail: the ESI body's scalars and zKillboard's zkb object."""

    killmail_id = models.BigIntegerField(primary_key=True)
    killmail_time = models.DateTimeField()
    solar_system = _entity(SolarSystem, required=True)
    moon_id = models.BigIntegerField(null=True, blank=True)
    war_id = models.BigIntegerField(null=True, blank=True)
    # The victim's position, when the victim had one.
    position_x = models.FloatField(null=True, blank=True)
    position_y = models.FloatField(null=True, blank=True)
    position_z = models.FloatField(null=True, blank=True)
    # What the typed columns do not hold of the body and of the victim's position.
    extra = JSONTextField(null=True, blank=True, editable=False)
    position_extra = JSONTextField(null=True, blank=True, editable=False)

    # zkb: null means the key was absent (older answers lack the newer keys).
    killmail_hash = models.CharField(max_length=40, blank=True)
    location_id = models.BigIntegerField(null=True, blank=True)
    fitted_value = models.FloatField(null=True, blank=True)
    dropped_value = models.FloatField(null=True, blank=True)
    destroyed_value = models.FloatField(null=True, blank=True)
    total_value = models.FloatField(null=True, blank=True)
    total_droppable_value = models.FloatField(null=True, blank=True)
    points = models.IntegerField(null=True, blank=True)
    npc = models.BooleanField(null=True, blank=True)
    solo = models.BooleanField(null=True, blank=True)
    awox = models.BooleanField(null=True, blank=True)
    labels = models.JSONField(null=True, blank=True)
    # zkb keys this schema does not know yet, and values out of shape, kept as they came.
    zkb_extra = JSONTextField(null=True, blank=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)

    objects = KillmailQuerySet.as_manager()

    class Meta:
        ordering = ("-killmail_time", "-killmail_id")
        indexes = [
            # Latest killmails, and killmails in a date range.
            models.Index(fields=["-killmail_time"], name="killmail_time_idx"),
            # Killmails of a region or constellation (`in_region`, `in_constellation`): 400k
            # killmails, a region's page 250 ms -> 13 ms, its count 55 ms -> 4 ms.
            models.Index(fields=["solar_system"], name="killmail_system_idx"),
        ]

    def __str__(self) -> str:
        return f"Killmail {self.killmail_id}"


class Participant(models.Model):
    """The victim (ordinal 0) or one attacker of a killmail, attackers in ESI's order."""

    # Indexed by participant_unique_slot, which starts with the killmail.
    killmail = models.ForeignKey(
        Killmail,
        on_delete=models.CASCADE,
        related_name="participants",
        db_index=False,
        # Ingest writes a killmail and its rows in one transaction; a database check of
        # every row at commit would cost bulk ingest a quarter of its time.
        db_constraint=False,
    )
    # Copied from the killmail, and always equal to it: a target's killmails by time are
    # read from one index (see `KillmailQuerySet._with`), their months with no killmail.
    killmail_time = models.DateTimeField()
    is_victim = models.BooleanField()
    ordinal = models.PositiveIntegerField()
    character = _entity(Character)
    corporation = _entity(Corporation)
    alliance = _entity(Alliance)
    faction = _entity(Faction)
    ship_type = _entity(ItemType)
    weapon_type = _entity(ItemType)
    # damage_taken for the victim, damage_done for an attacker.
    damage = models.BigIntegerField()
    final_blow = models.BooleanField(null=True, blank=True)
    security_status = models.FloatField(null=True, blank=True)
    # What the typed columns do not hold of the victim's or attacker's object.
    extra = JSONTextField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ("killmail_id", "-is_victim", "ordinal")
        constraints = [
            # A rerun or a racing worker can never store a participant twice.
            models.UniqueConstraint(
                fields=["killmail", "is_victim", "ordinal"], name="participant_unique_slot"
            ),
            models.CheckConstraint(
                condition=models.Q(is_victim=False) | models.Q(ordinal=0),
                name="participant_one_victim",
            ),
        ]
        indexes = [
            # Killmails of a character, corporation or alliance, newest first
            # (`involving_*`), and of a victim's ship type (`of_ship_type`; victims only, one
            # entry a killmail): each entity's killmails in time order, so PostgreSQL merges
            # them with killmail_time_idx, or probes them, and finds their newest at once.
            # The victims' also serves ship classes and categories (`of_ship_group`...).
            models.Index(
                fields=["character", "-killmail_time", "killmail"],
                name="participant_character_time_idx",
                condition=models.Q(character__isnull=False),
            ),
            models.Index(
                fields=["corporation", "-killmail_time", "killmail"],
                name="participant_corp_time_idx",
                condition=models.Q(corporation__isnull=False),
            ),
            models.Index(
                fields=["alliance", "-killmail_time", "killmail"],
                name="participant_alliance_time_idx",
                condition=models.Q(alliance__isnull=False),
            ),
            models.Index(
                fields=["ship_type", "-killmail_time", "killmail"],
                name="participant_victim_ship_idx",
                condition=models.Q(is_victim=True),
            ),
        ]

    def __str__(self) -> str:
        role = "victim" if self.is_victim else f"attacker {self.ordinal}"
        return f"{role} of killmail {self.killmail_id}"


class Item(models.Model):
    """An item of the victim, in ESI's order; container contents point at their container."""

    # Indexed by item_unique_slot, which starts with the killmail.
    killmail = models.ForeignKey(
        Killmail,
        on_delete=models.CASCADE,
        related_name="items",
        db_index=False,
        # Ingest writes a killmail and its rows in one transaction; a database check of
        # every row at commit would cost bulk ingest a quarter of its time.
        db_constraint=False,
    )
    # Position in a depth-first walk of the victim's items: containers before their contents.
    ordinal = models.PositiveIntegerField()
    container_ordinal = models.PositiveIntegerField(null=True, blank=True)
    item_type = _entity(ItemType, required=True)
    flag = models.IntegerField()
    singleton = models.IntegerField()
    quantity_destroyed = models.BigIntegerField(null=True, blank=True)
    quantity_dropped = models.BigIntegerField(null=True, blank=True)
    # What the typed columns and the contents' rows do not hold of the item's object.
    extra = JSONTextField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ("killmail_id", "ordinal")
        constraints = [
            # A rerun or a racing worker can never store an item twice.
            models.UniqueConstraint(fields=["killmail", "ordinal"], name="item_unique_slot"),
        ]

    def __str__(self) -> str:
        return f"item {self.ordinal} of killmail {self.killmail_id}"


class RejectedKillmailQuerySet(models.QuerySet):
    """Queries over the quarantine."""

    def of_job(self, job_id: int | None) -> RejectedKillmailQuerySet:
        """Those a backfill job brought (all of them for None)."""
        return self if job_id is None else self.filter(job_id=job_id)


class RejectedKillmail(models.Model):
    """A killmail that arrived but could not be stored, kept whole until it is retried.

    `record` is the record as it came (body plus zkb), so nothing rejected is lost: once the
    cause is fixed, `manage.py retry_rejected` stores it and removes it from here.
    """

    # None when the record carries no usable id.
    killmail_id = models.BigIntegerField(null=True, blank=True)
    record = JSONTextField(help_text="The record as it came: ESI body plus zkb.")
    # SHA-256 of the record's text: the same record rejected again is one row, not two.
    digest = models.CharField(max_length=64, unique=True)
    reason = models.TextField()
    source = models.CharField(max_length=255, blank=True, help_text="Where it came from.")
    # The backfill job that brought it; no foreign key, killboard depends on no other app.
    job_id = models.BigIntegerField(null=True, blank=True)
    rejected_at = models.DateTimeField(default=timezone.now)

    objects = RejectedKillmailQuerySet.as_manager()

    class Meta:
        ordering = ("-rejected_at",)
        indexes = [
            # retry_rejected --job and the job's page in the admin.
            models.Index(fields=["job_id"], name="rejected_job_idx"),
            # The admin's search by killmail id.
            models.Index(fields=["killmail_id"], name="rejected_killmail_idx"),
        ]

    def __str__(self) -> str:
        return f"rejected killmail {self.killmail_id or '?'}: {self.reason}"


class RateLimit(models.Model):
    """A rate limit shared by every process on every machine: the next free request slot.

    Both upstream clients reserve their slots here (see `killboard.ratelimit`), so the rules
    hold for the whole deployment, not per worker. Times are Unix seconds.
    """

    name = models.CharField(max_length=64, primary_key=True)
    next_at = models.FloatField(default=0.0, help_text="The next request slot (Unix time).")
    blocked_until = models.FloatField(
        default=0.0,
        help_text="No request before this (Unix time): after a 429, a 420, a low error limit.",
    )
    calls = models.BigIntegerField(default=0, help_text="Slots taken since the row was made.")

    def __str__(self) -> str:
        return self.name


class ConcurrencySlot(models.Model):
    """One of the N requests a limit lets be in flight at once, across the deployment.

    A holder leases a free slot with one conditional UPDATE and gives it back when its
    answer arrives; a lease not given back (a killed process) lapses at `leased_until`.
    """

    name = models.CharField(max_length=64)
    slot = models.PositiveIntegerField()
    holder = models.CharField(max_length=64, blank=True)
    leased_until = models.FloatField(default=0.0, help_text="Free after this (Unix time).")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name", "slot"], name="concurrency_slot_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name}#{self.slot}"
