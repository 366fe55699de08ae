"""The admin: killmails and entities, backfill jobs and their actions, day coverage, API
tokens."""

from __future__ import annotations

import html
from datetime import UTC, date, datetime
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from api.models import ApiToken, hash_token
from backfill import lifecycle, planning, tasks
from backfill.models import BackfillDay, BackfillJob, DayCoverage, FailedKillmail
from backfill.planner import Plan
from killboard.ingest import ingest_killmails
from killboard.models import Character, ItemType, Killmail, Participant, Region, SolarSystem
from tests.conftest import logged_in_client
from tests.factories import AllianceFactory, CharacterFactory, CorporationFactory, KillmailFactory

pytestmark = pytest.mark.django_db

CHARACTER = 2117325769
CORPORATION = 98000001
ALLIANCE = 99000001
JOBS = reverse("admin:backfill_backfilljob_changelist")
ADD_JOB = reverse("admin:backfill_backfilljob_add")
CHARACTERS = reverse("admin:killboard_character_changelist")
CORPORATIONS = reverse("admin:killboard_corporation_changelist")
ALLIANCES = reverse("admin:killboard_alliance_changelist")
COVERAGE = reverse("admin:backfill_daycoverage_changelist")
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


def jobs_ran() -> None:
    """Wait for the jobs a request handed to the background runner (tests have no broker)."""
    assert tasks.runner.wait_idle(60)


def page_text(response: Any) -> str:
    """The page as a reader sees it (entities such as &#x27; unescaped)."""
    return html.unescape(response.content.decode())


def job_page(client: Client, job: BackfillJob) -> str:
    return page_text(client.get(reverse("admin:backfill_backfilljob_change", args=[job.pk])))


# -- killmails -------------------------------------------------------------------------------


def test_killmail_list_shows_victim_ship_system_and_value(
    admin_client: Client, django_assert_max_num_queries: Any
):
    bodies = stored_killmails(3)
    stored_killmails(20)

    # Session, user, the page, its count, the choices of the three list filters: not per row.
    with django_assert_max_num_queries(11):
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


def add_job_data(**fields: str) -> dict[str, str]:
    """The add form's fields: a character backfill with the default options, then `fields`."""
    data = {"target_type": "character", "target_id": str(CHARACTER), "limit": "200"}
    return {**data, "skip_existing": "on", **fields}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target_id": "abc"}, "character id must be a positive whole number, got 'abc'"),
        (
            {"target_type": "corporation", "target_id": "98x"},
            "corporation id must be a positive whole number, got '98x'",
        ),
        (
            {"target_type": "region", "target_id": "0"},
            "region id must be a positive whole number, got '0'",
        ),
        (
            {"target_type": "ship_type", "from_date": "2024-03-01", "to_date": "2024-02-01"},
            "to date 2024-02-01 is before from date 2024-03-01",
        ),
        ({"to_date": "2024-02-30"}, "to date must be a real date like 2023-01-01"),
        ({"limit": "500"}, "limit must be a whole number from 1 to 200, got 500"),
        ({"max_pages": "0"}, "max pages must be a whole number of at least 1, got 0"),
        ({"from_date": "2023-02-30"}, "from date must be a real date like 2023-01-01"),
        ({"from_date": "2999-01-01"}, "from date 2999-01-01 is in the future"),
    ],
)
def test_add_job_rejects_bad_options_with_the_cli_message_and_creates_no_job(
    admin_client: Client, fields: dict[str, str], message: str
):
    response = admin_client.post(ADD_JOB, add_job_data(**fields))

    assert response.status_code == 200
    assert page_text(response).count(message) == 1
    assert len(response.context["adminform"].form.errors) == 1
    assert not BackfillJob.objects.exists()


def test_add_job_offers_the_six_zkillboard_target_types(admin_client: Client):
    form = admin_client.get(ADD_JOB).context["adminform"].form

    assert [value for value, _ in form.fields["target_type"].choices] == [
        "character",
        "corporation",
        "alliance",
        "ship_type",
        "solar_system",
        "region",
    ]
    assert "to_date" in form.fields


