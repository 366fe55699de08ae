"""The Prometheus metrics, read from the database (and the broker) at every scrape.

Nothing is counted in process memory: web, workers and the follower each run in processes
of their own, and the database already holds every figure an operator alerts on. Counters
are sums over the jobs' counters (a deleted job takes its share away: Prometheus reads that
as a counter reset). The jobs still queued or running also show their own counters, labelled
with their id, so a stalled job is one whose `killboard_backfill_job_progress` stops moving.

Queue lengths come from the broker (a passive declare of each queue of config/queues.py);
without a broker (the embedded default) they are absent. ESI's budgets are what the ESI
client last saw in its answers' headers (`killboard.ratelimit.observe`, in the shared cache).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from django.conf import settings
from django.db.models import Count, F, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from backfill.models import BackfillJob, CoverageGap, DayCoverage
from config.queues import QUEUES
from killboard import ratelimit
from killboard.models import RateLimit, RejectedKillmail
from live.models import FollowerState
from monitoring import health
from upstream.esi import ERROR_GATE

logger = logging.getLogger(__name__)

# Job counters by the metric (and label) they are summed into.
KILLMAIL_OUTCOMES = {
    "listed": "killmails_listed",
    "stored": "stored",
    "already_stored": "already_stored",
    "failed": "failed",
    "rejected": "rejected",
    "skipped_older": "skipped_older",
    "skipped_newer": "skipped_newer",
}
BODY_SOURCES = {"page": "bodies_from_page", "dump": "bodies_from_dump", "esi": "bodies_from_esi"}
FETCHES = {"zkillboard_page": "pages_fetched", "r2z2_dump": "dumps_fetched"}
LIVE_OUTCOMES = ("stored", "already_stored", "zkb_refreshed", "rejected")


def _jobs() -> Iterator[Metric]:
    by_status = GaugeMetricFamily(
        "killboard_backfill_jobs", "Backfill jobs by status.", labels=["status"]
    )
    counts = dict(BackfillJob.objects.values_list("status").annotate(n=Count("pk")))
    for status in BackfillJob.Status.values:
        by_status.add_metric([status], counts.get(status, 0))
    yield by_status

    sums = BackfillJob.objects.aggregate(**{name: Sum(name) for name in BackfillJob.COUNTERS})
    families = (
        (
            "killboard_backfill_killmails",
            "Killmails of every job by outcome.",
            "outcome",
            KILLMAIL_OUTCOMES,
        ),
        (
            "killboard_backfill_bodies",
            "Killmail bodies of every job by source.",
            "source",
            BODY_SOURCES,
        ),
        (
            "killboard_backfill_fetches",
            "zKillboard pages and R2Z2 day dumps fetched.",
            "kind",
            FETCHES,
        ),
    )
    for name, documentation, label, fields in families:
        family = CounterMetricFamily(name, documentation, labels=[label])
        for value, field in fields.items():
            family.add_metric([value], sums[field] or 0)
        yield family

    progress = GaugeMetricFamily(
        "killboard_backfill_job_progress",
        "Counters of each queued or running job.",
        labels=["job_id", "counter"],
    )
    for row in BackfillJob.objects.active().order_by("pk").values("pk", *BackfillJob.COUNTERS):
        for counter in BackfillJob.COUNTERS:
            progress.add_metric([str(row["pk"]), counter], row[counter])
    yield progress

    rejected = GaugeMetricFamily(
        "killboard_rejected_killmails", "Killmails quarantined as rejected, not yet retried."
    )
    rejected.add_metric([], RejectedKillmail.objects.count())
    yield rejected


def _limits() -> Iterator[Metric]:
    now = time.time()
    rows = list(RateLimit.objects.order_by("name").values_list("name", "next_at", "blocked_until"))
    blocked = GaugeMetricFamily(
        "killboard_rate_limit_blocked_seconds",
        "Seconds every process is still held back from a limit (429, 420, a low budget).",
        labels=["limit"],
    )
    backlog = GaugeMetricFamily(
        "killboard_rate_limit_backlog_seconds",
        "Seconds until a limit's next free request slot (requests already reserved).",
        labels=["limit"],
    )
    for name, next_at, blocked_until in rows:
        blocked.add_metric([name], max(0.0, blocked_until - now))
        backlog.add_metric([name], max(0.0, next_at - now))
    yield blocked
    yield backlog

    # The error gate has a row only once it was closed: requests read it, they take no slot.
    observed = ratelimit.observed(sorted({ERROR_GATE, *(name for name, _, _ in rows)}))
    remaining = GaugeMetricFamily(
        "killboard_esi_tokens_remaining",
        "Tokens ESI said were left in a route group's bucket, at its last answer.",
        labels=["group"],
    )
    capacity = GaugeMetricFamily(
        "killboard_esi_tokens_limit", "Tokens of a route group's bucket.", labels=["group"]
    )
    errors = GaugeMetricFamily(
        "killboard_esi_error_limit_remaining",
        "Errors ESI said were left in its error window (X-ESI-Error-Limit-Remain).",
    )
    age = GaugeMetricFamily(
        "killboard_esi_budget_age_seconds",
        "Seconds since ESI last said what was left of a budget.",
        labels=["limit"],
    )
    for name, seen in sorted(observed.items()):
        age.add_metric([name], max(0.0, now - seen.at))
        if name == ERROR_GATE:
            errors.add_metric([], seen.remaining)
        elif name.startswith("esi:"):
            group = name.removeprefix("esi:")
            remaining.add_metric([group], seen.remaining)
            if seen.limit is not None:
                capacity.add_metric([group], seen.limit)
    yield from (remaining, capacity, errors, age)


def queue_lengths(queues: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(messages ready, consumers) of each queue that exists on the configured broker."""
    lengths = {}
    with health.broker_connection() as broker:
        broker.ensure_connection(max_retries=1, timeout=health.BROKER_TIMEOUT)
        for queue in queues:
            channel = broker.channel()
            try:
                _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
            except broker.channel_errors:
                continue  # not declared yet: no worker or task has used it
            finally:
                try:
                    channel.close()
                except broker.connection_errors + broker.channel_errors:
                    pass
            lengths[queue] = (messages, consumers)
    return lengths


