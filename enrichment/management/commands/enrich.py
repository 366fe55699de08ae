"""`manage.py enrich [--wait] [--refresh]`: names and details of stored entities, on demand.

In-process (no broker, the embedded default) it resolves every due name, then fetches the
details of every named entity never detailed (and, with --refresh, of those older than
ENRICHMENT_MAX_AGE), and prints one summary line. With a broker it queues the same work;
--wait then polls until no name is pending.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrichment import services, tasks
from killboard.entities import DETAILED
from upstream.errors import UpstreamError

POLL_SECONDS = 2.0


class Command(BaseCommand):
    help = "Resolve names and details of stored entities from ESI."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--wait", action="store_true", help="With a broker: wait until no name is pending."
        )
        parser.add_argument(
            "--names-only", action="store_true", help="Resolve names, fetch no details."
        )
        parser.add_argument(
            "--refresh",
            action="store_true",
            help="Also fetch again details older than ENRICHMENT_MAX_AGE.",
        )

    def handle(
        self, *args: Any, wait: bool, refresh: bool, names_only: bool, **options: Any
    ) -> None:
        try:
            if settings.CELERY_TASK_ALWAYS_EAGER:
                self._run_in_process(refresh, names_only)
            else:
                self._queue(refresh, wait, names_only)
        except UpstreamError as exc:
            raise CommandError(f"ESI failed: {exc}") from exc
        self.stdout.write(services.format_counts(services.enrichment_counts()))

    def _run_in_process(self, refresh: bool, names_only: bool) -> None:
        named = tasks.resolve_names.delay(details=False).get()
        self.stdout.write(
            f"names: {named['resolved']} resolved in {named['calls']} calls, "
            f"{named['unresolvable']} unresolvable"
        )
        for kind in () if names_only else (entry.kind for entry in DETAILED):
            done: set[int] = set()
            while True:
                if refresh:
                    ids = services.stale_entities(
                        kind, settings.ENRICHMENT_MAX_AGE, tasks.DETAIL_BATCH
                    )
                else:
                    ids = services.undetailed_entities(kind, tasks.DETAIL_BATCH)
                ids = [entity_id for entity_id in ids if entity_id not in done]
                if not ids:
                    break
                tasks.send_details(kind, ids).get()
                done.update(ids)
            if done:
                self.stdout.write(f"details: {len(done)} {kind} ids fetched or checked")

    def _queue(self, refresh: bool, wait: bool, names_only: bool) -> None:
        queued = tasks.enqueue_enrichment(details=not names_only)
        details = 0
        for kind in () if names_only else (entry.kind for entry in DETAILED):
            ids = services.undetailed_entities(kind, tasks.REFRESH_BATCH)
            tasks.queue_details({kind: ids})
            details += len(ids)
        if refresh:
            tasks.refresh_stale.delay()
        self.stdout.write(
            f"queued: name scan {'yes' if queued else 'already queued'}, "
            f"{details} detail ids{', refresh' if refresh else ''}"
        )
        if not wait:
            return
        while True:
            counts = services.enrichment_counts()
            pending = sum(c["pending"] for c in counts.values())
            if not pending:
                return
            self.stdout.write(f"{pending} names pending", ending="\r")
            self.stdout.flush()
            time.sleep(POLL_SECONDS)
