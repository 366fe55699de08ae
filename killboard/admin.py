"""Admin for the stored data: killmails (read-only), the entities they reference, and the
quarantine of rejected killmails (read-only, with a retry).

Each admin is declared once, here. killboard depends on no other app, so what starts work
elsewhere is brought by the app that owns the work, as an `AdminExtension` it registers with
`extend_admin` from its own admin module: "Backfill this character" (`backfill.admin`),
"Re-enrich" and the name counts (`enrichment.admin`). Nothing is subclassed or registered
again; the admins below hold their extensions and consult them.

Why one long module: the admin of every killboard model, with the one extension point the
other apps use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import F, FilteredRelation, Model, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

from killboard.inputs import is_whole_number, positive_id
from killboard.models import (
    Alliance,
    Character,
    Constellation,
    Corporation,
    EnrichmentStatus,
    Entity,
    Faction,
    Item,
    ItemCategory,
    ItemGroup,
    ItemType,
    Killmail,
    Participant,
    Region,
    RejectedKillmail,
    SolarSystem,
)
from killboard.quarantine import retry_rejected

# -- the extension point ---------------------------------------------------------------------


class AdminExtension:
    """What another app adds to the admin of one of killboard's models.

    `actions` are Django admin actions: functions decorated with `@admin.action`, called as
    `action(model_admin, request, queryset)`, each declaring the permissions it needs. A
    permission other than the model's own (add, view, change, delete), say
    `permissions=["start_backfill"]`, is checked by this extension's method of the usual name,
    `has_start_backfill_permission(request)`. `changelist_panel` is HTML shown above the
    change list; `object_shown` is told when an object's page is shown (to fetch what it
    shows, in the background).
    """

    actions: tuple[Callable[..., HttpResponse | None], ...] = ()

    def changelist_panel(self, model_admin: admin.ModelAdmin, request: HttpRequest) -> str:
        """HTML to show above the change list; empty for none."""
        return ""

    def object_shown(self, model_admin: admin.ModelAdmin, request: HttpRequest, obj: Model) -> None:
        """Told that the change (or view) page of `obj` is being shown; it must not wait."""


class ExtensibleAdmin(admin.ModelAdmin):
    """A killboard admin that other apps extend by composition (see `extend_admin`)."""

    change_list_template = "admin/killboard/extensible_change_list.html"

    def __init__(self, model: type[Model], admin_site: admin.AdminSite) -> None:
        super().__init__(model, admin_site)
        self.extensions: list[AdminExtension] = []

    def extend(self, extension: AdminExtension) -> None:
        """Offer the extension's actions after this admin's own, and show its panel."""
        self.extensions.append(extension)
        # Django reads `actions` for the action menu, the permission filter and its system
        # checks, so an extension's actions are guarded exactly like the admin's own.
        self.actions = (*(self.actions or ()), *extension.actions)

    def __getattr__(self, name: str) -> Any:
        # Django asks the model admin for `has_<permission>_permission` of each permission an
        # action declares: the permissions an extension brings are answered by the extension.
        if name.startswith("has_") and name.endswith("_permission"):
            for extension in self.__dict__.get("extensions", ()):
                if hasattr(extension, name):
                    return getattr(extension, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        panels = [extension.changelist_panel(self, request) for extension in self.extensions]
        context = {
            "extension_panels": [panel for panel in panels if panel],
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Model | None = None,
    ) -> HttpResponse:
        if obj is not None:
            for extension in self.extensions:
                extension.object_shown(self, request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)


def extend_admin(
    model: type[Model], extension: AdminExtension, site: admin.AdminSite = admin.site
) -> None:
    """Add another app's extension to the admin killboard registered for `model`.

    Called by the extending app's admin module, which imports this one first (so the admin
    is registered); the extensions of one admin come in the order of INSTALLED_APPS.
    """
    model_admin = site.get_model_admin(model)
    if not isinstance(model_admin, ExtensibleAdmin):
        raise TypeError(f"the admin of {model.__name__} takes no extensions")
    model_admin.extend(extension)


# -- entities --------------------------------------------------------------------------------


def entity_label(entity: Entity | None, entity_id: int | None) -> str:
    """An entity's name, or `#id` while unresolved; empty when there is no entity."""
    if entity is not None and entity.name:
        return entity.name
    return f"#{entity_id}" if entity_id else ""


def nested_label(obj: Model, first: str, second: str) -> str:
    """The label of `obj.<first>.<second>` (a type's group's category), as `entity_label`
    gives it; empty while `obj.<first>` is not stored."""
    reference = getattr(obj, first)
    if reference is None:
        return ""
    return entity_label(getattr(reference, second), getattr(reference, f"{second}_id"))