def test_add_job_refuses_an_unknown_target_type(admin_client: Client):
    response = admin_client.post(ADD_JOB, add_job_data(target_type="history", target_id="0"))

    assert list(response.context["adminform"].form.errors) == ["target_type"]
    assert not BackfillJob.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_add_job_starts_a_corporation_backfill(admin_client: Client, fake: Any, world):
    world.add_character(CHARACTER, 30, corporation_id=CORPORATION, alliance_id=ALLIANCE)
    world.add_character(CHARACTER + 1, 12, corporation_id=CORPORATION, alliance_id=ALLIANCE)
    world.add_character(CHARACTER + 2, 9)  # another corporation
    data = add_job_data(target_type="corporation", target_id=str(CORPORATION), to_date="2026-12-31")

    response = admin_client.post(ADD_JOB, data, follow=True)
    jobs_ran()

    assert response.redirect_chain[-1][0] == JOBS
    job = BackfillJob.objects.get()
    assert (job.target_type, job.target_id, str(job.to_date)) == (
        "corporation",
        CORPORATION,
        "2026-12-31",
    )
    assert job.status == BackfillJob.Status.SUCCEEDED
    expected = set(world.search(corporation_ids=(CORPORATION,)))
    assert len(expected) == 42
    assert set(Killmail.objects.values_list("killmail_id", flat=True)) == expected
    assert job.stored == 42
    page = job_page(admin_client, job)
    for line in Plan.from_dict(job.plan).lines(planning.rates()):
        assert line in page
    assert "42 killmails over" in page
    assert fake.stats()["violation_count"] == 0


@pytest.mark.django_db(transaction=True)
def test_add_job_starts_a_ship_type_backfill(admin_client: Client, fake: Any, world):
    world.add_character(CHARACTER, 60)
    ship = world.body(world.killmail_ids(CHARACTER)[0])["victim"]["ship_type_id"]

    admin_client.post(ADD_JOB, add_job_data(target_type="ship_type", target_id=str(ship)))
    jobs_ran()

    job = BackfillJob.objects.get()
    assert (job.target_type, job.target_id, job.status) == ("ship_type", ship, "succeeded")
    expected = set(world.search(ship_type_ids=(ship,)))
    assert expected
    assert set(Killmail.objects.values_list("killmail_id", flat=True)) == expected
    assert fake.stats()["violation_count"] == 0


@pytest.mark.django_db(transaction=True)
def test_add_job_starts_a_backfill_of_any_character_id(admin_client: Client, fake: Any, world):
    world.add_character(CHARACTER, 30)
    assert not Character.objects.filter(id=CHARACTER).exists()
    data = add_job_data(max_pages="2", limit="10")

    response = admin_client.post(ADD_JOB, data, follow=True)
    jobs_ran()

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
    client.post(ADD_JOB, add_job_data())
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


def test_job_list_shows_the_target_in_words_with_its_name(admin_client: Client):
    CorporationFactory(id=CORPORATION, name="Tuskers")
    ItemType.objects.create(id=587, name="Rifter")
    lifecycle.create_job(CORPORATION, target_type="corporation")
    lifecycle.create_job(587, target_type="ship_type")
    Region.objects.create(id=10000002, name="The Forge")
    lifecycle.create_job(10000002, target_type="region")
    lifecycle.create_history_job("2026-08-01", "2026-08-02")

    page = page_text(admin_client.get(JOBS))

    assert f"corporation {CORPORATION} (Tuskers)" in page
    assert "ship type 587 (Rifter)" in page
    assert "region 10000002 (The Forge)" in page
    assert "history 2026-08-01..2026-08-02" in page


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
    jobs_ran()

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
    jobs_ran()

    assert "Retrying 1 failed killmails of 1 jobs." in response.content.decode()
    job.refresh_from_db()
    assert (job.status, job.failed, job.stored) == ("succeeded", 0, 1)
    assert Killmail.objects.filter(killmail_id=killmail_id).exists()


