"""Enrichment's own state; the entities it enriches live in `killboard.models`."""

from __future__ import annotations

from django.db import models


class QueuedRun(models.Model):
    """A scan task that is queued and has not started yet, shared by every process.

    A backfill sends "killmails stored" after every batch; with this row only the first of a
    burst queues the name scan, the others find it queued and know it will see their rows.
    The task clears `queued_at` when it starts, so a batch stored after that queues the next.
    """

    name = models.CharField(max_length=64, primary_key=True)
    # When the pending run was queued; null when none is pending.
    queued_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name
