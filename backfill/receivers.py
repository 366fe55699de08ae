"""What backfill does when killboard reports on the killmails of its jobs."""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Greatest
from django.utils import timezone

from backfill.models import BackfillJob

logger = logging.getLogger(__name__)


def on_rejections_resolved(
    sender: Any, counts: dict[int, int], stored: dict[int, int] | None = None, **kwargs: Any
) -> None:
    """Receiver of `killboard.signals.rejections_resolved`: settle the jobs' counters.

    Each job's resolved killmails move from `rejected` to `stored` (or `already_stored`,
    those another run had stored), so nothing reads as pending; a partial job left with
    nothing failed or rejected has succeeded after all. One UPDATE a job, whose SET reads
    the row as it was, so a concurrent finish or retry cannot be overwritten.
    """
    stored = stored or {}
    for job_id, resolved in counts.items():
        if resolved <= 0:
            continue
        new = min(stored.get(job_id, 0), resolved)
        settled = Q(status=BackfillJob.Status.PARTIAL, failed=0, rejected__lte=resolved)
        updated = BackfillJob.objects.filter(pk=job_id).update(
            # Never below zero, should the counter and the quarantine disagree.
            rejected=Greatest(F("rejected") - resolved, Value(0)),
            stored=F("stored") + new,
            already_stored=F("already_stored") + (resolved - new),
            status=Case(
                When(settled, then=Value(BackfillJob.Status.SUCCEEDED)), default=F("status")
            ),
            updated_at=timezone.now(),
        )
        if updated:
            logger.info("Job %s: %s rejected killmail(s) resolved", job_id, resolved)
