"""Enrichment in the admin: a "Re-enrich" action, the counts of every kind on every entity
list, and the fetch of a pilot's details when its page is shown.

killboard's admin knows nothing of enrichment (killboard depends on no other app), so this
module brings all three as an extension of each entity admin killboard declares
(`killboard.admin.extend_admin`).
"""

from __future__ import annotations

from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string

from enrichment import services, tasks
from killboard.admin import AdminExtension, extend_admin
from killboard.entities import BY_KIND, BY_MODEL, ENTITY_KINDS
from killboard.models import Character, Entity


def reenrich(kind: str, ids: list[int]) -> None:
    """Forget what enrichment knows of these entities' freshness and queue them again.

    Kinds with a detail route get a detail task (it also names them); the others (regions,
    factions) only have a name, which the name scan fetches if still missing. Pilots get
    their affiliation asked again too. Tasks are queued after the commit.
    """
    entry = BY_KIND[kind]
    forget = {"not_found": False, "name_retry_at": None, "details_updated_at": None}
    if entry.model is Character:
        forget["affiliation_updated_at"] = None
    with transaction.atomic():
        entry.model.objects.filter(id__in=ids).update(expires_at=None, **forget)
        if entry.has_details:
            tasks.queue_details({kind: ids})
        else:
            tasks.enqueue_enrichment(details=False)
        if entry.model is Character:
            tasks.enqueue_affiliations()


@admin.action(description="Re-enrich", permissions=["change"])
def re_enrich(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    """Queue the selected entities for enrichment again."""
    ids = list(queryset.values_list("id", flat=True))
    reenrich(BY_MODEL[queryset.model].kind, ids)
    model_admin.message_user(
        request, f"Queued enrichment of {len(ids)} {queryset.model._meta.verbose_name_plural}."
    )


class EntityEnrichment(AdminExtension):
    """What enrichment adds to an entity admin: "Re-enrich", the counts of every kind, and
    for a kind detailed on demand (pilots) the fetch of the details its page shows."""

    actions = (re_enrich,)

    def object_shown(
        self, model_admin: admin.ModelAdmin, request: HttpRequest, obj: Entity
    ) -> None:
        """Queue the details of an entity detailed on demand when missing or stale; the page
        shows what is stored now, and the fetched details on the next visit."""
        entry = BY_MODEL[type(obj)]
        if entry.details_on_demand and services.details_due(obj):
            tasks.fetch_details_soon(entry.kind, [obj.id])

    def changelist_panel(self, model_admin: admin.ModelAdmin, request: HttpRequest) -> str:
        """The resolved / pending / failed counts of every kind, this admin's highlighted."""
        counts = services.enrichment_counts()
        context = {
            "enrichment_kind": BY_MODEL[model_admin.model].kind,
            "enrichment_counts": [{"kind": kind, **row} for kind, row in counts.items()],
        }
        return render_to_string("admin/enrichment/enrichment_counts.html", context, request)


for _entry in ENTITY_KINDS:
    extend_admin(_entry.model, EntityEnrichment())
