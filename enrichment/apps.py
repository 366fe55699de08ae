"""App configuration: enrichment follows every committed ingest batch."""

from __future__ import annotations

from django.apps import AppConfig


class EnrichmentConfig(AppConfig):
    name = "enrichment"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Connect the name scan to `killboard.signals.killmails_stored`."""
        from enrichment.tasks import on_killmails_stored
        from killboard.signals import killmails_stored

        killmails_stored.connect(on_killmails_stored, dispatch_uid="enrichment.names_after_ingest")
