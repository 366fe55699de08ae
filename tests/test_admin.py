"""The admin: killmails and entities, backfill jobs and their actions, API tokens."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from api.models import ApiToken, hash_token
from backfill import lifecycle
from backfill.models import BackfillJob, FailedKillmail
from killboard.ingest import ingest_killmails
from killboard.models import Character, ItemType, Killmail, Participant, SolarSystem
from tests.conftest import logged_in_client
from tests.factories import CharacterFactory, KillmailFactory

pytestmark = pytest.mark.django_db

CHARACTER = 2117325769
JOBS = reverse("admin:backfill_backfilljob_changelist")
ADD_JOB = reverse("admin:backfill_backfilljob_add")
CHARACTERS = reverse("admin:killboard_character_changelist")
KILLMAILS = reverse("admin:killboard_killmail_changelist")


def stored_killmails(count: int = 3) -> list[dict[str, Any]]:
    """Store killmails from the factories, with the victim's and ship's names resolved."""
    bodies = [KillmailFactory() for _ in range(count)]
    result = ingest_killmails(bodies)
    assert result.new == count
    for body in bodies:
        victim = body["victim"]
        Character.objects.filter(id=victim["character_id"]).update(
            name=f"Victim {victim['character_id']}"
        )
        Character.objects.filter(id=body["attackers"][0]["character_id"]).update(
            name=f"Hunter {body['killmail_id']}"
        )
    ItemType.objects.filter(id=587).update(name="Rifter")
    SolarSystem.objects.filter(id=30_000_142).update(name="Jita")
    return bodies


def action_names(client: Client, url: str) -> set[str]:
    """The actions a changelist offers the client's user."""
    form = client.get(url).context["action_form"]
    return {name for name, _ in form.fields["action"].choices if name} if form else set()


def action(client: Client, url: str, name: str, ids: list[int], **extra: Any) -> Any:
    return client.post(
        url, {"action": name, "_selected_action": [str(pk) for pk in ids], **extra}, follow=True
    )


# -- killmails -------------------------------------------------------------------------------


def test_killmail_list_shows_victim_ship_system_and_value(
    admin_client: Client, django_assert_max_num_queries: Any
):
    bodies = stored_killmails(3)
    stored_killmails(20)

    with django_assert_max_num_queries(8):  # session, user, the page, its count: not per row
        response = admin_client.get(KILLMAILS)

    page = response.content.decode()
    victim = bodies[0]["victim"]["character_id"]
    assert f"Victim {victim}" in page
    assert "Rifter" in page
    assert "Jita" in page
    assert "1,250,000" in page


def test_killmail_search_finds_by_id_and_by_attacker_name(admin_client: Client):
    bodies = stored_killmails(3)
    wanted = bodies[1]["killmail_id"]

    by_id = admin_client.get(KILLMAILS, {"q": str(wanted)}).context["cl"].result_list
    by_name = admin_client.get(KILLMAILS, {"q": f"hunter {wanted}"}).context["cl"].result_list
    by_victim = (
        admin_client.get(KILLMAILS, {"q": f"Victim {bodies[2]['victim']['character_id']}"})
        .context["cl"]
        .result_list
    )

    assert [k.killmail_id for k in by_id] == [wanted]
    assert [k.killmail_id for k in by_name] == [wanted]
    assert [k.killmail_id for k in by_victim] == [bodies[2]["killmail_id"]]


