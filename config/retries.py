"""One retry policy for every task, and one runner for tasks without a broker.

Every task is a `RetryingTask` (config.celery_app makes it the app's task class). A task
hands the errors it cannot settle itself to `handle`, which acts by kind:

- `RateLimited` (429, ESI's 420) and `Busy` (another worker holds a lease or claim): a wait,
  as long as it says plus up to WAIT_JITTER; at most `max_waits` waits a task.
- `Unavailable` (network, timeout, 5xx, downtime, a broken body): a transient failure,
  retried after an exponential backoff with jitter; at most `max_retries` in a row.
- A lost database connection (killboard.db.DATABASE_ERRORS): closed, then retried on a
  fresh one like a transient failure. When those run out the error ends the task: nothing
  can be recorded while the database is away (the watchdog resumes backfill jobs).
- `Rejected` and `Blocked` (404, 422, `{"error": ...}`, blocked.json): permanent, recorded
  by the caller, never retried.

Anything else is a bug and is raised as is. The transient failures in a row travel in the
task's `failures` keyword argument, so rate-limit waits do not use them up. What else a retry
must know of the attempt before it travels the same way (`carry`): the tokens of the claims
that attempt may hold, which its retry takes over (backfill.services.Claim), since a lost
connection cannot give them back.

Without a broker (CELERY_TASK_ALWAYS_EAGER, the embedded default) the same tasks run in this
process: a task queued while another runs in this thread runs after it, not nested in it,
so a chain of hundreds of pages never deepens the stack; a retry, or a task queued with a
countdown, waits inline.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any, NoReturn

from celery.contrib.django.task import DjangoTask
from celery.exceptions import Retry
from celery.result import AsyncResult, EagerResult
from celery.utils import uuid

from killboard.db import DATABASE_ERRORS, drop_lost_connection
from upstream.errors import Blocked, RateLimited, Rejected, Unavailable

logger = logging.getLogger(__name__)

# Backoff of transient failures: BACKOFF_BASE * 2**failures seconds, at most BACKOFF_CAP,
# then +-50% jitter, so workers that failed together do not come back together.
BACKOFF_BASE = 2.0
BACKOFF_CAP = 300.0
# Seconds, at most, added to a wait, for the same reason.
WAIT_JITTER = 1.0


class Busy(Exception):
    """What the task needs is held by another worker (a lease, a claim): come back later."""

    def __init__(self, retry_after: float, reason: str) -> None:
        super().__init__(f"{reason}; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


class Kind(StrEnum):
    """What an error means for the task that met it."""

    WAIT = "wait"
    TRANSIENT = "transient"
    LOST_DATABASE = "lost database"
    PERMANENT = "permanent"


# The errors `handle` knows; a task catches these and nothing broader.
ERRORS: tuple[type[Exception], ...] = (
    RateLimited,
    Busy,
    Unavailable,
    Rejected,
    Blocked,
    *DATABASE_ERRORS,
)


def kind_of(exc: Exception) -> Kind | None:
    """The kind of `exc`; None for an error the policy does not know."""
    if isinstance(exc, RateLimited | Busy):
        return Kind.WAIT
    if isinstance(exc, Rejected | Blocked):
        return Kind.PERMANENT
    if isinstance(exc, Unavailable):
        return Kind.TRANSIENT
    if isinstance(exc, DATABASE_ERRORS):
        return Kind.LOST_DATABASE
    return None


def backoff(failures: int) -> float:
    """Seconds before the retry that follows `failures` transient failures in a row."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2**failures) * random.uniform(0.5, 1.5)


@dataclass(frozen=True)
class Decision:
    """What the policy does next: retry in `countdown` seconds, or (None) stop for `reason`."""

    kind: Kind
    countdown: float | None
    failures: int  # transient failures in a row, this one included
    reason: str = ""


def decide(task: RetryingTask, exc: Exception) -> Decision:
    """The policy's answer to `exc` (a known kind), given the retries `task` has had."""
    kind = kind_of(exc)
    if kind is None:
        raise ValueError(f"not an error the retry policy knows: {exc!r}")
    failures = int((task.request.kwargs or {}).get("failures", 0))
    if kind is Kind.PERMANENT:
        return Decision(kind, None, failures, str(exc))
    if isinstance(exc, RateLimited | Busy):
        waits = task.request.retries - failures
        if waits >= task.max_waits:
            return Decision(kind, None, failures, f"gave up after {waits} waits: {exc}")
        return Decision(kind, exc.retry_after + random.uniform(0, WAIT_JITTER), failures)
    bound = task.max_retries
    if task.request.is_eager and task.max_retries_in_process is not None:
        bound = task.max_retries_in_process
    if failures >= bound:
        return Decision(kind, None, failures, f"gave up after {failures} failures: {exc}")
    return Decision(kind, backoff(failures), failures + 1)