class ReadOnlyAdmin(ExtensibleAdmin):
    """Rows only ingest writes: nobody adds, edits or deletes them here, so nothing is lost
    by hand (a rejected killmail leaves the quarantine only when a retry stores it)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EnrichmentStatusFilter(admin.SimpleListFilter):
    """Filter entities by enrichment status."""

    title = "enrichment status"
    parameter_name = "enrichment"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return EnrichmentStatus.choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in EnrichmentStatus.values:
            return queryset.in_enrichment_status(EnrichmentStatus(self.value()))
        return queryset


class EntityAdmin(ExtensibleAdmin):
    """An entity table: filled by ingest and ESI, so read-only here."""

    list_display = ("id", "name", "status", "details_updated_at")
    list_filter = (EnrichmentStatusFilter,)
    search_fields = ("=id", "name")
    list_per_page = 100
    show_full_result_count = False
    ordering = ("id",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).with_enrichment_status()

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="enrichment")
    def status(self, obj: Entity) -> str:
        return EnrichmentStatus(obj.enrichment_status).label


@admin.register(Character)
class CharacterAdmin(EntityAdmin):
    list_display = ("id", "name", "status", "corporation_id", "alliance_id", "details_updated_at")


@admin.register(Corporation)
class CorporationAdmin(EntityAdmin):
    list_display = ("id", "name", "ticker", "status", "alliance_id", "details_updated_at")


@admin.register(Alliance)
class AllianceAdmin(EntityAdmin):
    list_display = ("id", "name", "ticker", "status", "details_updated_at")


@admin.register(ItemCategory)
class ItemCategoryAdmin(EntityAdmin):
    list_display = ("id", "name", "published", "status", "details_updated_at")


@admin.register(ItemGroup)
class ItemGroupAdmin(EntityAdmin):
    list_display = ("id", "name", "category_name", "published", "status", "details_updated_at")
    list_select_related = ("category",)

    @admin.display(description="category", ordering="category__name")
    def category_name(self, obj: ItemGroup) -> str:
        return entity_label(obj.category, obj.category_id)


@admin.register(ItemType)
class ItemTypeAdmin(EntityAdmin):
    list_display = (
        "id",
        "name",
        "group_name",
        "category_name",
        "status",
        "details_updated_at",
    )
    list_select_related = ("group__category",)

    @admin.display(description="group", ordering="group__name")
    def group_name(self, obj: ItemType) -> str:
        return entity_label(obj.group, obj.group_id)

    @admin.display(description="category", ordering="group__category__name")
    def category_name(self, obj: ItemType) -> str:
        return nested_label(obj, "group", "category")


@admin.register(Region)
class RegionAdmin(EntityAdmin):
    list_display = ("id", "name", "status", "details_updated_at")


@admin.register(Constellation)
class ConstellationAdmin(EntityAdmin):
    list_display = ("id", "name", "region_name", "status", "details_updated_at")
    list_select_related = ("region",)

    @admin.display(description="region", ordering="region__name")
    def region_name(self, obj: Constellation) -> str:
        return entity_label(obj.region, obj.region_id)


@admin.register(SolarSystem)
class SolarSystemAdmin(EntityAdmin):
    list_display = (
        "id",
        "name",
        "constellation_name",
        "region_name",
        "security_status",
        "status",
        "details_updated_at",
    )
    list_select_related = ("constellation__region",)

    @admin.display(description="constellation", ordering="constellation__name")
    def constellation_name(self, obj: SolarSystem) -> str:
        return entity_label(obj.constellation, obj.constellation_id)

    @admin.display(description="region", ordering="constellation__region__name")
    def region_name(self, obj: SolarSystem) -> str:
        return nested_label(obj, "constellation", "region")


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


# -- killmails and the quarantine ------------------------------------------------------------

# ESI's inventory category of ships: the ship classes offered when no category is chosen.
SHIP_CATEGORY_ID = 6


class StoredEntityFilter(admin.SimpleListFilter):
    """Killmails filtered by one stored entity, offered by name (ids not named yet are not
    offered); an id that is not stored, or not an id at all, matches nothing."""

    def entities(self, request: HttpRequest) -> QuerySet:
        """The entities to offer, named or not."""
        raise NotImplementedError

    def filter(self, queryset: QuerySet, entity_id: int) -> QuerySet:
        """The killmails of the entity."""
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[int, str]]:
        named = self.entities(request).exclude(name="").order_by("name", "id")
        return list(named.values_list("id", "name"))

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() is None:
            return queryset
        entity_id = positive_id(self.value())
        return queryset.none() if entity_id is None else self.filter(queryset, entity_id)


class ShipCategoryFilter(StoredEntityFilter):
    title = "ship category"
    parameter_name = "ship_category"

    def entities(self, request: HttpRequest) -> QuerySet:
        return ItemCategory.objects.all()

    def filter(self, queryset: QuerySet, entity_id: int) -> QuerySet:
        return queryset.of_ship_category(entity_id)


class ShipClassFilter(StoredEntityFilter):
    """The victim's ship group. Only the classes of the chosen ship category are offered (of
    ships when none is chosen): all the groups of every category are a thousand names."""

    title = "ship class"
    parameter_name = "ship_group"

    def entities(self, request: HttpRequest) -> QuerySet:
        category_id = positive_id(request.GET.get(ShipCategoryFilter.parameter_name, ""))
        return ItemGroup.objects.filter(category_id=category_id or SHIP_CATEGORY_ID)

    def filter(self, queryset: QuerySet, entity_id: int) -> QuerySet:
        return queryset.of_ship_group(entity_id)


class RegionFilter(StoredEntityFilter):
    title = "region"
    parameter_name = "region"

    def entities(self, request: HttpRequest) -> QuerySet:
        return Region.objects.all()

    def filter(self, queryset: QuerySet, entity_id: int) -> QuerySet:
        return queryset.in_region(entity_id)


@admin.register(Killmail)
class KillmailAdmin(ReadOnlyAdmin):
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
    list_filter = (ShipClassFilter, ShipCategoryFilter, RegionFilter)
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
        if is_whole_number(term):
            # Killmail ids are positive int64: any other number matches nothing (and a longer
            # one must not overflow the query).
            killmail_id = positive_id(term)
            if killmail_id is None:
                return queryset.none(), False
            return queryset.filter(killmail_id=killmail_id), False
        characters = Character.objects.filter(name__icontains=term).values("id")
        killmails = Participant.objects.filter(character_id__in=characters).values("killmail_id")
        return queryset.filter(killmail_id__in=killmails), False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in self.model._meta.fields]

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
class RejectedKillmailAdmin(ReadOnlyAdmin):
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