def test_job_page_shows_its_failures(admin_client: Client):
    job = lifecycle.create_job(CHARACTER)
    FailedKillmail.objects.create(job=job, killmail_id=5, reason="ESI: 422 wrong hash")

    page = admin_client.get(reverse("admin:backfill_backfilljob_change", args=[job.pk]))

    assert "ESI: 422 wrong hash" in page.content.decode()


def test_job_page_shows_the_plan_and_progress_by_source(admin_client: Client):
    plan = Plan(
        kind="scoped",
        killmails=1234,
        zkillboard_requests=9,
        dump_downloads=31,
        esi_calls=200,
        months=[[202608, 1034], [202605, 200]],
        dump_months=[202608],
    )
    job = lifecycle.create_job(CORPORATION, target_type="corporation", to_date="2026-09-01")
    BackfillJob.objects.filter(pk=job.pk).update(
        plan=plan.as_dict(),
        pages_fetched=7,
        dumps_fetched=12,
        killmails_listed=1234,
        bodies_from_page=3,
        bodies_from_dump=1017,
        bodies_from_esi=150,
        stored=1170,
    )

    page = job_page(admin_client, job)

    for line in plan.lines(planning.rates()):
        assert line in page
    assert "2026-08" in page  # the dense month
    assert "7 pages fetched" in page
    assert "12 day dumps fetched" in page
    sources = page.split('class="backfill-sources"')[1].split("</table>")[0]
    for cells in (["zKillboard", "7 pages", "3"], ["R2Z2", "12 day dumps", "1017"], ["ESI", "150"]):
        assert all(f"<td>{cell}" in sources for cell in cells)
    assert "Sept. 1, 2026" in page  # to_date
    assert "backfill-days" not in page  # no days: no day table


def test_job_page_lists_its_days_and_how_many_are_done(admin_client: Client):
    job = lifecycle.create_history_job("2026-08-01", "2026-08-03")
    done = datetime(2026, 9, 1, 12, tzinfo=UTC)
    BackfillDay.objects.bulk_create(
        [
            BackfillDay(job=job, day=date(2026, 8, 1), count=500, stored=500, done_at=done),
            BackfillDay(job=job, day=date(2026, 8, 2), count=700, stored=300),
            BackfillDay(job=job, day=date(2026, 8, 3), count=600),
        ]
    )

    page = job_page(admin_client, job)

    assert "1 of 3 days done, 800 stored" in page
    rows = page.split('class="backfill-days"')[1].split("</table>")[0]
    assert rows.count("<tr>") == 4  # the head and three days
    # Unfinished days first, newest first; then the done ones.
    assert rows.index("2026-08-03") < rows.index("2026-08-02") < rows.index("2026-08-01")
    assert "<td>2026-08-02</td><td>700</td><td>300</td><td>not yet</td>" in rows
    assert "<td>2026-08-01</td><td>500</td><td>500</td><td>2026-09-01 12:00</td>" in rows
    assert "Not planned yet." in page


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
    jobs_ran()

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


# -- "Backfill this corporation", "Backfill this alliance" -----------------------------------

ENTITY_ACTIONS = [
    ("corporation", CORPORATIONS, CorporationFactory),
    ("alliance", ALLIANCES, AllianceFactory),
]


@pytest.mark.parametrize(("kind", "url", "factory"), ENTITY_ACTIONS)
def test_backfill_entity_asks_for_the_options_first(admin_client: Client, kind, url, factory):
    entity = factory()

    response = action(admin_client, url, f"backfill_this_{kind}", [entity.id])

    page = page_text(response)
    assert f'id="backfill-{kind}-form"' in page
    assert f"{entity.name} ({entity.id})" in page
    assert 'name="to_date"' in page
    assert f'name="action" value="backfill_this_{kind}"' in page
    assert not BackfillJob.objects.exists()