def handle(
    task: RetryingTask,
    exc: Exception,
    *,
    before_retry: Callable[[], None] | None = None,
    record: Callable[[str], None] | None = None,
    carry: dict[str, Any] | None = None,
) -> None:
    """Retry `task` after `exc` as the policy says (raises `Retry`), or record why not.

    `before_retry()` runs just before a retry is scheduled (give back a lease, note it on the
    job); `record(reason)` runs for a permanent error or once the retries ran out; `carry`
    holds keyword arguments the retry gets in place of this attempt's. Without
    `record`, and always for a lost database, the error itself is raised then. A database
    error inside either hook means the connection went away meanwhile: it is handled as one.
    """
    kind = kind_of(exc)
    if kind is None:
        raise exc
    if kind is Kind.LOST_DATABASE:
        drop_lost_connection()
    decision = decide(task, exc)
    if decision.countdown is None:
        logger.warning("%s[%s] not retried: %s", task.name, task.request.id, decision.reason)
        if record is None or kind is Kind.LOST_DATABASE:
            raise exc
        _run_hook(task, partial(record, decision.reason), kind, before_retry, carry)
        return
    if before_retry is not None:
        _run_hook(task, before_retry, kind, before_retry, carry)
    _retry(task, exc, decision, carry)


def _run_hook(
    task: RetryingTask,
    hook: Callable[[], None],
    kind: Kind,
    before_retry: Callable[[], None] | None,
    carry: dict[str, Any] | None,
) -> None:
    """Run a hook; a database error in it means the connection went away meanwhile."""
    try:
        hook()
    except DATABASE_ERRORS as lost:
        if kind is Kind.LOST_DATABASE:
            return  # still away: what the hook would give back (a lease) runs out instead
        handle(task, lost, before_retry=before_retry, carry=carry)  # retries, or raises `lost`


def _retry(
    task: RetryingTask, exc: Exception, decision: Decision, carry: dict[str, Any] | None
) -> NoReturn:
    log = logger.info if decision.kind is Kind.WAIT else logger.warning
    log(
        "%s[%s] retry %s in %.0fs (%s): %s",
        task.name,
        task.request.id,
        task.request.retries + 1,
        decision.countdown,
        decision.kind,
        exc,
    )
    raise task.retry(
        exc=exc,
        countdown=decision.countdown,
        kwargs={**(task.request.kwargs or {}), **(carry or {}), "failures": decision.failures},
        # The policy keeps the two bounds; Celery's own is their sum, never reached first.
        max_retries=task.max_retries + task.max_waits,
    )


class RetryingTask(DjangoTask):
    """The base of every task: the policy's bounds, and the in-process runner.

    A family of tasks may change the bounds in its options dict (they become attributes).
    """

    max_retries = 12  # transient failures (and lost connections) in a row
    max_waits = 30  # waits an upstream asked for, or for a lease: they cost nothing, and end
    # In-process, a smaller bound for work that can be done later, when someone waits at a
    # terminal; None: `max_retries`.
    max_retries_in_process: int | None = None

    def apply(
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> EagerResult | AsyncResult:
        """Run in this process: now, or after the task running now in this thread.

        Celery calls this for every task sent without a broker. The first call runs the
        task and then, one after another, the tasks queued meanwhile, and returns the first
        task's result; a call made while a task runs only queues (its result is not there
        to wait for, and a task never waits on another).
        """
        options.setdefault("task_id", uuid())
        if _in_process.queue is not None:
            _in_process.queue.append((self, args, kwargs, options))
            return self.AsyncResult(options["task_id"])
        _in_process.queue = deque()
        try:
            result = self._run_here(args, kwargs, options)
            while _in_process.queue:
                task, queued_args, queued_kwargs, queued_options = _in_process.queue.popleft()
                task._run_here(queued_args, queued_kwargs, queued_options)
            return result
        finally:
            _in_process.queue = None

    def _run_here(self, args: Any, kwargs: Any, options: dict[str, Any]) -> EagerResult:
        """Run the task, waiting inline for its countdown and for each of its retries."""
        while True:
            options = dict(options)
            countdown = float(options.pop("countdown", None) or 0)
            if countdown > 0:
                time.sleep(countdown)
            try:
                return super().apply(args, kwargs, **options)
            except Retry as retry:
                # Eager tasks raise their retries (task_eager_propagates): run it here.
                args, kwargs = retry.sig.args, retry.sig.kwargs
                options = {**retry.sig.options, "countdown": retry.when}


class _InProcess(threading.local):
    """The tasks queued in this thread while one runs; None when none runs."""

    queue: deque[tuple[RetryingTask, Any, Any, dict[str, Any]]] | None = None


_in_process = _InProcess()
