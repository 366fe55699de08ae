"""The one retry policy (config.retries) on real Celery tasks, run in-process.

`scripted` raises, on its attempt n, the error named by `script[n]`, hands it to the policy
and succeeds once the script runs out. Waits are read from `time.sleep`, which the runner
calls for every countdown in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import OperationalError, connection

from config import retries
from config.celery_app import app
from upstream.errors import Blocked, RateLimited, Rejected, Unavailable

ERRORS: dict[str, Callable[[], Exception]] = {
    "rate_limited": lambda: RateLimited(7.0, "ESI error limit reached"),
    "busy": lambda: retries.Busy(3.0, "page leased"),
    "transient": lambda: Unavailable("GET /killmails/1/abc/: 503", 503),
    "permanent": lambda: Rejected("GET /killmails/1/abc/: 422 invalid hash", 422),
    "blocked": lambda: Blocked("zKillboard blocked this IP"),
    "lost_database": lambda: OperationalError("server closed the connection unexpectedly"),
    "bug": lambda: KeyError("victim"),
}
recorded: list[str] = []
ran: list[str] = []


@app.task(bind=True, name="tests.retry_policy.scripted")
def scripted(
    self: retries.RetryingTask,
    script: list[str],
    record: bool = True,
    hook_loses_database: bool = False,
    failures: int = 0,
) -> dict[str, Any]:
    """Raise the error `script` names for this attempt, under the policy; then succeed."""
    connected = connection.connection is not None

    def before_retry() -> None:
        if hook_loses_database:
            raise ERRORS["lost_database"]()

    try:
        connection.ensure_connection()
        if self.request.retries < len(script):
            raise ERRORS[script[self.request.retries]]()
    except retries.ERRORS as exc:
        retries.handle(
            self, exc, before_retry=before_retry, record=recorded.append if record else None
        )
        return {"recorded": True}
    return {"attempts": self.request.retries + 1, "failures": failures, "connected": connected}


@app.task(bind=True, name="tests.retry_policy.patient", max_retries_in_process=2)
def patient(self: retries.RetryingTask, script: list[str], failures: int = 0) -> int:
    """`scripted` for a family that gives up sooner in-process."""
    try:
        if self.request.retries < len(script):
            raise ERRORS[script[self.request.retries]]()
    except retries.ERRORS as exc:
        retries.handle(self, exc, record=recorded.append)
    return self.request.retries


@app.task(bind=True, name="tests.retry_policy.chain")
def chain(self: retries.RetryingTask, links: int) -> int:
    """Queue the next link, then finish: links run one after another, never nested."""
    ran.append(f"start {links}")
    if links > 1:
        chain.delay(links - 1)
    ran.append(f"end {links}")
    return links


@pytest.fixture(autouse=True)
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds the in-process runner waited, in order (it does not really wait)."""
    slept: list[float] = []
    monkeypatch.setattr("config.retries.time.sleep", slept.append)
    recorded.clear()
    ran.clear()
    return slept


def backoff_bounds(failures: int) -> tuple[float, float]:
    step = min(retries.BACKOFF_CAP, retries.BACKOFF_BASE * 2**failures)
    return 0.5 * step, 1.5 * step


def run(script: list[str], **kwargs: Any) -> dict[str, Any]:
    return scripted.apply(args=[script], kwargs=kwargs).get()


# -- by kind of error --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_rate_limit_waits_as_long_as_the_upstream_says(waits):
    outcome = run(["rate_limited", "rate_limited"])

    assert outcome["attempts"] == 3
    assert len(waits) == 2
    assert all(7.0 <= wait <= 7.0 + retries.WAIT_JITTER for wait in waits)
    assert outcome["failures"] == 0  # a wait is not a failure


@pytest.mark.django_db
def test_a_lease_held_elsewhere_waits_like_a_rate_limit(waits):
    outcome = run(["busy"])

    assert outcome["attempts"] == 2
    assert 3.0 <= waits[0] <= 3.0 + retries.WAIT_JITTER


@pytest.mark.django_db
def test_transient_failures_back_off_exponentially_with_jitter(waits):
    outcome = run(["transient"] * 10)

    assert outcome == {"attempts": 11, "failures": 10, "connected": True}
    for failures, wait in enumerate(waits):
        low, high = backoff_bounds(failures)
        assert low <= wait <= high, (failures, wait)
    assert max(waits) <= 1.5 * retries.BACKOFF_CAP