@pytest.mark.parametrize(("kind", "url", "factory"), ENTITY_ACTIONS)
def test_backfill_entity_rejects_bad_options_and_starts_nothing(
    admin_client: Client, kind, url, factory
):
    entity = factory()

    response = action(
        admin_client,
        url,
        f"backfill_this_{kind}",
        [entity.id],
        apply="Start backfill",
        limit="200",
        from_date="2024-05-01",
        to_date="2024-04-30",
    )

    assert page_text(response).count("to date 2024-04-30 is before from date 2024-05-01") == 1
    assert not BackfillJob.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("kind", "url", "factory"), ENTITY_ACTIONS)
def test_backfill_entity_starts_a_job_of_that_kind(
    admin_client: Client, fake: Any, world, kind, url, factory
):
    entity = factory(id=CORPORATION if kind == "corporation" else ALLIANCE)
    world.add_character(CHARACTER, 12, corporation_id=CORPORATION, alliance_id=ALLIANCE)
    world.add_character(CHARACTER + 1, 5)  # another corporation and alliance

    response = action(
        admin_client,
        url,
        f"backfill_this_{kind}",
        [entity.id],
        apply="Start backfill",
        limit="200",
        skip_existing="on",
    )
    jobs_ran()

    assert response.redirect_chain[-1][0] == JOBS
    assert "Started 1 backfill jobs." in page_text(response)
    job = BackfillJob.objects.get()
    assert (job.target_type, job.target_id) == (kind, entity.id)
    assert (job.status, job.stored) == ("succeeded", 12)
    assert f"{kind} {entity.id} ({entity.name})" in page_text(response)
    assert fake.stats()["violation_count"] == 0


@pytest.mark.parametrize(("kind", "url", "factory"), ENTITY_ACTIONS)
def test_backfill_entity_needs_the_start_backfill_permission(
    django_user_model: Any, kind, url, factory
):
    entity = factory()
    client = logged_in_client(
        django_user_model, f"killboard.view_{kind}", f"killboard.change_{kind}"
    )

    choices = action_names(client, url)
    response = action(client, url, f"backfill_this_{kind}", [entity.id], apply="Start backfill")

    assert f"backfill_this_{kind}" not in choices
    assert f'id="backfill-{kind}-form"' not in page_text(response)
    assert not BackfillJob.objects.exists()


def test_backfill_actions_are_offered_with_the_permission(django_user_model: Any):
    client = logged_in_client(
        django_user_model,
        "killboard.view_corporation",
        "killboard.view_alliance",
        "backfill.start_backfill",
    )

    assert "backfill_this_corporation" in action_names(client, CORPORATIONS)
    assert "backfill_this_alliance" in action_names(client, ALLIANCES)


# -- day coverage ----------------------------------------------------------------------------


def test_day_coverage_lists_days_and_is_read_only(admin_client: Client):
    checked = datetime(2026, 9, 1, 6, tzinfo=UTC)
    DayCoverage.objects.create(
        day=date(2026, 8, 1), zkb_count=5321, stored_count=5321, complete=True, checked_at=checked
    )
    DayCoverage.objects.create(
        day=date(2026, 8, 2), zkb_count=4870, stored_count=4012, checked_at=checked
    )

    response = admin_client.get(COVERAGE)
    change = reverse("admin:backfill_daycoverage_change", args=["2026-08-02"])
    delete = reverse("admin:backfill_daycoverage_delete", args=["2026-08-02"])

    page = page_text(response)
    assert [row.day for row in response.context["cl"].result_list] == [
        date(2026, 8, 2),
        date(2026, 8, 1),
    ]
    assert "Count by zKillboard" in page
    assert '<td class="field-zkillboard_count">4870</td>' in page
    assert '<td class="field-stored">4012</td>' in page
    incomplete = admin_client.get(COVERAGE, {"complete__exact": "0"}).context["cl"].result_list
    assert [row.day for row in incomplete] == [date(2026, 8, 2)]
    assert 'name="_save"' not in page_text(admin_client.get(change))
    assert admin_client.get(reverse("admin:backfill_daycoverage_add")).status_code == 403
    assert admin_client.post(change, {"zkb_count": "1"}).status_code == 403
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert DayCoverage.objects.get(day=date(2026, 8, 2)).zkb_count == 4870


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
