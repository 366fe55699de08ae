"""Beat's heartbeat, the proof /healthz reads that beat, the broker and a worker move."""

from __future__ import annotations

from celery import shared_task

from monitoring import health


@shared_task(ignore_result=True)
def beat_heartbeat() -> None:
    """Store the time: beat queues this every 60 seconds (settings.CELERY_BEAT_SCHEDULE)."""
    health.beat()
