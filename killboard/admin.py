"""Admin for the stored data: killmails (read-only), the entities they reference, and the
quarantine of rejected killmails (read-only, with a retry).

killboard depends on no other app, so the actions that start work elsewhere are added by the
apps that own the work: "Backfill this character" by `backfill.admin`, "Re-enrich" by
`enrichment.admin`. Each subclasses the admin registered here and registers it again.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import F, FilteredRelation, Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from killboard.models import (
    Alliance,
    Character,
    Corporation,
    Entity,
    Faction,
    Item,
    ItemType,
    Killmail,
    Participant,
    RejectedKillmail,
    SolarSystem,
)
from killboard.quarantine import retry_rejected

# Enrichment status of an entity, as a filter on its table. An entity with a name is
# resolved whatever else happened; among the unnamed, ESI either answered 404 on the detail
# route (not found), could not name it yet (a retry time is set), or has not been asked.
UNNAMED = Q(name="")
ENRICHMENT_STATUSES: dict[str, tuple[str, Q]] = {
    "resolved": ("Resolved", ~UNNAMED),
    "pending": ("Pending", UNNAMED & Q(not_found=False, name_retry_at__isnull=True)),
    "unresolvable": (
        "Unresolvable (retry later)",
        UNNAMED & Q(not_found=False, name_retry_at__isnull=False),
    ),
    "not_found": ("Not found", UNNAMED & Q(not_found=True)),
}


def enrichment_status(entity: Entity) -> str:
    """The label of an entity's enrichment status (see ENRICHMENT_STATUSES)."""
    if entity.name:
        key = "resolved"
    elif entity.not_found:
        key = "not_found"
    elif entity.name_retry_at is not None:
        key = "unresolvable"
    else:
        key = "pending"
    return ENRICHMENT_STATUSES[key][0]


def entity_label(entity: Entity | None, entity_id: int | None) -> str:
    """An entity's name, or `#id` while unresolved; empty when there is no entity."""
    if entity is not None and entity.name:
        return entity.name
    return f"#{entity_id}" if entity_id else ""


class EnrichmentStatusFilter(admin.SimpleListFilter):
    """Filter entities by enrichment status."""

    title = "enrichment status"
    parameter_name = "enrichment"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in ENRICHMENT_STATUSES.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ENRICHMENT_STATUSES:
            return queryset.filter(ENRICHMENT_STATUSES[self.value()][1])
        return queryset


class EntityAdmin(admin.ModelAdmin):
    """An entity table: filled by ingest and ESI, so read-only here."""

    list_display = ("id", "name", "status", "details_updated_at")
    list_filter = (EnrichmentStatusFilter,)
    search_fields = ("=id", "name")
    list_per_page = 100
    show_full_result_count = False
    ordering = ("id",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="enrichment")
    def status(self, obj: Entity) -> str:
        return enrichment_status(obj)


@admin.register(Character)
class CharacterAdmin(EntityAdmin):
    list_display = ("id", "name", "status", "corporation_id", "alliance_id", "details_updated_at")


@admin.register(Corporation)
class CorporationAdmin(EntityAdmin):
    list_display = ("id", "name", "ticker", "status", "alliance_id", "details_updated_at")


@admin.register(Alliance)
class AllianceAdmin(EntityAdmin):
    list_display = ("id", "name", "ticker", "status", "details_updated_at")


@admin.register(ItemType)
class ItemTypeAdmin(EntityAdmin):
    list_display = ("id", "name", "group_id", "status", "details_updated_at")


@admin.register(SolarSystem)
class SolarSystemAdmin(EntityAdmin):
    list_display = ("id", "name", "status")


@admin.register(Faction)
class FactionAdmin(EntityAdmin):
    list_display = ("id", "name", "status")


class ReadOnlyInline(admin.TabularInline):
    """An inline that only shows rows."""

    extra = 0
    can_delete = False
    show_change_link = False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Part of the killmail: whoever may see the killmail sees its rows.
        return request.user.has_perm("killboard.view_killmail")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ParticipantInline(ReadOnlyInline):
    """The victim first, then the attackers in ESI's order, with names."""

    model = Participant
    fields = readonly_fields = (
        "role",
        "character_name",
        "corporation_name",
        "alliance_name",
        "faction_name",
        "ship",
        "weapon",
        "damage",
        "final_blow",
        "security_status",
    )
    verbose_name_plural = "victim and attackers"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .select_related(
                "character", "corporation", "alliance", "faction", "ship_type", "weapon_type"
            )
        )

    @admin.display(description="role")
    def role(self, obj: Participant) -> str:
        return "victim" if obj.is_victim else f"attacker {obj.ordinal + 1}"

    @admin.display(description="character")
    def character_name(self, obj: Participant) -> str:
        return entity_label(obj.character, obj.character_id)

    @admin.display(description="corporation")
    def corporation_name(self, obj: Participant) -> str:
        return entity_label(obj.corporation, obj.corporation_id)

    @admin.display(description="alliance")
    def alliance_name(self, obj: Participant) -> str:
        return entity_label(obj.alliance, obj.alliance_id)

    @admin.display(description="faction")
    def faction_name(self, obj: Participant) -> str:
        return entity_label(obj.faction, obj.faction_id)

    @admin.display(description="ship")
    def ship(self, obj: Participant) -> str:
        return entity_label(obj.ship_type, obj.ship_type_id)

    @admin.display(description="weapon")
    def weapon(self, obj: Participant) -> str:
        return entity_label(obj.weapon_type, obj.weapon_type_id)


