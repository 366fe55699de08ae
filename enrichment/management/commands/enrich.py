"""`manage.py enrich [--wait] [--names-only] [--refresh]`: enrichment of stored entities, now.

In-process (no broker, the embedded default) it runs the phases one after another: names
(POST /universe/names/), affiliations (POST /characters/affiliation/), then the details of
each kind in registry order (corporations, alliances, types, groups, categories, systems,
constellations), naming again what a phase brought before the next needs it. With
--refresh it also fetches again affiliations and details older than ENRICHMENT_MAX_AGE
(pilots' details only where fetched before). With a broker it queues the same work; --wait
then follows the pending counts until none is left.

Each phase shows a progress bar with an ETA on a terminal (stderr) and ends with one plain
line; a run that waited (in-process always) ends with the ESI calls it made by route group
(the shared limiter's counts before and after) and the counts of every kind.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from enrichment import services, tasks
from killboard import ratelimit
from killboard.entities import DETAILED, EntityKind
from upstream.errors import UpstreamError
from upstream.esi import AFFILIATION_MAX_IDS, NAMES_MAX_IDS

POLL_SECONDS = 2.0
# Ids per detail task in-process: enough for the calls of one batch to fill ESI_CONCURRENCY
# many times over, and a batch's rows are written together.
IN_PROCESS_BATCH = tasks.MAX_IDS_PER_TASK


def progress(description: str, total: int, position: int = 0) -> tqdm:
    """A progress bar with an ETA on stderr, shown only on a terminal."""
    return tqdm(
        total=total,
        desc=description,
        unit=" ids",
        position=position,
        leave=True,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )


class Command(BaseCommand):
    help = "Resolve names, affiliations and details of stored entities from ESI."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--wait",
            action="store_true",
            help="With a broker: wait until nothing is pending, then print the calls made.",
        )
        parser.add_argument(
            "--names-only", action="store_true", help="Resolve names, fetch nothing else."
        )
        parser.add_argument(
            "--refresh",
            action="store_true",
            help="Also fetch again affiliations and details older than ENRICHMENT_MAX_AGE.",
        )

    def handle(
        self, *args: Any, wait: bool, refresh: bool, names_only: bool, **options: Any
    ) -> None:
        before = ratelimit.calls()
        in_process = settings.CELERY_TASK_ALWAYS_EAGER
        try:
            if in_process:
                self._run_in_process(refresh, names_only)
            else:
                self._queue(refresh, names_only)
                if wait:
                    self._wait(names_only)
        except UpstreamError as exc:
            raise CommandError(f"ESI failed: {exc}") from exc
        if in_process or wait:
            calls = services.calls_by_group(before, ratelimit.calls())
            self.stdout.write(services.format_calls(calls))
        self.stdout.write(services.format_counts(services.enrichment_counts()))

    # -- in-process ----------------------------------------------------------------------

    def _run_in_process(self, refresh: bool, names_only: bool) -> None:
        self._names(always=True)
        if names_only:
            return
        self._affiliations(refresh)
        for entry in DETAILED:
            if entry.details_on_demand and not refresh:
                continue  # pilots' details: where something shows them, and their refresh
            if entry.named:
                self._names()  # what the phases before brought (corporations, constellations)
            self._details(entry, refresh)
        self._names()  # what the last phases brought (regions)

    def _names(self, always: bool = False) -> None:
        total = len(services.pending_names())
        if not total and not always:
            return
        started = time.monotonic()
        done: Counter[str] = Counter()
        with progress("names", total) as bar:
            while True:
                run = tasks.resolve_names.delay(details=False, limit=NAMES_MAX_IDS).get()
                if not run["calls"]:
                    break
                done.update(run)
                bar.update(run["resolved"] + run["unresolvable"])
        self.stdout.write(
            f"names: {done['resolved']} resolved in {done['calls']} calls, "
            f"{done['unresolvable']} unresolvable ({time.monotonic() - started:.1f}s)"
        )

    def _affiliations(self, refresh: bool) -> None:
        total = len(services.affiliation_due(refresh=refresh))
        started = time.monotonic()
        done: Counter[str] = Counter()
        with progress("affiliations", total) as bar:
            while True:
                run = tasks.resolve_affiliations.delay(
                    refresh=refresh, limit=AFFILIATION_MAX_IDS, follow=False
                ).get()
                if not run["calls"]:
                    break
                done.update(run)
                bar.update(run["updated"] + run["unknown"])
        self.stdout.write(
            f"affiliations: {done['updated']} pilots in {done['calls']} calls, "
            f"{done['unknown']} unknown, {done['created']} new corporations, alliances and "
            f"factions ({time.monotonic() - started:.1f}s)"
        )

    def _details(self, entry: EntityKind, refresh: bool) -> None:
        kind = entry.kind
        total = services.count_due_details(kind, refresh)
        started = time.monotonic()
        done: set[int] = set()
        outcome: Counter[str] = Counter()
        with progress(f"details {kind}", total) as bar:
            while True:
                # What a batch skipped (still within Expires, or gone) stays due: look past it.
                limit = IN_PROCESS_BATCH + outcome["fresh"] + outcome["unknown"]
                if refresh:
                    ids = services.stale_entities(kind, settings.ENRICHMENT_MAX_AGE, limit)
                else:
                    ids = services.undetailed_entities(kind, limit)
                ids = [entity_id for entity_id in ids if entity_id not in done][:IN_PROCESS_BATCH]
                if not ids:
                    break
                run = tasks.send_details(kind, ids, follow=False).get()
                outcome.update({key: value for key, value in run.items() if key != "created"})
                outcome.update(created=sum(run["created"].values()))
                done.update(ids)
                bar.update(len(ids))
        if done:
            self.stdout.write(
                f"details {kind}: {len(done)} in {time.monotonic() - started:.1f}s: "
                f"{outcome['updated']} updated, {outcome['unchanged']} unchanged, "
                f"{outcome['not_found']} not found, {outcome['fresh']} fresh, "
                f"{outcome['created']} new referenced"
            )

    # -- with a broker -------------------------------------------------------------------

    def _queue(self, refresh: bool, names_only: bool) -> None:
        queued = tasks.enqueue_enrichment(details=not names_only)
        details = 0
        if not names_only:
            tasks.enqueue_affiliations()
            for entry in DETAILED:
                ids = services.undetailed_entities(entry.kind, None)
                tasks.queue_details({entry.kind: ids})
                details += len(ids)
        if refresh and not names_only:
            tasks.refresh_stale.delay()
        self.stdout.write(
            f"queued: name scan {'yes' if queued else 'already queued'}, "
            f"{details} detail ids{', refresh' if refresh else ''}"
        )

    def _wait(self, names_only: bool) -> None:
        """Follow the pending counts of every kind until none is left."""
        bars: dict[str, tqdm] = {}
        try:
            while True:
                pending = self._pending(names_only)
                for kind, left in pending.items():
                    if kind not in bars and left:
                        bars[kind] = progress(kind, left, position=len(bars))
                    if kind in bars:
                        bar = bars[kind]
                        bar.total = max(bar.total, bar.n + left)
                        bar.update(max(0, bar.total - left - bar.n))
                if not any(pending.values()):
                    return
                time.sleep(POLL_SECONDS)
        finally:
            for bar in bars.values():
                bar.close()

    @staticmethod
    def _pending(names_only: bool) -> dict[str, int]:
        if names_only:
            owners = services.pending_names()
            return dict(Counter(kind for kinds in owners.values() for kind in kinds))
        return {kind: row["pending"] for kind, row in services.enrichment_counts().items()}
