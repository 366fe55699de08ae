"""App configuration: the follower of R2Z2's live feed."""

from __future__ import annotations

from django.apps import AppConfig


class LiveConfig(AppConfig):
    name = "live"
    verbose_name = "live feed"
    default_auto_field = "django.db.models.BigAutoField"