def test_killmail_page_shows_participants_and_items_with_names(
    admin_client: Client, sample_bodies: list[dict[str, Any]]
):
    body = min(sample_bodies, key=lambda b: len(b["attackers"]))
    ingest_killmails([body])
    ItemType.objects.filter(id=body["victim"]["ship_type_id"]).update(name="Victim Hull")
    item_type = body["victim"]["items"][0]["item_type_id"]
    ItemType.objects.filter(id=item_type).update(name="Some Module")

    response = admin_client.get(
        reverse("admin:killboard_killmail_change", args=[body["killmail_id"]])
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert "Victim Hull" in page
    assert "Some Module" in page
    assert "attacker 1" in page
    assert 'name="_save"' not in page  # read-only


def test_killmails_cannot_be_added_changed_or_deleted(admin_client: Client):
    [body] = stored_killmails(1)
    killmail_id = body["killmail_id"]

    assert admin_client.get(reverse("admin:killboard_killmail_add")).status_code == 403
    delete = reverse("admin:killboard_killmail_delete", args=[killmail_id])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert Killmail.objects.filter(killmail_id=killmail_id).exists()


def test_staff_without_view_permission_cannot_see_killmails(django_user_model: Any):
    stored_killmails(1)
    client = logged_in_client(django_user_model)

    assert client.get(KILLMAILS).status_code == 403


def test_non_staff_are_sent_to_the_login_page(client: Client, django_user_model: Any):
    user = django_user_model.objects.create_user("someone", password="pw")
    client.force_login(user)

    response = client.get(JOBS)

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


# -- entities --------------------------------------------------------------------------------


def test_entities_are_filtered_by_enrichment_status(admin_client: Client):
    Character.objects.bulk_create(
        [
            Character(id=1, name="Named"),
            Character(id=2),
            Character(id=3, not_found=True),
            Character(id=4, name_retry_at="2030-01-01T00:00:00Z"),
        ]
    )

    def ids(status: str) -> list[int]:
        response = admin_client.get(CHARACTERS, {"enrichment": status})
        return [c.id for c in response.context["cl"].result_list]

    assert ids("resolved") == [1]
    assert ids("pending") == [2]
    assert ids("not_found") == [3]
    assert ids("unresolvable") == [4]
    page = admin_client.get(CHARACTERS).content.decode()
    assert "Not found" in page
    assert "Unresolvable (retry later)" in page
    assert 'id="enrichment-counts"' in page  # resolved/pending/unresolvable per kind


@pytest.mark.django_db(transaction=True)
def test_reenrich_fetches_the_selected_characters_again(admin_client: Client, fake: Any, world):
    world.add_character(CHARACTER, 1)
    Character.objects.create(id=CHARACTER, not_found=True)

    response = action(admin_client, CHARACTERS, "re_enrich", [CHARACTER])

    assert "Queued enrichment of 1 characters." in response.content.decode()
    character = Character.objects.get(id=CHARACTER)
    assert character.name == world.name(CHARACTER)
    assert not character.not_found
    assert character.details_updated_at is not None


def test_reenrich_needs_the_change_permission(django_user_model: Any):
    Character.objects.create(id=CHARACTER)
    client = logged_in_client(django_user_model, "killboard.view_character")

    assert "re_enrich" not in action_names(client, CHARACTERS)


# -- backfill jobs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"character_id": "abc"}, "character id must be a positive whole number, got 'abc'"),
        ({"limit": "500"}, "limit must be a whole number from 1 to 200, got 500"),
        ({"max_pages": "0"}, "max pages must be a whole number of at least 1, got 0"),
        ({"from_date": "2023-02-30"}, "from date must be a real date like 2023-01-01"),
        ({"from_date": "2999-01-01"}, "from date 2999-01-01 is in the future"),
    ],
)
def test_add_job_rejects_bad_options_with_the_cli_message_and_creates_no_job(
    admin_client: Client, fields: dict[str, str], message: str
):
    data = {"character_id": str(CHARACTER), "limit": "200", "skip_existing": "on", **fields}

    response = admin_client.post(ADD_JOB, data)

    assert response.status_code == 200
    assert message in response.content.decode().replace("&#x27;", "'")
    assert not BackfillJob.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_add_job_starts_a_backfill_of_any_character_id(admin_client: Client, fake: Any, world):
    world.add_character(CHARACTER, 30)
    assert not Character.objects.filter(id=CHARACTER).exists()
    data = {"character_id": str(CHARACTER), "max_pages": "2", "limit": "10", "skip_existing": "on"}

    response = admin_client.post(ADD_JOB, data, follow=True)

    assert response.status_code == 200
    job = BackfillJob.objects.get()
    assert (job.target_id, job.max_pages, job.limit) == (CHARACTER, 2, 10)
    assert job.status == BackfillJob.Status.SUCCEEDED
    assert job.stored == 20
    assert fake.stats()["violation_count"] == 0


