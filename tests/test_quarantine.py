"""The quarantine: rejected killmails kept whole, retried, exported, and shown in the admin."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from backfill.models import BackfillJob
from killboard.ingest import ingest_killmails
from killboard.models import Killmail, RejectedKillmail
from killboard.quarantine import retry_rejected
from tests.conftest import logged_in_client
from tests.factories import KillmailFactory

pytestmark = pytest.mark.django_db

REJECTED = reverse("admin:killboard_rejectedkillmail_changelist")
VICTIMLESS = "victim: required field is missing"


def victimless() -> dict[str, Any]:
    """A killmail that breaks the schema: no victim."""
    record = KillmailFactory()
    del record["victim"]
    return record


def text(record: Any) -> str:
    return json.dumps(record, separators=(",", ":"))


def quarantined(record: Any, **fields: Any) -> RejectedKillmail:
    """A row as an older version of ingest would have left it."""
    return RejectedKillmail.objects.create(
        killmail_id=record.get("killmail_id"),
        record=record,
        digest=hashlib.sha256(text(record).encode()).hexdigest(),
        reason=fields.pop("reason", "rejected by an older version"),
        **fields,
    )


def partial_job(**counters: int) -> BackfillJob:
    """A finished job that could not store everything."""
    return BackfillJob.objects.create(
        target_id=2117325769, status=BackfillJob.Status.PARTIAL, **counters
    )


def run(command: str, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_failing(command: str, *args: str) -> tuple[str, str]:
    """Run a command that must exit non-zero: (what it printed, its error)."""
    out = io.StringIO()
    with pytest.raises(CommandError) as error:
        call_command(command, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue(), str(error.value)


# -- ingest ----------------------------------------------------------------------------------


def test_a_rejected_killmail_is_quarantined_with_its_raw_record_reason_and_source():
    record = victimless()

    result = ingest_killmails([record, KillmailFactory()], source="zkillboard page", job_id=7)

    assert result.new == 1
    row = RejectedKillmail.objects.get()
    assert (row.killmail_id, row.record, row.source, row.job_id) == (
        record["killmail_id"],
        record,
        "zkillboard page",
        7,
    )
    assert VICTIMLESS in row.reason
    assert not Killmail.objects.filter(killmail_id=record["killmail_id"]).exists()


def test_the_same_record_rejected_twice_is_one_row():
    record = victimless()

    ingest_killmails([record], source="first")
    ingest_killmails([copy.deepcopy(record)], source="second", job_id=3)

    assert list(RejectedKillmail.objects.values_list("source", "job_id")) == [("second", 3)]


# -- retry -----------------------------------------------------------------------------------


def test_retry_stores_what_passes_now_empties_the_quarantine_and_settles_the_job(
    django_capture_on_commit_callbacks,
):
    job = partial_job(killmails_listed=2, stored=1, rejected=1)
    record = KillmailFactory()
    quarantined(record, source="zkillboard page", job_id=job.pk)

    with django_capture_on_commit_callbacks(execute=True):
        out, _ = run("retry_rejected")

    assert out == "Retried 1 rejected killmail(s): 1 stored, 0 already stored, 0 still rejected.\n"
    assert Killmail.objects.filter(killmail_id=record["killmail_id"]).exists()
    assert not RejectedKillmail.objects.exists()
    job.refresh_from_db()
    assert (job.status, job.rejected, job.stored, job.pending) == ("succeeded", 0, 2, 0)


def test_a_killmail_stored_meanwhile_leaves_the_quarantine_as_already_stored(
    django_capture_on_commit_callbacks,
):
    job = partial_job(killmails_listed=1, rejected=1)
    record = KillmailFactory()
    ingest_killmails([record])
    quarantined(record, job_id=job.pk)

    with django_capture_on_commit_callbacks(execute=True):
        outcome = retry_rejected()

    assert (outcome.stored, outcome.already_stored, outcome.still_rejected) == (0, 1, 0)
    job.refresh_from_db()
    assert (job.status, job.rejected, job.already_stored) == ("succeeded", 0, 1)


def test_a_job_with_failures_stays_partial_after_its_rejections_are_resolved(
    django_capture_on_commit_callbacks,
):
    job = partial_job(killmails_listed=3, failed=1, rejected=2)
    running = BackfillJob.objects.create(target_id=1, status="running", rejected=1)
    quarantined(KillmailFactory(), job_id=job.pk)
    quarantined(KillmailFactory(), job_id=running.pk)

    with django_capture_on_commit_callbacks(execute=True):
        retry_rejected()

    job.refresh_from_db()
    running.refresh_from_db()
    assert (job.status, job.failed, job.rejected) == ("partial", 1, 1)
    assert (running.status, running.rejected) == ("running", 0)


def test_resolving_more_than_a_job_counted_never_takes_its_counter_below_zero(
    django_capture_on_commit_callbacks,
):
    job = partial_job(rejected=1)
    quarantined(KillmailFactory(), job_id=job.pk)
    quarantined(KillmailFactory(), job_id=job.pk)

    with django_capture_on_commit_callbacks(execute=True):
        retry_rejected()

    job.refresh_from_db()
    assert (job.status, job.rejected) == ("succeeded", 0)


def test_a_record_still_invalid_stays_with_its_new_reason_and_the_command_exits_non_zero(
    django_capture_on_commit_callbacks,
):
    job = partial_job(rejected=2)
    bad, good = victimless(), KillmailFactory()
    ingest_killmails([bad], source="zkillboard page", job_id=job.pk)
    RejectedKillmail.objects.update(reason="rejected by an older version")
    quarantined(good, job_id=job.pk)

    with django_capture_on_commit_callbacks(execute=True):
        out, error = run_failing("retry_rejected", "--job", str(job.pk))

    assert out == "Retried 2 rejected killmail(s): 1 stored, 0 already stored, 1 still rejected.\n"
    assert "1 killmail(s) still rejected" in error
    row = RejectedKillmail.objects.get()
    assert (row.record, row.source, row.job_id) == (bad, "zkillboard page", job.pk)
    assert VICTIMLESS in row.reason
    job.refresh_from_db()
    assert (job.status, job.rejected) == ("partial", 1)


def test_retry_of_one_job_leaves_the_other_rows_alone():
    mine, theirs = KillmailFactory(), KillmailFactory()
    quarantined(mine, job_id=1)
    quarantined(theirs, job_id=2)
    quarantined(KillmailFactory())

    out, _ = run("retry_rejected", "--job", "1")

    assert out.startswith("Retried 1 rejected killmail(s): 1 stored")
    assert sorted(RejectedKillmail.objects.values_list("killmail_id", flat=True)) == sorted(
        [theirs["killmail_id"], RejectedKillmail.objects.get(job_id=None).killmail_id]
    )


def test_retry_walks_the_quarantine_in_chunks(monkeypatch):
    monkeypatch.setattr("killboard.quarantine.CHUNK", 2)
    records = [KillmailFactory() for _ in range(3)] + [victimless() for _ in range(2)]
    for record in records:
        quarantined(record)

    outcome = retry_rejected()

    assert (outcome.stored, outcome.already_stored, outcome.still_rejected) == (3, 0, 2)
    assert RejectedKillmail.objects.count() == 2


@pytest.mark.parametrize("command", ["retry_rejected", "export_killmails"])
@pytest.mark.parametrize("value", ["abc", "-5", "0", "99999999999999999999"])
def test_a_bad_job_id_is_one_clear_error(command, value):
    extra = ["--rejected"] if command == "export_killmails" else []

    _, error = run_failing(command, *extra, "--job", value)

    assert error == f"--job must be a backfill job id (a positive whole number), got '{value}'"


# -- export and import -----------------------------------------------------------------------


def test_export_rejected_gives_back_the_records_exactly(tmp_path: Path):
    odd = victimless()
    odd["zkb"]["labels"] = ["ünïcode", "\u0000", 1e-7, 2**70]
    records = [victimless(), odd, [1, 2], "not a killmail"]
    ingest_killmails(records, source="a file", job_id=5)
    ingest_killmails([victimless()], source="another")
    output = tmp_path / "rejected.jsonl"

    out, _ = run("export_killmails", "--rejected", "--job", "5", "--output", str(output))

    assert out == f"Exported 4 rejected killmail(s) to {output}.\n"
    assert output.read_text().splitlines() == [text(record) for record in records]
    assert [json.loads(line) for line in output.read_text().splitlines()] == records


def test_export_rejected_writes_to_standard_output_by_default():
    records = [victimless(), victimless()]
    ingest_killmails(records)

    out, _ = run("export_killmails", "--rejected")

    assert out.splitlines() == [text(record) for record in records]


def test_import_writes_the_rejects_keeps_them_in_the_quarantine_and_exits_non_zero(
    tmp_path: Path,
):
    good, bad = KillmailFactory(), [victimless(), victimless()]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in [bad[0], good, bad[1]]))
    rejects = tmp_path / "rejects.jsonl"

    out, error = run_failing("import_killmails", str(path), "--rejects", str(rejects))

    assert "Imported 1 file(s): 1 new, 0 already stored, 2 rejected." in out
    assert error.startswith("2 killmail(s) rejected")
    assert str(rejects) in error
    assert [json.loads(line) for line in rejects.read_text().splitlines()] == bad
    assert set(RejectedKillmail.objects.values_list("source", flat=True)) == {f"import {path}"}


def test_import_without_rejections_exits_zero_and_writes_an_empty_rejects_file(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(KillmailFactory()) + "\n")
    rejects = tmp_path / "rejects.jsonl"

    out, _ = run("import_killmails", str(path), "--rejects", str(rejects))

    assert "1 new, 0 already stored, 0 rejected" in out
    assert rejects.read_text() == ""


def test_import_into_a_missing_rejects_directory_is_refused_before_importing(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(KillmailFactory()) + "\n")

    _, error = run_failing("import_killmails", str(path), "--rejects", str(tmp_path / "no/r.jsonl"))

    assert "no such directory" in error
    assert not Killmail.objects.exists()


# -- admin -----------------------------------------------------------------------------------


def action_names(client: Client) -> set[str]:
    form = client.get(REJECTED).context["action_form"]
    return {name for name, _ in form.fields["action"].choices if name} if form else set()


def action(client: Client, ids: list[int]) -> Any:
    return client.post(
        REJECTED, {"action": "retry", "_selected_action": [str(pk) for pk in ids]}, follow=True
    )


def test_admin_lists_and_searches_the_quarantine(admin_client: Client):
    first, second = victimless(), KillmailFactory()
    ingest_killmails([first], source="zkillboard page", job_id=9)
    quarantined(second, reason="an older reason")

    page = admin_client.get(REJECTED).content.decode()
    by_id = admin_client.get(REJECTED, {"q": str(second["killmail_id"])}).content.decode()
    by_reason = admin_client.get(REJECTED, {"q": "victim"}).content.decode()
    by_nothing = admin_client.get(REJECTED, {"q": "9" * 30}).content.decode()

    for shown in (str(first["killmail_id"]), "zkillboard page", VICTIMLESS, "an older reason"):
        assert shown in page
    assert ("an older reason" in by_id, VICTIMLESS in by_id) == (True, False)
    assert (VICTIMLESS in by_reason, "an older reason" in by_reason) == (True, False)
    assert VICTIMLESS not in by_nothing


def test_admin_detail_shows_the_raw_record_pretty_printed_and_read_only(admin_client: Client):
    record = victimless()
    ingest_killmails([record])
    row = RejectedKillmail.objects.get()

    response = admin_client.get(reverse("admin:killboard_rejectedkillmail_change", args=[row.pk]))

    page = response.content.decode()
    assert escape(json.dumps(record, indent=2)) in page
    assert 'name="_save"' not in page
    assert admin_client.get(reverse("admin:killboard_rejectedkillmail_add")).status_code == 403


def test_admin_retry_action_stores_the_selected_rows_and_says_what_happened(
    admin_client: Client, django_capture_on_commit_callbacks
):
    job = partial_job(rejected=1)
    chosen = quarantined(KillmailFactory(), job_id=job.pk)
    other = quarantined(KillmailFactory())

    with django_capture_on_commit_callbacks(execute=True):
        response = action(admin_client, [chosen.pk])

    messages = [str(message) for message in response.context["messages"]]
    assert messages == [
        "Retried 1 rejected killmail(s): 1 stored, 0 already stored, 0 still rejected."
    ]
    assert list(RejectedKillmail.objects.values_list("pk", flat=True)) == [other.pk]
    job.refresh_from_db()
    assert job.status == "succeeded"


def test_admin_retry_action_needs_the_change_permission(django_user_model: Any):
    row = quarantined(KillmailFactory())
    viewer = logged_in_client(django_user_model, "killboard.view_rejectedkillmail")
    operator = logged_in_client(
        django_user_model, "killboard.change_rejectedkillmail", username="operator"
    )

    action(viewer, [row.pk])
    assert RejectedKillmail.objects.filter(pk=row.pk).exists()
    assert "retry" not in action_names(viewer)

    assert "retry" in action_names(operator)
    action(operator, [row.pk])
    assert not RejectedKillmail.objects.exists()
