"""The background runner: without a broker, web requests hand their slow work to a thread and
answer at once.

With zKillboard or ESI slow or away, work done inside a request (a backfill job's retries, a
pilot's details) would hold it open for minutes. So the apps give such work, without a
broker, to this process's `runner` once the request commits: backfill its jobs
(`backfill.tasks.start_job(..., background=True)`), enrichment the details a pilot's admin
page shows (`enrichment.tasks.fetch_details_soon`). Both apps import it from here, since
neither imports the other.

- One daemon thread a process, started on first use (and again in a forked child), runs one
  piece of work at a time: SQLite has one writer, so two writer threads would only wait on
  each other's locks. The thread has its own database connection, closed after each piece
  of work, so an idle runner holds none.
- A piece of work that fails is logged and the thread goes on with the next.
- Work must be safe to lose (a process dies with what it had queued): its state lives in the
  database, where someone takes it up again. Backfill supplies the runner's periodic work,
  its watchdog of stalled jobs, which the thread runs at its start and then at a fixed
  interval (`set_periodic`); a pilot's details stay due and its next view asks again.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from functools import partial

from django.db import connection, transaction

logger = logging.getLogger(__name__)

Work = Callable[[], object]


class Runner:
    """A thread that runs the work it is given one piece at a time, and an optional periodic
    piece of work between them."""

    def __init__(self) -> None:
        self._work: queue.Queue[tuple[Work, str] | None] = queue.Queue()
        self._periodic: tuple[Work, str, float] | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._given = threading.Condition()
        self._pending = 0  # pieces given and not run yet

    def submit(self, work: Work, what: str) -> None:
        """Run `work` on the thread once the current transaction commits; `what` names it in
        the log."""
        transaction.on_commit(partial(self._put, work, what))

    def set_periodic(self, work: Work, what: str, seconds: float) -> None:
        """Run `work` when the thread starts and then every `seconds`, between the pieces
        given to it. One a runner: set it before anything starts the thread."""
        self._periodic = (work, what, seconds)

    def _put(self, work: Work, what: str) -> None:
        with self._given:
            self._pending += 1
        self._work.put((work, what))
        self.start()
        logger.info("%s handed to the background runner", what)

    def start(self) -> None:
        """Start the thread unless it runs in this process already (a fork has none)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._loop, name="background-runner", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Ask the thread to end after its current work, and wait for it."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._work.put(None)
            thread.join(timeout)
        # Work not run yet is dropped: its state is in the database (see the module docstring).
        with self._given:
            while not self._work.empty():
                self._work.get_nowait()
            if thread is not None and thread.is_alive():
                self._work.put(None)  # still in a piece of work: it ends after it
            self._pending = 0
            self._given.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every piece given so far has run; False if `timeout` came first."""
        with self._given:
            return self._given.wait_for(lambda: self._pending == 0, timeout)

    def _loop(self) -> None:
        next_periodic = time.monotonic()  # at once: a restarted process may have left work
        while True:
            periodic = self._periodic
            wait = None if periodic is None else max(0.0, next_periodic - time.monotonic())
            try:
                given = self._work.get(timeout=wait)
            except queue.Empty:
                pass
            else:
                if given is None:
                    return
                self._do(*given)
                with self._given:
                    self._pending = max(0, self._pending - 1)  # 0 after a stop
                    self._given.notify_all()
            if periodic is not None and time.monotonic() >= next_periodic:
                work, what, seconds = periodic
                self._do(work, what)
                next_periodic = time.monotonic() + seconds

    def _do(self, work: Work, what: str) -> None:
        try:
            work()
        except Exception:  # the thread must outlive any one piece of work
            logger.exception("Background runner: %s failed", what)
        finally:
            connection.close()


# This process's runner, shared by every app (used only without a broker).
runner = Runner()
