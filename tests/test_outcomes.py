"""Honest outcomes: a job with any failed or rejected killmail ends partial, never succeeded.

Jobs run in-process against the fake upstream. A failed killmail comes from ESI answering
422, as it does for a wrong hash; a rejected one is counted on the job as the ingest would.
"""

from __future__ import annotations

import io
import json
import os
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from backfill import lifecycle, tasks
from backfill.models import BackfillJob, FailedKillmail, PendingKillmail
from fakeupstream.world import World
from killboard.models import Killmail
from tests.workers import manage

pytestmark = pytest.mark.django_db(transaction=True)

CHARACTER = 2117325769
JOBS = reverse("admin:backfill_backfilljob_changelist")


def refuse_at_esi(monkeypatch: pytest.MonkeyPatch, world: World, killmail_id: int) -> None:
    """ESI answers 422 for the killmail while zKillboard lists it as ever (`undo` heals it)."""
    world.zkb_json(killmail_id)  # zKillboard's copy, cached with the true hash
    true_hash = world.killmail_hash
    monkeypatch.setattr(
        world, "killmail_hash", lambda i: "0" * 40 if i == killmail_id else true_hash(i)
    )


def backfill_with_a_refused_killmail(
    monkeypatch: pytest.MonkeyPatch, fake: Any, world: World, killmails: int = 5
) -> int:
    """A character whose newest killmail ESI refuses; return that killmail's id."""
    ids = world.add_character(CHARACTER, killmails)
    fake.configure(item_shape="zkbonly")
    refuse_at_esi(monkeypatch, world, ids[0])
    return ids[0]


def run(job: BackfillJob) -> BackfillJob:
    tasks.start_job(job.pk)
    job.refresh_from_db()
    return job


def finished_job(**counters: int) -> BackfillJob:
    """A job whose paging is done and whose counters are `counters`, still running."""
    job = lifecycle.create_job(CHARACTER)
    BackfillJob.objects.filter(pk=job.pk).update(status="running", paging_done=True, **counters)
    return job


# -- how a job ends --------------------------------------------------------------------------


def test_job_with_a_failed_killmail_ends_partial(monkeypatch, fake, world):
    refused = backfill_with_a_refused_killmail(monkeypatch, fake, world)

    job = run(lifecycle.create_job(CHARACTER))

    assert job.status == BackfillJob.Status.PARTIAL
    assert (job.stored, job.failed, job.rejected, job.pending) == (4, 1, 0, 0)
    assert FailedKillmail.objects.get().killmail_id == refused
    assert job.finished_at is not None
    assert job.progress == 1.0


def test_job_with_a_rejected_killmail_ends_partial(fake, world):
    world.add_character(CHARACTER, 5)
    job = lifecycle.create_job(CHARACTER)
    job.add_counts(killmails_listed=1, rejected=1)

    job = run(job)

    assert job.status == BackfillJob.Status.PARTIAL
    assert (job.stored, job.failed, job.rejected, job.pending) == (5, 0, 1, 0)


def test_clean_job_still_ends_succeeded(fake, world):
    world.add_character(CHARACTER, 5)
    fake.configure(item_shape="zkbonly")

    job = run(lifecycle.create_job(CHARACTER))

    assert job.status == BackfillJob.Status.SUCCEEDED
    assert (job.stored, job.failed, job.rejected) == (5, 0, 0)


@pytest.mark.parametrize(("failed", "rejected"), [(1, 0), (0, 1), (2, 3)])
def test_finish_if_done_never_marks_succeeded_with_failures_or_rejections(failed, rejected):
    job = finished_job(killmails_listed=10, stored=10 - failed - rejected)
    job.add_counts(failed=failed, rejected=rejected)

    assert lifecycle.finish_if_done(job.pk) is True

    job.refresh_from_db()
    assert job.status == BackfillJob.Status.PARTIAL


def test_finish_if_done_marks_a_clean_job_succeeded_once():
    job = finished_job(killmails_listed=3, stored=3)

    assert lifecycle.finish_if_done(job.pk) is True
    assert lifecycle.finish_if_done(job.pk) is False

    job.refresh_from_db()
    assert job.status == BackfillJob.Status.SUCCEEDED


