"""The follower's page: where it stands, how far behind the feed, how fast, what went wrong.

Read-only: the follower alone writes its row.
"""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone

from killboard.admin import ReadOnlyAdmin
from live.models import FollowerState


@admin.register(FollowerState)
class FollowerStateAdmin(ReadOnlyAdmin):
    list_display = (
        "name",
        "running",
        "sequence",
        "behind",
        "lag",
        "killmails_per_minute",
        "stored",
        "errors",
        "last_error_at",
    )
    fields = readonly_fields = (
        "name",
        "running",
        "heartbeat_at",
        "started_at",
        "sequence",
        "head_sequence",
        "behind",
        "last_sequence",
        "last_killmail_id",
        "last_uploaded_at",
        "lag",
        "killmails_per_minute",
        "packages_read",
        "stored",
        "already_stored",
        "zkb_refreshed",
        "rejected",
        "holes",
        "gaps",
        "not_found_waits",
        "errors",
        "last_error",
        "last_error_at",
    )

    @admin.display(description="running", boolean=True)
    def running(self, obj: FollowerState) -> bool:
        return obj.is_running(timezone.now())

    @admin.display(description="lag")
    def lag(self, obj: FollowerState) -> str:
        return "-" if obj.lag_seconds is None else f"{obj.lag_seconds:.1f} s"

    @admin.display(description="sequences behind the published one")
    def behind(self, obj: FollowerState) -> str:
        if obj.sequence is None or obj.head_sequence is None:
            return "-"
        return str(max(0, obj.head_sequence + 1 - obj.sequence))