def test_starting_jobs_needs_the_start_backfill_permission(django_user_model: Any):
    client = logged_in_client(
        django_user_model, "backfill.add_backfilljob", "backfill.view_backfilljob"
    )

    assert client.get(ADD_JOB).status_code == 403
    client.post(ADD_JOB, {"character_id": str(CHARACTER), "limit": "200"})
    assert not BackfillJob.objects.exists()


def test_job_list_shows_status_progress_counters_and_flower_links(
    admin_client: Client, settings: Any
):
    settings.FLOWER_URL = "http://flower.example:5555"
    running = lifecycle.create_job(CHARACTER, max_pages=2, limit=100)
    BackfillJob.objects.filter(pk=running.pk).update(
        status="running", killmails_listed=50, stored=50, task_ids=["abc-123-task"]
    )
    unbounded = lifecycle.create_job(CHARACTER)
    BackfillJob.objects.filter(pk=unbounded.pk).update(status="running", killmails_listed=700)

    page = admin_client.get(JOBS).content.decode()

    assert '<progress class="backfill-progress" max="100" value="25">' in page
    assert "25%" in page
    assert "700 listed" in page
    assert "50 stored" in page
    assert 'href="http://flower.example:5555/task/abc-123-task"' in page
    filtered = admin_client.get(JOBS, {"status__exact": "queued"}).context["cl"].result_list
    assert list(filtered) == []


def test_flower_links_are_absent_without_flower_url(admin_client: Client, settings: Any):
    settings.FLOWER_URL = ""
    job = lifecycle.create_job(CHARACTER)
    BackfillJob.objects.filter(pk=job.pk).update(task_ids=["abc-123-task"])

    assert "/task/abc-123-task" not in admin_client.get(JOBS).content.decode()


def test_cancel_stops_active_jobs(admin_client: Client):
    job = lifecycle.create_job(CHARACTER)

    response = action(admin_client, JOBS, "cancel", [job.pk])

    assert "Cancelled 1 of 1 jobs" in response.content.decode()
    job.refresh_from_db()
    assert job.status == BackfillJob.Status.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_resume_finishes_a_cancelled_job(admin_client: Client, fake: Any, world):
    world.add_character(CHARACTER, 15)
    job = lifecycle.create_job(CHARACTER)
    lifecycle.cancel_job(job.pk)

    response = action(admin_client, JOBS, "resume", [job.pk])

    assert "Resumed 1 of 1 jobs." in response.content.decode()
    job.refresh_from_db()
    assert job.status == BackfillJob.Status.SUCCEEDED
    assert job.stored == 15


@pytest.mark.django_db(transaction=True)
def test_retry_failed_fetches_failed_killmails_again(admin_client: Client, fake: Any, world):
    [killmail_id] = world.add_character(CHARACTER, 1)
    job = lifecycle.create_job(CHARACTER)
    BackfillJob.objects.filter(pk=job.pk).update(
        status="succeeded", paging_done=True, failed=1, killmails_listed=1
    )
    FailedKillmail.objects.create(
        job=job,
        killmail_id=killmail_id,
        killmail_hash=world.killmail_hash(killmail_id),
        zkb=world.zkb(killmail_id),
        reason="ESI kept failing",
    )

    response = action(admin_client, JOBS, "retry_failed", [job.pk])

    assert "Retrying 1 failed killmails of 1 jobs." in response.content.decode()
    job.refresh_from_db()
    assert (job.status, job.failed, job.stored) == ("succeeded", 0, 1)
    assert Killmail.objects.filter(killmail_id=killmail_id).exists()