def test_finish_if_done_waits_for_pending_bodies():
    job = finished_job(killmails_listed=1)
    PendingKillmail.objects.create(job=job, killmail_id=1, killmail_hash="a" * 40, zkb={})

    assert lifecycle.finish_if_done(job.pk) is False

    job.refresh_from_db()
    assert job.status == BackfillJob.Status.RUNNING


def test_pending_leaves_out_rejected_killmails():
    job = BackfillJob(killmails_listed=10, stored=5, failed=2, rejected=3)

    assert job.pending == 0


# -- reopening -------------------------------------------------------------------------------


def test_retrying_a_partial_job_whose_failures_are_fixed_ends_succeeded(monkeypatch, fake, world):
    refused = backfill_with_a_refused_killmail(monkeypatch, fake, world)
    job = run(lifecycle.create_job(CHARACTER))
    assert job.status == BackfillJob.Status.PARTIAL
    monkeypatch.undo()  # ESI accepts the killmail again

    assert lifecycle.reopen_job(job.pk, retry_failed=True) is True
    job = run(job)

    assert job.status == BackfillJob.Status.SUCCEEDED
    assert (job.stored, job.failed, job.pending) == (5, 0, 0)
    assert Killmail.objects.filter(killmail_id=refused).exists()
    assert not FailedKillmail.objects.exists()


def test_retrying_a_partial_job_whose_failures_persist_ends_partial_again(monkeypatch, fake, world):
    backfill_with_a_refused_killmail(monkeypatch, fake, world)
    job = run(lifecycle.create_job(CHARACTER))

    assert lifecycle.reopen_job(job.pk, retry_failed=True) is True
    job = run(job)

    assert job.status == BackfillJob.Status.PARTIAL
    assert (job.stored, job.failed) == (4, 1)


def test_partial_job_with_nothing_to_retry_is_not_reopened():
    job = finished_job(killmails_listed=2, stored=1, rejected=1)
    lifecycle.finish_if_done(job.pk)

    assert lifecycle.reopen_job(job.pk) is False
    assert lifecycle.reopen_job(job.pk, retry_failed=True) is False

    job.refresh_from_db()
    assert job.status == BackfillJob.Status.PARTIAL


# -- the summary -----------------------------------------------------------------------------


def test_summary_line_keeps_its_wording_and_names_rejected_after_failed():
    started = timezone.now()
    job = lifecycle.create_job(CHARACTER)
    BackfillJob.objects.filter(pk=job.pk).update(
        status="succeeded",
        pages_fetched=16,
        killmails_listed=3000,
        stored=3000,
        bodies_from_page=1588,
        bodies_from_esi=1412,
        started_at=started,
        finished_at=started + timedelta(seconds=50.4),
    )
    job.refresh_from_db()

    assert job.summary_line() == (
        f"Backfill #{job.pk} of character {CHARACTER} succeeded in 50.4s: 16 pages, 3000 "
        "killmails listed, 3000 stored (1588 bodies from pages, 1412 from ESI), 0 already "
        "stored, 0 failed, 0 rejected, 0 older than --from-date."
    )


def test_summary_names_pending_killmails_while_there_are_some():
    job = BackfillJob(pk=7, target_id=CHARACTER, status="running", killmails_listed=5, stored=2)

    assert job.summary_line().endswith("0 older than --from-date, 3 pending.")
    assert job.summary()["pending"] == job.counts()["pending"] == 3


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_reports_a_partial_job_in_json_and_fails(monkeypatch, fake, world):
    backfill_with_a_refused_killmail(monkeypatch, fake, world)
    out = io.StringIO()

    with pytest.raises(CommandError, match="backfill partial: 1 failed, 0 rejected"):
        call_command("backfill_character", str(CHARACTER), "--json", stdout=out)

    summary = json.loads(out.getvalue())
    assert summary["status"] == "partial"
    assert (summary["stored"], summary["failed"], summary["rejected"]) == (4, 1, 0)


