"""What the backfill commands share: run or queue a job, follow it, print and judge it.

Without a broker the job runs in this process (a thread, the command following it with a
progress bar); with one it is queued, and `--wait` follows it to its end. A job that ended
with anything not stored (partial, failed, cancelled) makes the command exit non-zero.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections, connection
from tqdm import tqdm

from backfill import lifecycle, planning, tasks, updates
from backfill.models import BackfillJob
from backfill.planner import Plan
from killboard.inputs import parse_whole_number
from upstream.errors import UpstreamError

# Seconds between two looks at the job while following it.
POLL_SECONDS = 0.5


def whole_number(value: str | None, name: str) -> int | None:
    return None if value is None else parse_whole_number(value, name)


class JobCommand(BaseCommand):
    """A command that starts one backfill job and reports how it ended."""

    def add_run_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--estimate",
            action="store_true",
            help="print the plan (requests, sources, time) and start nothing",
        )
        parser.add_argument("--wait", action="store_true", help="with a broker: follow the job")
        parser.add_argument("--json", action="store_true", help="print a JSON summary")

    def estimate_or_run(
        self, job: BackfillJob, options: dict[str, Any], make_plan: Callable[[], Plan]
    ) -> None:
        """With --estimate, print the job's plan (`make_plan()`) and start nothing; else save
        the job and run it."""
        if not options["estimate"]:
            job.save()
            self.run(job, options)
            return
        try:
            plan = make_plan()
        except UpstreamError as exc:
            raise CommandError(f"no estimate: {exc}") from None
        if options["json"]:
            since = job.update_since.isoformat() if job.update_since else None
            self.stdout.write(json.dumps({**plan.as_dict(), "update_since": since}))
            return
        self.stdout.write(f"Plan for {updates.title(job)}:")
        run = None
        if job.update_since:
            run = updates.last_complete_run(job.target_type, job.target_id)
        for line in [*updates.plan_lines(job, plan, run), *plan.lines(planning.rates())]:
            self.stdout.write(f"  {line}")

    def run(self, job: BackfillJob, options: dict[str, Any]) -> None:
        """Run (no broker) or queue the job, follow it as asked, print it, judge it."""
        in_process = settings.CELERY_TASK_ALWAYS_EAGER
        if in_process:
            runner = threading.Thread(target=self._run, args=(job.pk,), daemon=True)
            runner.start()
        else:
            tasks.start_job(job.pk)
            if not options["json"]:
                self.stdout.write(f"Queued backfill job #{job.pk} of {job.target}.")
        if in_process or options["wait"]:
            job = self._follow(job.pk)
        if in_process:
            # Tasks the job's end left queued in the runner (enrichment, late steps) run out
            # first: one thread at a time runs tasks in this process.
            runner.join()
        job.refresh_from_db()
        summary = json.dumps(updates.summary(job)) if options["json"] else updates.summary_line(job)
        self.stdout.write(summary)
        if in_process:
            self._resolve_names(self.stderr if options["json"] else self.stdout)
        if job.status == BackfillJob.Status.FAILED:
            raise CommandError(f"backfill failed: {job.last_error}")
        if job.status in BackfillJob.UNSUCCESSFUL:
            raise CommandError(
                f"backfill {job.status}: {job.failed} failed, {job.rejected} rejected, "
                f"{job.pending} pending"
            )

    def _resolve_names(self, out: Any) -> None:
        """With workers, names follow every stored batch; in-process, once for the whole job."""
        try:
            call_command("enrich", "--names-only", stdout=out)
        except CommandError as exc:
            # The killmails are stored either way; `manage.py enrich` can name them later.
            self.stderr.write(f"Names not resolved now: {exc}")

    def _run(self, job_id: int) -> None:
        try:
            tasks.start_job(job_id)
        except Exception as exc:  # anything unexpected must end the job visibly
            lifecycle.fail_job(job_id, f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    def _follow(self, job_id: int) -> BackfillJob:
        job = BackfillJob.objects.get(pk=job_id)
        with tqdm(
            total=job.max_killmails,
            unit=" killmails",
            disable=not sys.stderr.isatty(),
            dynamic_ncols=True,
        ) as bar:
            while True:
                close_old_connections()
                job.refresh_from_db()
                if bar.total is None and job.plan.get("killmails") and not job.max_killmails:
                    bar.total = job.plan["killmails"]
                bar.n = job.killmails_listed - job.pending
                bar.set_postfix(
                    pages=job.pages_fetched,
                    dumps=job.dumps_fetched,
                    stored=job.stored,
                    esi=job.bodies_from_esi,
                    refresh=False,
                )
                bar.refresh()
                if not job.is_active:
                    return job
                time.sleep(POLL_SECONDS)
