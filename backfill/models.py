"""Backfill jobs: what to fetch, where the job stands, and what went wrong."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from backfill.paging import ZKB_PAGE_SIZE


class BackfillJobQuerySet(models.QuerySet):
    """The filters the job lifecycle (`backfill.lifecycle`) builds its conditional UPDATEs on."""

    def active(self) -> BackfillJobQuerySet:
        """Jobs still queued or running: the only ones any step may change."""
        return self.filter(status__in=BackfillJob.ACTIVE)

    def lease_free(self, now: datetime) -> BackfillJobQuerySet:
        """Jobs whose page no worker holds: never leased, or the lease ran out by `now`."""
        return self.filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))


class BackfillJob(models.Model):
    """The backfill of one target's killmail history, newest first, resumable at `cursor`.

    The cursor names the next zKillboard page to fetch: `all/N` (page N of the target's
    whole history) or `YYYY-MM/N` (page N of one month, for history deeper than 100 pages
    or before `to_date`). A `history` job has no target and no pages: its units of work are
    UTC days of R2Z2's day dumps (`BackfillDay`). `plan` is what the planner decided.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        # Finished, but some killmails failed or were rejected: never reported as succeeded.
        PARTIAL = "partial"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class TargetType(models.TextChoices):
        CHARACTER = "character"
        CORPORATION = "corporation"
        ALLIANCE = "alliance"
        SHIP_TYPE = "ship_type"
        SOLAR_SYSTEM = "solar_system"
        REGION = "region"
        # Every killmail of the days from_date..to_date, from R2Z2's day dumps (target_id 0).
        HISTORY = "history"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    # Paging done and nothing pending: every listed killmail was accounted for.
    FINISHED = (Status.SUCCEEDED, Status.PARTIAL)
    # Ended without every killmail stored: the CLI exits non-zero.
    UNSUCCESSFUL = (Status.PARTIAL, Status.FAILED, Status.CANCELLED)
    # The counters, in the order the summary names them.
    COUNTERS = (
        "pages_fetched",
        "dumps_fetched",
        "killmails_listed",
        "already_stored",
        "bodies_from_page",
        "bodies_from_dump",
        "bodies_from_esi",
        "stored",
        "failed",
        "rejected",
        "skipped_older",
        "skipped_newer",
    )

    target_type = models.CharField(
        max_length=16, choices=TargetType.choices, default=TargetType.CHARACTER
    )
    target_id = models.BigIntegerField()
    # Options, as the original system documents them.
    from_date = models.DateField(null=True, blank=True, help_text="Only killmails on or after.")
    to_date = models.DateField(null=True, blank=True, help_text="Only killmails on or before.")
    # An incremental run (`backfill TYPE ID --update`): pages newer than this (the last
    # complete run's start less the late-arrival overlap) are read; the listing stops at the
    # first page older than it whose killmails are all stored.
    update_since = models.DateTimeField(null=True, blank=True)
    max_pages = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: no bound.")
    limit = models.PositiveSmallIntegerField(default=ZKB_PAGE_SIZE, help_text="Killmails a page.")
    skip_existing = models.BooleanField(default=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    cursor = models.CharField(max_length=32, default="all/1")
    paging_done = models.BooleanField(default=False)
    # The oldest killmail id of page 100 of the whole history: month pages list only older ones.
    boundary_id = models.BigIntegerField(null=True, blank=True)
    # The month walk began where the statistics place page 100's last killmail (its body was
    # not on the page): until its first month page shows a killmail at least that new, the
    # guess may be too old, and the walk steps a month forward instead.
    walk_start_guessed = models.BooleanField(default=False)
    # A worker owns the page at `cursor` until then; a killed worker's claim simply expires.
    lease_until = models.DateTimeField(null=True, blank=True)
    # The planner's decisions and figures (backfill.planner.Plan.as_dict()).
    plan = models.JSONField(default=dict, blank=True)

    pages_fetched = models.PositiveIntegerField(default=0)
    dumps_fetched = models.PositiveIntegerField(
        default=0, help_text="R2Z2 day-dump downloads (totals, id lists, raw days)."
    )
    killmails_listed = models.PositiveIntegerField(default=0)
    already_stored = models.PositiveIntegerField(default=0)
    bodies_from_page = models.PositiveIntegerField(default=0)
    bodies_from_dump = models.PositiveIntegerField(default=0)
    bodies_from_esi = models.PositiveIntegerField(default=0)
    stored = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(
        default=0, help_text="Killmails that never got a body (ESI 422/404, unreachable, bad hash)."
    )
    rejected = models.PositiveIntegerField(
        default=0,
        help_text="Killmails whose body arrived but could not be stored "
        "(quarantined with their raw body in killboard's rejected killmails).",
    )
    skipped_older = models.PositiveIntegerField(
        default=0, help_text="Listed killmails older than from_date, not stored."
    )
    skipped_newer = models.PositiveIntegerField(
        default=0, help_text="Listed killmails newer than to_date, not stored."
    )

    last_error = models.TextField(blank=True)
    task_ids = models.JSONField(default=list, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = BackfillJobQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at",)
        permissions = [("start_backfill", "Can start, resume and retry backfills")]
        indexes = [
            # The admin's list of jobs by status, newest first.
            models.Index(fields=["status", "-created_at"], name="backfilljob_status_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(limit__gte=1, limit__lte=ZKB_PAGE_SIZE),
                name="backfilljob_limit_1_200",
            ),
            models.CheckConstraint(
                condition=models.Q(max_pages__isnull=True) | models.Q(max_pages__gte=1),
                name="backfilljob_max_pages_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"Backfill #{self.pk} of {self.target}"

    @property
    def target(self) -> str:
        """What the job backfills, in words: "corporation 98000001", "history 2026-08-01..."."""
        if self.target_type == self.TargetType.HISTORY:
            return f"history {self.from_date}..{self.to_date or 'yesterday'}"
        return f"{self.get_target_type_display().lower()} {self.target_id}"

    @property
    def max_killmails(self) -> int | None:
        """At most max_pages x limit killmails, newest first (None: no bound)."""
        return self.max_pages * self.limit if self.max_pages else None

    @property
    def needs_plan(self) -> bool:
        """Whether the job is still to be planned: a history job without days, or a scoped
        job that has not begun listing (a job from before plans goes on without one)."""
        if self.plan:
            return False
        if self.target_type == self.TargetType.HISTORY:
            return True
        return not self.paging_done and self.pages_fetched == 0 and self.cursor == "all/1"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def pending(self) -> int:
        """Killmails listed but not yet stored, failed, rejected or skipped."""
        return max(
            0,
            self.killmails_listed
            - self.already_stored
            - self.stored
            - self.failed
            - self.rejected
            - self.skipped_older
            - self.skipped_newer,
        )

    @property
    def progress(self) -> float | None:
        """Share of the work done, 0..1, when the work has a known size."""
        if self.status in self.FINISHED:
            return 1.0
        if self.max_killmails:
            done = self.killmails_listed - self.pending
            return min(1.0, done / self.max_killmails)
        return None

    @property
    def duration(self) -> timedelta | None:
        if not self.started_at:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def eta(self) -> timedelta | None:
        """Time left at the pace so far, when the work has a known size."""
        progress, duration = self.progress, self.duration
        if not progress or duration is None or progress >= 1:
            return None
        return duration * (1 - progress) / progress

    def counts(self) -> dict[str, int]:
        """The counters by name, then `pending`: what the CLI, GraphQL and the admin show."""
        return {**{name: getattr(self, name) for name in self.COUNTERS}, "pending": self.pending}

    def summary(self) -> dict[str, Any]:
        """The job as `backfill_character --json` prints it: status, counters, duration."""
        duration = self.duration
        return {
            "job": self.pk,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "status": self.status,
            **self.counts(),
            "duration_seconds": round(duration.total_seconds(), 1) if duration else None,
            "last_error": self.last_error,
        }

    def counts_line(self) -> str:
        """The counters in words; day dumps, `skipped_newer` and `pending` only when some."""
        dumps = f", {self.dumps_fetched} day dumps" if self.dumps_fetched else ""
        from_dumps = f", {self.bodies_from_dump} from day dumps" if self.bodies_from_dump else ""
        newer = f", {self.skipped_newer} newer than --to-date" if self.skipped_newer else ""
        pending = f", {self.pending} pending" if self.pending else ""
        return (
            f"{self.pages_fetched} pages{dumps}, {self.killmails_listed} killmails listed, "
            f"{self.stored} stored ({self.bodies_from_page} bodies from pages{from_dumps}, "
            f"{self.bodies_from_esi} from ESI), {self.already_stored} already stored, "
            f"{self.failed} failed, {self.rejected} rejected, "
            f"{self.skipped_older} older than --from-date{newer}{pending}"
        )

    def summary_line(self) -> str:
        """One line for humans: the job, its status, how long it took, its counters."""
        duration = self.duration
        took = f" in {duration.total_seconds():.1f}s" if duration else ""
        return f"{self} {self.status}{took}: {self.counts_line()}."

    def add_counts(self, **counts: int) -> None:
        """Add to counters atomically in the database (several workers report at once)."""
        changes = {name: F(name) + value for name, value in counts.items() if value}
        if changes:
            BackfillJob.objects.filter(pk=self.pk).update(**changes, updated_at=timezone.now())


class PendingKillmail(models.Model):
    """A listed killmail whose body is still to come from ESI, with the hash to fetch it."""

    job = models.ForeignKey(BackfillJob, on_delete=models.CASCADE, related_name="pending_bodies")
    killmail_id = models.BigIntegerField()
    killmail_hash = models.CharField(max_length=40)
    zkb = models.JSONField()
    # The month the listing places the killmail in (YYYYMM), when known.
    month = models.PositiveIntegerField(null=True, blank=True)
    # Waiting for the job's day dumps (BackfillDay); what they lack then goes to ESI.
    from_dump = models.BooleanField(default=False)
    # A worker fetching this body owns it until then (see backfill.services.claim_pending).
    claim = models.UUIDField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "killmail_id"], name="pending_unique_per_job"),
        ]

    def __str__(self) -> str:
        return f"killmail {self.killmail_id} pending for job {self.job_id}"


class FailedKillmail(models.Model):
    """A killmail the job could not store, and why (ESI 422, a body that broke the schema)."""

    job = models.ForeignKey(BackfillJob, on_delete=models.CASCADE, related_name="failures")
    killmail_id = models.BigIntegerField()
    killmail_hash = models.CharField(max_length=40, blank=True)
    zkb = models.JSONField(null=True, blank=True)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("killmail_id",)
        constraints = [
            models.UniqueConstraint(fields=["job", "killmail_id"], name="failure_unique_per_job"),
        ]

    def __str__(self) -> str:
        return f"killmail {self.killmail_id}: {self.reason}"


class BackfillDay(models.Model):
    """One UTC day of a job's work from R2Z2's day dumps, done once, whoever takes it.

    A `history` job lists the day's ids from `history/YYYYMMDD.json` and takes their bodies
    from the raw dump; a scoped job takes from the raw dump the bodies its pages lacked.
    """

    job = models.ForeignKey(BackfillJob, on_delete=models.CASCADE, related_name="days")
    day = models.DateField()
    # zKillboard's count of the day (history/totals.json) when the job was planned.
    count = models.PositiveIntegerField(default=0)
    claimed_until = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    # Killmails the day's work stored so far (kept across a crash in the middle of the day).
    stored = models.PositiveIntegerField(default=0)
    # The smallest and largest killmail id of the day's raw dump, once read: where the walk
    # over a dense month's days goes next (`backfill.planner.next_dump_day`).
    first_id = models.BigIntegerField(null=True, blank=True)
    last_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ("-day",)
        constraints = [
            models.UniqueConstraint(fields=["job", "day"], name="backfillday_unique_per_job"),
        ]

    def __str__(self) -> str:
        return f"{self.day} of job {self.job_id}"


class DayCoverage(models.Model):
    """The store's coverage of one UTC day of the whole game, as the day dumps count it.

    `complete` once every id of the day's dump is stored; a history backfill skips such a
    day unless zKillboard's count (`zkb_count`, from history/totals.json) has changed since.
    """

    day = models.DateField(primary_key=True)
    zkb_count = models.PositiveIntegerField()
    stored_count = models.PositiveIntegerField()
    complete = models.BooleanField(default=False)
    checked_at = models.DateTimeField()

    class Meta:
        ordering = ("-day",)
        verbose_name_plural = "day coverage"

    def __str__(self) -> str:
        return f"{self.day}: {self.stored_count} of {self.zkb_count}"


class TargetMonthCoverage(models.Model):
    """The store's coverage of one month of one backfill target, as zKillboard's statistics
    (`stats/{type}ID/ID/`, its `months`) count it: the months a later run still has to walk.
    """

    target_type = models.CharField(max_length=16, choices=BackfillJob.TargetType.choices)
    target_id = models.BigIntegerField()
    # YYYYMM, as the planner keys months.
    month = models.PositiveIntegerField()
    zkb_count = models.PositiveIntegerField()
    stored_count = models.PositiveIntegerField()
    checked_at = models.DateTimeField()

    class Meta:
        ordering = ("target_type", "target_id", "-month")
        verbose_name_plural = "target month coverage"
        constraints = [
            models.UniqueConstraint(
                fields=["target_type", "target_id", "month"], name="targetmonthcoverage_unique"
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.target_type} {self.target_id} {self.month}: "
            f"{self.stored_count} of {self.zkb_count}"
        )

    @property
    def complete(self) -> bool:
        return self.stored_count >= self.zkb_count


class CoverageGap(models.Model):
    """A stretch of the live feed the follower could not read (it was down longer than R2Z2
    keeps the feed's files), handed to the coverage ledger: the days it spans are re-checked
    against the day dumps and repaired once dumped."""

    # The sequences the follower missed, first..last inclusive.
    first_sequence = models.BigIntegerField()
    last_sequence = models.BigIntegerField()
    # The upload times around the gap: the last package read before it, the first after.
    start = models.DateTimeField()
    end = models.DateTimeField()
    noted_at = models.DateTimeField(auto_now_add=True)
    # The history job that repairs the gap's days, once they are dumped.
    repair_job = models.ForeignKey(
        BackfillJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-noted_at",)

    def __str__(self) -> str:
        return f"live gap {self.first_sequence}..{self.last_sequence} ({self.start}..{self.end})"
