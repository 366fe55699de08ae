"""App configuration: enrichment follows every committed ingest batch, and fetches the
details others are about to read."""

from __future__ import annotations

from django.apps import AppConfig


class EnrichmentConfig(AppConfig):
    name = "enrichment"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Connect the name scan to `killboard.signals.killmails_stored`, and the fetch of
        details on demand to `killboard.signals.entity_details_wanted`."""
        from enrichment.tasks import on_details_wanted, on_killmails_stored
        from killboard.signals import entity_details_wanted, killmails_stored

        killmails_stored.connect(on_killmails_stored, dispatch_uid="enrichment.names_after_ingest")
        entity_details_wanted.connect(
            on_details_wanted, dispatch_uid="enrichment.details_on_demand"
        )
