"""The embedded runner: without a broker, web requests hand their jobs to a thread and answer
at once.

The commands (`manage.py backfill ...`) run their job in the foreground, where someone
watches its progress bar; a web request must not: with zKillboard slow or away, a job's
retries would hold the request open for minutes. So the admin and the GraphQL mutations
call `tasks.start_job(job_id, background=True)`, which, with no broker, gives the job to
this process's runner (`tasks.runner`) once the request commits.

- One daemon thread a process, started on first use (and again in a forked child), runs one
  job at a time through the same in-process task chain as the commands: SQLite has one
  writer, so two jobs at once would only wait on each other's locks. The thread has its own
  database connection, closed after each piece of work, so an idle runner holds none.
- At its start and then every WATCHDOG_SECONDS (beat's cadence) it runs the watchdog that
  beat runs with a broker: a job left behind by a process that died (a restarted web
  server) stands still, and once it has for BACKFILL_STALLED_AFTER_SECONDS a runner takes
  it up again. Nothing is lost with a thread: a job's state is in the database.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from functools import partial

from django.conf import settings
from django.db import connection, transaction

logger = logging.getLogger(__name__)

# Seconds between two runs of the watchdog: beat's schedule of the same watchdog.
WATCHDOG_SECONDS = settings.CELERY_BEAT_SCHEDULE["backfill-resume-stalled-jobs"][
    "schedule"
].total_seconds()


class Runner:
    """A thread that runs the jobs it is given one at a time, and the watchdog between them.

    `run(job_id)` runs a job's steps to their end; `watch()` is the watchdog.
    """

    def __init__(
        self,
        run: Callable[[int], None],
        watch: Callable[[], None],
        watchdog_seconds: float = WATCHDOG_SECONDS,
    ) -> None:
        self.run = run
        self.watch = watch
        self.watchdog_seconds = watchdog_seconds
        self._jobs: queue.Queue[int | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._given = threading.Condition()
        self._pending = 0  # jobs given and not run yet

    def submit(self, job_id: int) -> None:
        """Run the job on the thread once the current transaction commits."""
        transaction.on_commit(partial(self._put, job_id))

    def _put(self, job_id: int) -> None:
        with self._given:
            self._pending += 1
        self._jobs.put(job_id)
        self.start()
        logger.info("Job %s handed to the embedded runner", job_id)

    def start(self) -> None:
        """Start the thread unless it runs in this process already (a fork has none)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._loop, name="backfill-embedded-runner", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Ask the thread to end after its current work, and wait for it."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._jobs.put(None)
            thread.join(timeout)
        # Jobs not run yet stay queued in the database, where a watchdog finds them.
        with self._given:
            while not self._jobs.empty():
                self._jobs.get_nowait()
            if thread is not None and thread.is_alive():
                self._jobs.put(None)  # still in a job: it ends after it
            self._pending = 0
            self._given.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every job given so far has run; False if `timeout` came first."""
        with self._given:
            return self._given.wait_for(lambda: self._pending == 0, timeout)

    def _loop(self) -> None:
        next_watch = time.monotonic()  # at once: a restarted process may have left jobs behind
        while True:
            try:
                job_id = self._jobs.get(timeout=max(0.0, next_watch - time.monotonic()))
            except queue.Empty:
                job_id = 0
            if job_id is None:
                return
            if job_id:
                self._do(partial(self.run, job_id), f"job {job_id}")
                with self._given:
                    self._pending = max(0, self._pending - 1)  # 0 after a stop
                    self._given.notify_all()
            if time.monotonic() >= next_watch:
                self._do(self.watch, "watchdog")
                next_watch = time.monotonic() + self.watchdog_seconds

    def _do(self, work: Callable[[], None], what: str) -> None:
        try:
            work()
        except Exception:  # the thread must outlive any one job; the job recorded its end
            logger.exception("Embedded runner: %s failed", what)
        finally:
            connection.close()