def _queues() -> Iterator[Metric]:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return
    up = GaugeMetricFamily("killboard_broker_up", "Whether the broker answered this scrape.")
    try:
        lengths = queue_lengths(QUEUES)
    except Exception as exc:
        logger.warning("Metrics: broker unreachable: %r", exc)
        up.add_metric([], 0)
        yield up
        return
    up.add_metric([], 1)
    yield up
    messages = GaugeMetricFamily(
        "killboard_queue_messages", "Messages waiting in a Celery queue.", labels=["queue"]
    )
    consumers = GaugeMetricFamily(
        "killboard_queue_consumers", "Workers consuming a Celery queue.", labels=["queue"]
    )
    for queue, (ready, consuming) in lengths.items():
        messages.add_metric([queue], ready)
        consumers.add_metric([queue], consuming)
    yield messages
    yield consumers


def _live() -> Iterator[Metric]:
    now = timezone.now()
    gauges = {
        "lag": GaugeMetricFamily(
            "killboard_live_lag_seconds",
            "How far behind the upload time the follower stored its last package.",
            labels=["feed"],
        ),
        "behind": GaugeMetricFamily(
            "killboard_live_behind_sequences",
            "Packages between the follower's next one and the feed's published position.",
            labels=["feed"],
        ),
        "last": GaugeMetricFamily(
            "killboard_live_last_sequence", "The last package read.", labels=["feed"]
        ),
        "heartbeat": GaugeMetricFamily(
            "killboard_live_heartbeat_age_seconds",
            "Seconds since the follower last showed it was alive.",
            labels=["feed"],
        ),
    }
    killmails = CounterMetricFamily(
        "killboard_live_killmails", "Live packages by outcome.", labels=["feed", "outcome"]
    )
    errors = CounterMetricFamily(
        "killboard_live_errors", "Errors the follower met.", labels=["feed"]
    )
    for state in FollowerState.objects.order_by("name"):
        feed = [state.name]
        if state.lag_seconds is not None:
            gauges["lag"].add_metric(feed, state.lag_seconds)
        if state.head_sequence is not None and state.sequence is not None:
            gauges["behind"].add_metric(feed, max(0, state.head_sequence - state.sequence + 1))
        if state.last_sequence is not None:
            gauges["last"].add_metric(feed, state.last_sequence)
        if state.heartbeat_at is not None:
            gauges["heartbeat"].add_metric(feed, (now - state.heartbeat_at).total_seconds())
        for outcome in LIVE_OUTCOMES:
            killmails.add_metric([state.name, outcome], getattr(state, outcome))
        errors.add_metric(feed, state.errors)
    yield from gauges.values()
    yield killmails
    yield errors


def _coverage() -> Iterator[Metric]:
    days = GaugeMetricFamily(
        "killboard_coverage_days", "Days of the coverage ledger by state.", labels=["state"]
    )
    counts = dict(DayCoverage.objects.values_list("complete").annotate(n=Count("pk")))
    days.add_metric(["complete"], counts.get(True, 0))
    days.add_metric(["short"], counts.get(False, 0))
    yield days
    missing = GaugeMetricFamily(
        "killboard_coverage_missing_killmails",
        "Killmails zKillboard counts on short days that the store lacks.",
    )
    short = DayCoverage.objects.filter(complete=False, zkb_count__gt=F("stored_count"))
    total = short.aggregate(n=Sum(F("zkb_count") - F("stored_count")))["n"]
    missing.add_metric([], total or 0)
    yield missing
    gaps = GaugeMetricFamily("killboard_coverage_open_gaps", "Live feed gaps not repaired yet.")
    gaps.add_metric([], CoverageGap.objects.filter(closed_at__isnull=True).count())
    yield gaps


def _beat() -> Iterator[Metric]:
    age = health.heartbeat_age()
    if age is not None:
        family = GaugeMetricFamily(
            "killboard_beat_heartbeat_age_seconds", "Seconds since beat's last heartbeat."
        )
        family.add_metric([], age)
        yield family


class KillboardCollector(Collector):
    """Every metric of the deployment, read when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        for part in (_jobs, _limits, _queues, _live, _coverage, _beat):
            yield from part()


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(KillboardCollector())
