"""Where the live follower stands: one row per feed, written with every package it reads.

The row is the follower's cursor (`sequence`, the next package to read) and its dashboard
(lag, rate, counters, last error, heartbeat). The cursor moves in the same transaction that
stores the package, so a killed follower resumes at the package it had not committed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.utils import timezone

# A follower whose heartbeat is older than this is shown as not running (seconds). It beats
# at every poll (about every second) and every package, and before each wait on an error.
RUNNING_WITHIN = timedelta(seconds=60)


class FollowerState(models.Model):
    """The position and health of one live feed's follower (`name` "r2z2")."""

    name = models.CharField(max_length=32, primary_key=True)
    # The next sequence to read; null until the first start reads sequence.json.
    sequence = models.BigIntegerField(null=True, blank=True)
    # The feed's published position (sequence.json) when last looked at.
    head_sequence = models.BigIntegerField(null=True, blank=True)
    # The last package read and stored (or quarantined).
    last_sequence = models.BigIntegerField(null=True, blank=True)
    last_killmail_id = models.BigIntegerField(null=True, blank=True)
    last_uploaded_at = models.DateTimeField(null=True, blank=True)
    # Seconds between the last package's upload to R2Z2 and its storing here.
    lag_seconds = models.FloatField(null=True, blank=True)
    # Packages read in about the last minute.
    killmails_per_minute = models.FloatField(default=0.0)

    packages_read = models.BigIntegerField(default=0)
    stored = models.BigIntegerField(default=0)
    # Killmails already stored (processed again by zKillboard, or read by a backfill).
    already_stored = models.BigIntegerField(default=0)
    zkb_refreshed = models.BigIntegerField(default=0)
    # Packages quarantined by ingest (RejectedKillmail), never dropped.
    rejected = models.BigIntegerField(default=0)
    # Sequences that were never there (the next one was): skipped.
    holes = models.BigIntegerField(default=0)
    # Stretches of expired files handed to the coverage ledger (backfill.CoverageGap).
    gaps = models.BigIntegerField(default=0)
    # 404s at the head: "not yet", waited for.
    not_found_waits = models.BigIntegerField(default=0)
    # The last of them: a restarted follower waits R2Z2's 6 seconds before asking it again.
    not_found_sequence = models.BigIntegerField(null=True, blank=True)
    not_found_at = models.DateTimeField(null=True, blank=True)
    errors = models.BigIntegerField(default=0)

    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "live follower"

    def __str__(self) -> str:
        return f"{self.name} follower at sequence {self.sequence}"

    def is_running(self, now: datetime | None = None) -> bool:
        """Whether the follower beat recently (a process is following the feed)."""
        if self.heartbeat_at is None:
            return False
        return (now or timezone.now()) - self.heartbeat_at <= RUNNING_WITHIN
