"""App configuration: the jobs' counters follow the retries of their rejected killmails."""

from __future__ import annotations

from django.apps import AppConfig


class BackfillConfig(AppConfig):
    name = "backfill"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Connect the jobs' counters to `killboard.signals.rejections_resolved`."""
        from backfill.receivers import on_rejections_resolved
        from killboard.signals import rejections_resolved

        rejections_resolved.connect(
            on_rejections_resolved, dispatch_uid="backfill.counters_after_retry"
        )
