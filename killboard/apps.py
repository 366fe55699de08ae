"""App configuration."""

from __future__ import annotations

from django.apps import AppConfig


class KillboardConfig(AppConfig):
    name = "killboard"
    default_auto_field = "django.db.models.BigAutoField"