def test_cli_line_of_a_partial_job_shows_failed_and_rejected(monkeypatch, fake, world):
    backfill_with_a_refused_killmail(monkeypatch, fake, world)
    out = io.StringIO()

    with pytest.raises(CommandError):
        call_command("backfill_character", str(CHARACTER), stdout=out)

    line = out.getvalue().splitlines()[0]
    job = BackfillJob.objects.get()
    assert line.startswith(f"Backfill #{job.pk} of character {CHARACTER} partial in ")
    assert "4 stored (0 bodies from pages, 4 from ESI)" in line
    assert "1 failed, 0 rejected, 0 older than --from-date." in line


def test_cli_exits_1_when_the_job_ends_partial(monkeypatch, fake, world, tmp_path):
    backfill_with_a_refused_killmail(monkeypatch, fake, world)
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_URL": "",
        "ZKILLBOARD_API_URL": fake.zkb_url,
        "ESI_URL": fake.esi_url,
        "ZKILLBOARD_REQUESTS_PER_SECOND": "1000",
    }
    assert manage(env, "migrate", "--no-input").returncode == 0

    result = manage(env, "backfill_character", str(CHARACTER), "--json")

    assert result.returncode == 1, result.stderr[-2000:]
    assert json.loads(result.stdout)["status"] == "partial"
    assert "CommandError: backfill partial: 1 failed, 0 rejected" in result.stderr


def test_cli_succeeds_quietly_for_a_clean_job(fake, world):
    world.add_character(CHARACTER, 5)
    out = io.StringIO()

    call_command("backfill_character", str(CHARACTER), stdout=out)

    assert " succeeded in " in out.getvalue()
    assert "0 failed, 0 rejected" in out.getvalue()


def test_cli_fails_for_a_cancelled_job(monkeypatch, fake, world):
    world.add_character(CHARACTER, 5)
    # The operator cancels the job before its first page.
    monkeypatch.setattr(tasks, "start_job", lifecycle.cancel_job)

    with pytest.raises(CommandError, match="backfill cancelled"):
        call_command("backfill_character", str(CHARACTER), "--json", stdout=io.StringIO())


# -- the admin and GraphQL -------------------------------------------------------------------


def partial_job() -> BackfillJob:
    job = finished_job(killmails_listed=10, stored=7, failed=2, rejected=1)
    lifecycle.finish_if_done(job.pk)
    job.refresh_from_db()
    return job


def test_admin_lists_and_filters_partial_jobs_with_their_counts(admin_client: Client):
    job = partial_job()
    finished_job(killmails_listed=1, stored=1)

    response = admin_client.get(JOBS, {"status__exact": "partial"})

    page = response.content.decode()
    assert [j.pk for j in response.context["cl"].result_list] == [job.pk]
    assert "Partial" in page
    assert "2 failed, 1 rejected" in page
    assert "?status__exact=partial" in page  # the filter offers it


def test_admin_job_page_shows_rejected(admin_client: Client):
    job = partial_job()

    page = admin_client.get(reverse("admin:backfill_backfilljob_change", args=[job.pk]))

    text = page.content.decode()
    assert "field-rejected" in text
    assert "could not be stored" in text  # its help text
    assert "Partial" in text


def test_admin_retry_failed_finishes_a_partial_job(admin_client: Client, monkeypatch, fake, world):
    backfill_with_a_refused_killmail(monkeypatch, fake, world)
    job = run(lifecycle.create_job(CHARACTER))
    monkeypatch.undo()

    response = admin_client.post(
        JOBS, {"action": "retry_failed", "_selected_action": [str(job.pk)]}, follow=True
    )

    assert "Retrying 1 failed killmails of 1 jobs." in response.content.decode()
    assert tasks.runner.wait_idle(60)  # the admin handed the retry to the background runner
    job.refresh_from_db()
    assert (job.status, job.failed, job.stored) == ("succeeded", 0, 5)


def test_graphql_shows_partial_jobs_with_their_counts(admin_client: Client):
    job = partial_job()
    query = """{ backfillJobs(status: "partial") {
        totalCount items { id status failed rejected pending summary }
    } }"""

    result = admin_client.post(
        "/graphql/", json.dumps({"query": query}), content_type="application/json"
    ).json()

    assert result["data"]["backfillJobs"]["items"] == [
        {
            "id": str(job.pk),
            "status": "partial",
            "failed": 2,
            "rejected": 1,
            "pending": 0,
            "summary": job.summary_line(),
        }
    ]