class ItemInline(ReadOnlyInline):
    """The victim's items, containers before their contents."""

    model = Item
    fields = readonly_fields = (
        "ordinal",
        "type_name",
        "flag",
        "singleton",
        "quantity_destroyed",
        "quantity_dropped",
        "container_ordinal",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("item_type")

    @admin.display(description="type")
    def type_name(self, obj: Item) -> str:
        return entity_label(obj.item_type, obj.item_type_id)


@admin.register(Killmail)
class KillmailAdmin(admin.ModelAdmin):
    """Killmails as stored: read-only, with names resolved in one query per page."""

    list_display = (
        "killmail_id",
        "killmail_time",
        "victim_name",
        "victim_ship",
        "system",
        "value",
    )
    list_select_related = ("solar_system",)
    date_hierarchy = "killmail_time"
    list_per_page = 50
    # Counting every killmail on each page view is slow on a large table.
    show_full_result_count = False
    search_fields = ("killmail_id",)
    search_help_text = "A killmail id, or part of a victim's or attacker's character name."
    inlines = (ParticipantInline, ItemInline)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # One LEFT JOIN to the victim row (there is exactly one), and from it to the names.
        return (
            super()
            .get_queryset(request)
            .annotate(
                victim=FilteredRelation("participants", condition=Q(participants__is_victim=True))
            )
            .annotate(
                victim_character_id=F("victim__character_id"),
                victim_character_name=F("victim__character__name"),
                victim_ship_id=F("victim__ship_type_id"),
                victim_ship_name=F("victim__ship_type__name"),
            )
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """A number is a killmail id; text matches victim and attacker character names.

        Names are matched in the character table first and killmails found through the
        participants' character index, so no join multiplies the rows.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isascii() and term.isdigit():
            # Killmail ids are int64: a longer number matches nothing (and must not overflow).
            if int(term) >= 2**63:
                return queryset.none(), False
            return queryset.filter(killmail_id=int(term)), False
        characters = Character.objects.filter(name__icontains=term).values("id")
        killmails = Participant.objects.filter(character_id__in=characters).values("killmail_id")
        return queryset.filter(killmail_id__in=killmails), False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="victim", ordering="victim_character_name")
    def victim_name(self, obj: Killmail) -> str:
        return obj.victim_character_name or (
            f"#{obj.victim_character_id}" if obj.victim_character_id else "(no character)"
        )

    @admin.display(description="ship", ordering="victim_ship_name")
    def victim_ship(self, obj: Killmail) -> str:
        return obj.victim_ship_name or f"#{obj.victim_ship_id}"

    @admin.display(description="system", ordering="solar_system__name")
    def system(self, obj: Killmail) -> str:
        return entity_label(obj.solar_system, obj.solar_system_id)

    @admin.display(description="value (ISK)", ordering="total_value")
    def value(self, obj: Killmail) -> str:
        return "" if obj.total_value is None else f"{obj.total_value:,.0f}"


@admin.register(RejectedKillmail)
class RejectedKillmailAdmin(admin.ModelAdmin):
    """The quarantine: rejected killmails kept as they came, read-only; retried, not edited."""

    list_display = ("killmail_id", "reason", "source", "job_id", "rejected_at")
    list_filter = ("source", "job_id")
    search_fields = ("=killmail_id", "reason")
    search_help_text = "A killmail id, or part of a reason."
    list_per_page = 100
    show_full_result_count = False
    fields = readonly_fields = (
        "killmail_id",
        "reason",
        "source",
        "job_id",
        "rejected_at",
        "digest",
        "raw_record",
    )
    actions = ("retry",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a row would lose the killmail: rows leave only when a retry stores it.
        return False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        """Retrying stores killmails, so it takes the change permission (rows stay as they are)."""
        opts = self.model._meta
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    @admin.display(description="record as it came")
    def raw_record(self, obj: RejectedKillmail) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.record, indent=2))

    @admin.action(description="Retry these rejected killmails", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet) -> None:
        outcome = retry_rejected(rows=queryset)
        level = messages.WARNING if outcome.still_rejected else messages.SUCCESS
        self.message_user(request, f"Retried {outcome.summary()}.", level)