@pytest.mark.django_db
def test_twelve_transient_failures_in_a_row_are_retried_and_the_thirteenth_recorded(waits):
    assert run(["transient"] * 12)["attempts"] == 13

    waits.clear()
    assert run(["transient"] * 13) == {"recorded": True}

    assert len(waits) == 12
    assert recorded == ["gave up after 12 failures: GET /killmails/1/abc/: 503"]


@pytest.mark.django_db
def test_rate_limit_waits_do_not_use_up_the_transient_retries():
    outcome = run(["rate_limited", "transient"] * 12)

    assert outcome["attempts"] == 25
    assert outcome["failures"] == 12
    assert not recorded


@pytest.mark.django_db
def test_waits_are_bounded_too():
    assert run(["rate_limited"] * 31) == {"recorded": True}
    assert recorded == ["gave up after 30 waits: ESI error limit reached; retry in 7.0s"]


@pytest.mark.django_db
@pytest.mark.parametrize("error", ["permanent", "blocked"])
def test_a_permanent_error_is_recorded_and_never_retried(waits, error):
    reason = str(ERRORS[error]())

    assert run([error]) == {"recorded": True}

    assert recorded == [reason]
    assert waits == []


@pytest.mark.django_db
def test_a_permanent_error_with_nowhere_to_record_it_ends_the_task(waits):
    with pytest.raises(Rejected, match="422"):
        run(["permanent"], record=False)
    assert waits == []


@pytest.mark.django_db
def test_an_error_the_policy_does_not_know_is_raised_at_once(waits):
    with pytest.raises(KeyError, match="victim"):
        run(["bug"])
    assert (waits, recorded) == ([], [])


# -- a lost database connection ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_lost_connection_is_closed_and_retried_with_the_transient_backoff(waits):
    connection.ensure_connection()

    outcome = run(["lost_database"])

    # The retry found the connection closed: its first query opened a fresh one.
    assert outcome == {"attempts": 2, "failures": 1, "connected": False}
    low, high = backoff_bounds(0)
    assert low <= waits[0] <= high


@pytest.mark.django_db(transaction=True)
def test_lost_connections_count_with_the_transient_failures_in_a_row():
    assert run(["lost_database", "transient"] * 6)["failures"] == 12

    assert run(["transient", "lost_database"] * 6 + ["transient"]) == {"recorded": True}
    assert recorded == ["gave up after 12 failures: GET /killmails/1/abc/: 503"]


@pytest.mark.django_db(transaction=True)
def test_a_connection_that_stays_lost_ends_the_task_and_records_nothing(waits):
    with pytest.raises(OperationalError):
        run(["lost_database"] * 13)

    assert len(waits) == 12
    assert recorded == []  # the database is away: the watchdog takes over


@pytest.mark.django_db(transaction=True)
def test_a_hook_that_loses_the_database_retries_as_a_lost_connection():
    outcome = run(["rate_limited"], hook_loses_database=True)

    assert outcome == {"attempts": 2, "failures": 1, "connected": False}


# -- bounds per family, and on workers ---------------------------------------------------------


@pytest.mark.django_db
def test_a_family_may_give_up_sooner_in_process():
    assert patient.apply(args=[["transient"] * 2]).get() == 2

    patient.apply(args=[["transient"] * 3])

    assert recorded == ["gave up after 2 failures: GET /killmails/1/abc/: 503"]


def test_on_a_worker_the_in_process_bound_does_not_apply():
    patient.push_request(retries=5, kwargs={"failures": 5}, is_eager=False)
    try:
        decision = retries.decide(patient, ERRORS["transient"]())
    finally:
        patient.pop_request()

    assert decision.countdown is not None
    assert backoff_bounds(5)[0] <= decision.countdown <= backoff_bounds(5)[1]
    assert decision.failures == 6


def test_every_task_of_the_apps_follows_the_policy():
    app.loader.import_default_modules()
    ours = [
        task for name, task in app.tasks.items() if name.startswith(("backfill.", "enrichment."))
    ]

    assert len(ours) >= 6
    assert all(isinstance(task, retries.RetryingTask) for task in ours)


# -- the in-process runner ---------------------------------------------------------------------


def test_tasks_queued_by_a_running_task_run_after_it_not_inside_it():
    assert chain.delay(3).get() == 3

    assert ran == ["start 3", "end 3", "start 2", "end 2", "start 1", "end 1"]


def test_a_task_queued_with_a_countdown_waits_for_it_in_process(waits):
    assert chain.apply_async((1,), countdown=4.5).get() == 1

    assert waits == [4.5]
