"""Enrichment in the admin: a "Re-enrich" action and the name counts on every entity list.

killboard's admin knows nothing of enrichment (killboard depends on no other app), so this
module extends the entity admins killboard registered: it subclasses whatever admin is
registered for each entity (public API: `get_model_admin`, `unregister`, `register`) and
registers the subclass in its place. Subclassing what is registered, rather than killboard's
class by name, lets backfill.admin extend the Character admin the same way in either order.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

import killboard.admin  # noqa: F401  (registers the entity admins this module extends)
from enrichment import services, tasks
from killboard.models import Entity

KIND_OF_MODEL: dict[type[Entity], str] = {model: kind for kind, model in services.KINDS.items()}


def reenrich(kind: str, ids: list[int]) -> None:
    """Forget what enrichment knows of these entities' freshness and queue them again.

    Kinds with a detail route get a detail task (it also names them); the others (solar
    systems, factions) only have a name, which the name scan fetches if still missing.
    Tasks are queued after the commit.
    """
    model = services.KINDS[kind]
    with transaction.atomic():
        model.objects.filter(id__in=ids).update(
            not_found=False, name_retry_at=None, details_updated_at=None, expires_at=None
        )
        if kind in services.DETAIL_KINDS:
            tasks.queue_details({kind: ids})
        else:
            tasks.enqueue_enrichment(details=False)


class EnrichmentAdminMixin:
    """What enrichment adds to an entity admin."""

    change_list_template = "admin/enrichment/entity_change_list.html"

    @admin.action(description="Re-enrich", permissions=["change"])
    def re_enrich(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.values_list("id", flat=True))
        kind = KIND_OF_MODEL[queryset.model]
        reenrich(kind, ids)
        self.message_user(
            request, f"Queued enrichment of {len(ids)} {queryset.model._meta.verbose_name_plural}."
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        counts = services.enrichment_counts()
        context = {
            "enrichment_kind": KIND_OF_MODEL[self.model],
            "enrichment_counts": [{"kind": kind, **row} for kind, row in counts.items()],
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)  # type: ignore[misc]


def _extend(model: type[Entity]) -> None:
    base = type(admin.site.get_model_admin(model))
    extended = type(
        base.__name__,
        (EnrichmentAdminMixin, base),
        {"actions": [*(base.actions or ()), "re_enrich"], "__module__": __name__},
    )
    admin.site.unregister(model)
    admin.site.register(model, extended)


for _model in KIND_OF_MODEL:
    _extend(_model)
