"""Backfill a character's killmail history from zKillboard (and ESI for missing bodies)."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections, connection
from tqdm import tqdm

from backfill import lifecycle, tasks
from backfill.models import BackfillJob
from killboard.inputs import InvalidInput, parse_whole_number

# Seconds between two looks at the job while following it.
POLL_SECONDS = 0.5


def _whole_number(value: str | None, name: str) -> int | None:
    return None if value is None else parse_whole_number(value, name)


class Command(BaseCommand):
    help = (
        "Backfill a character's killmails, newest first. Without a broker the backfill runs "
        "here with a progress bar; with one it is queued (--wait follows it to the end)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("character_id", metavar="CHARACTER_ID")
        parser.add_argument("--from-date", metavar="YYYY-MM-DD", help="only killmails since")
        parser.add_argument("--max-pages", metavar="N", help="at most N pages of --limit")
        parser.add_argument("--limit", metavar="N", default="200", help="killmails a page, 1..200")
        parser.add_argument(
            "--no-skip-existing",
            action="store_false",
            dest="skip_existing",
            help="also refresh the zkb values of killmails already stored",
        )
        parser.add_argument("--wait", action="store_true", help="with a broker: follow the job")
        parser.add_argument("--json", action="store_true", help="print a JSON summary")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            job = lifecycle.create_job(
                options["character_id"],
                from_date=options["from_date"],
                max_pages=_whole_number(options["max_pages"], "--max-pages"),
                limit=_whole_number(options["limit"], "--limit"),
                skip_existing=options["skip_existing"],
            )
        except InvalidInput as exc:  # InvalidBackfill, or a bad --max-pages/--limit
            raise CommandError(str(exc)) from None

        in_process = settings.CELERY_TASK_ALWAYS_EAGER
        if in_process:
            runner = threading.Thread(target=self._run, args=(job.pk,), daemon=True)
            runner.start()
        else:
            tasks.start_job(job.pk)
            if not options["json"]:
                self.stdout.write(f"Queued backfill job #{job.pk} of character {job.target_id}.")
        if in_process or options["wait"]:
            job = self._follow(job.pk)
        job.refresh_from_db()
        self.stdout.write(json.dumps(job.summary()) if options["json"] else job.summary_line())
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
                bar.n = job.killmails_listed - job.pending
                bar.set_postfix(
                    pages=job.pages_fetched,
                    stored=job.stored,
                    esi=job.bodies_from_esi,
                    refresh=False,
                )
                bar.refresh()
                if not job.is_active:
                    return job
                time.sleep(POLL_SECONDS)
