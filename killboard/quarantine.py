"""The quarantine: killmails that arrived but could not be stored, kept whole until retried.

Ingest writes every rejected record, exactly as it came, to `RejectedKillmail` in the
transaction of its batch. Retrying ingests the raw records again: a row leaves the
quarantine in the same transaction that stores its killmail (or finds it stored already),
so a killmail is always either stored or quarantined, never neither. What is still rejected
stays, with the reason of this attempt. The jobs that brought the rows hear of it through
`killboard.signals.rejections_resolved` once that transaction commits.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from django.db import transaction
from django.db.models import Max, QuerySet, TextField
from django.db.models.functions import Cast

from killboard.ingest import ingest_killmails, split_record
from killboard.inputs import InvalidInput, positive_id
from killboard.models import RejectedKillmail
from killboard.signals import rejections_resolved

logger = logging.getLogger(__name__)

# Rows retried in one transaction, and exported per query: bounds memory to this many raw
# records (a titan's killmail with its 982 attackers is about 300 kB).
CHUNK = 100


@dataclass(frozen=True)
class RetryOutcome:
    """What a retry did with the rows it walked."""

    stored: int = 0
    already_stored: int = 0
    still_rejected: int = 0

    @property
    def retried(self) -> int:
        return self.stored + self.already_stored + self.still_rejected

    def __add__(self, other: RetryOutcome) -> RetryOutcome:
        return RetryOutcome(
            self.stored + other.stored,
            self.already_stored + other.already_stored,
            self.still_rejected + other.still_rejected,
        )

    def summary(self) -> str:
        """One line for humans, to follow "Retried "."""
        return (
            f"{self.retried} rejected killmail(s): {self.stored} stored, "
            f"{self.already_stored} already stored, {self.still_rejected} still rejected"
        )


def parse_job_id(value: str | None) -> int | None:
    """A `--job` value from user input (None: every job), or `InvalidInput` saying why."""
    if value is None:
        return None
    job_id = positive_id(value.strip())
    if job_id is None:
        raise InvalidInput(
            f"--job must be a backfill job id (a positive whole number), got {value!r}"
        )
    return job_id


def retry_rejected(
    job_id: int | None = None, *, rows: QuerySet[RejectedKillmail] | Iterable[int] | None = None
) -> RetryOutcome:
    """Ingest the quarantined records again (those of one job, or all); report what happened.

    `rows` narrows the walk to a queryset of rejected killmails or to their primary keys
    (the admin's selection). Rows are walked by primary key, CHUNK at a time, each chunk in
    one transaction; only rows present when the walk starts are retried.
    """
    if rows is None:
        queryset = RejectedKillmail.objects.all()
    elif isinstance(rows, QuerySet):
        queryset = rows
    else:
        queryset = RejectedKillmail.objects.filter(pk__in=list(rows))
    queryset = queryset.of_job(job_id).order_by("pk")
    last_pk = queryset.aggregate(last=Max("pk"))["last"]
    outcome = RetryOutcome()
    after = 0
    while last_pk is not None:
        chunk = list(queryset.filter(pk__gt=after, pk__lte=last_pk)[:CHUNK])
        if not chunk:
            break
        after = chunk[-1].pk
        outcome += _retry_chunk(chunk)
    return outcome


def _retry_chunk(chunk: list[RejectedKillmail]) -> RetryOutcome:
    """Retry one chunk in one transaction: store what passes, drop its rows, keep the rest."""
    # Ingest records a rejection under the source and job it is given: each its own.
    groups: dict[tuple[str, int | None], list[RejectedKillmail]] = defaultdict(list)
    for row in chunk:
        groups[(row.source, row.job_id)].append(row)
    resolved: list[int] = []
    left_by_job: Counter[int] = Counter()
    stored_by_job: Counter[int] = Counter()
    outcome = RetryOutcome()
    with transaction.atomic():
        for (source, job_id), rows in groups.items():
            result = ingest_killmails([row.record for row in rows], source=source, job_id=job_id)
            # Rejections carry the very record object they were given: it names its row.
            again = {id(rejection.record) for rejection in result.rejected}
            new_ids = set(result.new_ids)
            stored = already = 0
            for row in rows:
                if id(row.record) in again:
                    continue
                resolved.append(row.pk)
                killmail_id = split_record(row.record)[0]["killmail_id"]
                if killmail_id in new_ids:
                    # Two rows of one killmail: the first stored it, the second found it.
                    new_ids.discard(killmail_id)
                    stored += 1
                else:
                    already += 1
            outcome += RetryOutcome(stored, already, len(rows) - stored - already)
            if job_id is not None and stored + already:
                left_by_job[job_id] += stored + already
                stored_by_job[job_id] += stored
        RejectedKillmail.objects.filter(pk__in=resolved).delete()
        if left_by_job:
            counts, stored_counts = dict(left_by_job), dict(stored_by_job)
            transaction.on_commit(
                lambda: rejections_resolved.send(
                    sender=RejectedKillmail, counts=counts, stored=stored_counts
                )
            )
    logger.info("Retried %s", outcome.summary())
    return outcome


def iter_rejected_lines(job_id: int | None = None) -> Iterator[str]:
    """The quarantined records of one job (or all) as stored: one JSON text each, by row id.

    The text is read as the database holds it, not decoded and encoded again, CHUNK rows
    per query, so memory stays bounded.
    """
    queryset = (
        RejectedKillmail.objects.of_job(job_id)
        .order_by("pk")
        .annotate(text=Cast("record", TextField()))
        .values_list("pk", "text")
    )
    after = 0
    while chunk := list(queryset.filter(pk__gt=after)[:CHUNK]):
        for _, text in chunk:
            yield text
        after = chunk[-1][0]


def write_jsonl(records: Iterable[Any], stream: TextIO) -> int:
    """Write records as JSON Lines, as `RejectedKillmail.record` stores them; return the count."""
    count = 0
    for record in records:
        stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        count += 1
    return count