def test_job_page_shows_its_failures(admin_client: Client):
    job = lifecycle.create_job(CHARACTER)
    FailedKillmail.objects.create(job=job, killmail_id=5, reason="ESI: 422 wrong hash")

    page = admin_client.get(reverse("admin:backfill_backfilljob_change", args=[job.pk]))

    assert "ESI: 422 wrong hash" in page.content.decode()


def test_resume_and_retry_need_the_start_backfill_permission(django_user_model: Any):
    lifecycle.create_job(CHARACTER)
    client = logged_in_client(
        django_user_model, "backfill.view_backfilljob", "backfill.change_backfilljob"
    )

    choices = action_names(client, JOBS)

    assert "cancel" in choices
    assert "resume" not in choices
    assert "retry_failed" not in choices


# -- "Backfill this character" ---------------------------------------------------------------


def test_backfill_character_asks_for_the_options_first(admin_client: Client):
    character = CharacterFactory()

    response = action(admin_client, CHARACTERS, "backfill_this_character", [character.id])

    page = response.content.decode()
    assert 'id="backfill-character-form"' in page
    assert 'name="max_pages"' in page
    assert not BackfillJob.objects.exists()


def test_backfill_character_rejects_bad_options_and_starts_nothing(admin_client: Client):
    character = CharacterFactory()

    response = action(
        admin_client,
        CHARACTERS,
        "backfill_this_character",
        [character.id],
        apply="Start backfill",
        limit="0",
    )

    assert "limit must be a whole number from 1 to 200, got 0" in response.content.decode()
    assert not BackfillJob.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_backfill_character_starts_one_job_per_character(admin_client: Client, fake: Any, world):
    pilots = [CharacterFactory(), CharacterFactory()]
    for pilot in pilots:
        world.add_character(pilot.id, 5)

    response = action(
        admin_client,
        CHARACTERS,
        "backfill_this_character",
        [p.id for p in pilots],
        apply="Start backfill",
        from_date="",
        max_pages="3",
        limit="2",
        skip_existing="on",
    )

    assert response.redirect_chain[-1][0] == JOBS
    assert "Started 2 backfill jobs." in response.content.decode()
    jobs = BackfillJob.objects.order_by("target_id")
    assert [j.target_id for j in jobs] == [p.id for p in pilots]
    assert {(j.status, j.stored, j.max_pages, j.limit) for j in jobs} == {("succeeded", 5, 3, 2)}


def test_backfill_character_needs_the_start_backfill_permission(django_user_model: Any):
    character = CharacterFactory()
    client = logged_in_client(
        django_user_model, "killboard.view_character", "killboard.change_character"
    )

    choices = action_names(client, CHARACTERS)
    response = action(client, CHARACTERS, "backfill_this_character", [character.id])

    assert "backfill_this_character" not in choices
    assert 'id="backfill-character-form"' not in response.content.decode()


# -- API tokens ------------------------------------------------------------------------------


def test_admin_issues_a_token_shown_once_and_stored_hashed(admin_client: Client, admin_user):
    response = admin_client.post(
        reverse("admin:api_apitoken_add"), {"user": admin_user.pk, "name": "ci"}, follow=True
    )

    page = response.content.decode()
    token = page.split("Token for admin: ")[1].split(" ")[0]
    row = ApiToken.objects.get()
    assert row.token_hash == hash_token(token)
    assert token not in row.token_hash
    assert token not in admin_client.get(reverse("admin:api_apitoken_changelist")).content.decode()


def test_victim_participant_rows_stay_unique():
    # The admin reads the victim through a filtered join: it relies on one victim a killmail.
    [body] = stored_killmails(1)
    assert Participant.objects.filter(killmail_id=body["killmail_id"], is_victim=True).count() == 1
