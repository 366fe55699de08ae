"""App configuration."""

from __future__ import annotations

from django.apps import AppConfig


class BackfillConfig(AppConfig):
    name = "backfill"
    default_auto_field = "django.db.models.BigAutoField"
