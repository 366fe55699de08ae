"""The GraphQL API: authentication, CSRF, the original mutation and `startBackfill`, queries
and their limits: cost, nested pages, BigInt, POST only, rates, staff-only introspection."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from api.models import ApiToken
from api.schema import MAX_KILLMAILS_PAGE, MAX_NESTED_PAGE
from backfill import lifecycle, planning, tasks
from backfill.models import BackfillJob
from backfill.planner import Plan
from fakeupstream.world import REGIONS
from killboard.ingest import ingest_killmails
from killboard.models import Character, Item, ItemType, Killmail, SolarSystem
from tests.factories import KillmailFactory

pytestmark = pytest.mark.django_db

URL = "/graphql/"
CHARACTER = 2117325769
CORPORATION = 98000001
ALLIANCE = 99000001
# The original system's mutation, exactly as its users send it.
ORIGINAL_MUTATION = """
mutation {
  startKillmailBackfill(
    input: {
      characterId: 2117325769
      options: { fromDate: "2023-01-01", maxPages: 10, limit: 200, skipExisting: true }
    }
  ) {
    success
    message
    queuedAt
    job { id status }
  }
}
"""
START = """
mutation Start($input: StartKillmailBackfillInput!) {
  startKillmailBackfill(input: $input) { success message queuedAt job { id status } }
}
"""
START_ANY = """
mutation Start($input: StartBackfillInput!) {
  startBackfill(input: $input) {
    success
    message
    queuedAt
    job {
      id status targetType targetId toDate plan
      killmailsListed stored pagesFetched dumpsFetched
      bodiesFromPage bodiesFromDump bodiesFromEsi skippedNewer
    }
  }
}
"""
JOB = """
query Job($id: ID!) {
  backfillJob(id: $id) {
    id status targetType targetId toDate plan
    killmailsListed stored pagesFetched dumpsFetched
    bodiesFromPage bodiesFromDump bodiesFromEsi skippedNewer
  }
}
"""
KILLMAILS = """
query Killmails($characterId: BigInt, $offset: Int, $limit: Int) {
  killmails(characterId: $characterId, offset: $offset, limit: $limit) {
    offset
    hasNextPage
    items {
      killmailId
      killmailTime
      totalValue
      solarSystem { id name }
      victim { character { id name } shipType { id name } damage }
      attackers { character { id name } corporation { id name } weaponType { id name } }
      items { itemType { id name } flag quantityDestroyed quantityDropped }
    }
  }
}
"""


@pytest.fixture(autouse=True)
def _fresh_rates() -> None:
    """Request counts live in the cache: each test starts with none."""
    cache.clear()


def graphql(
    client: Client, query: str, variables: dict[str, Any] | None = None, **headers: Any
) -> Any:
    return client.post(
        URL,
        json.dumps({"query": query, "variables": variables or {}}),
        content_type="application/json",
        **headers,
    )


def user_with(django_user_model: Any, *permissions: str, staff: bool = True) -> Any:
    user = django_user_model.objects.create_user("operator", password="pw", is_staff=staff)
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def session(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


# -- authentication and CSRF -----------------------------------------------------------------


def test_anonymous_requests_are_refused(client: Client):
    response = graphql(client, "{ backfillJobs { totalCount } }")

    assert response.status_code == 401
    assert "Authentication required" in response.json()["errors"][0]["message"]


def test_introspection_needs_authentication_too(client: Client):
    assert graphql(client, "{ __schema { types { name } } }").status_code == 401


def test_non_staff_sessions_are_refused(django_user_model: Any):
    client = session(user_with(django_user_model, "backfill.view_backfilljob", staff=False))

    assert graphql(client, "{ backfillJobs { totalCount } }").status_code == 401


def test_staff_session_posts_need_the_csrf_token(django_user_model: Any):
    client = session(
        user_with(django_user_model, "backfill.view_backfilljob"), enforce_csrf_checks=True
    )

    refused = graphql(client, "{ backfillJobs { totalCount } }")
    client.get("/admin/")  # sets the csrftoken cookie, as any admin page does
    token = client.cookies["csrftoken"].value
    accepted = graphql(client, "{ backfillJobs { totalCount } }", HTTP_X_CSRFTOKEN=token)

    assert refused.status_code == 403
    assert accepted.status_code == 200
    assert accepted.json()["data"] == {"backfillJobs": {"totalCount": 0}}


def test_a_token_authenticates_without_csrf(django_user_model: Any):
    user = user_with(django_user_model, "backfill.view_backfilljob", staff=False)
    _, token = ApiToken.objects.issue(user, "ci")
    client = Client(enforce_csrf_checks=True)

    response = graphql(client, "{ backfillJobs { totalCount } }", **bearer(token))

    assert response.status_code == 200
    assert response.json()["data"] == {"backfillJobs": {"totalCount": 0}}
    assert ApiToken.objects.get().last_used_at is not None


@pytest.mark.parametrize("header", ["Bearer kb_wrong", "Basic dXNlcjpwdw==", "Bearer "])
def test_wrong_tokens_are_refused(client: Client, header: str):
    response = graphql(client, "{ backfillJobs { totalCount } }", HTTP_AUTHORIZATION=header)

    assert response.status_code == 401
    assert response.json()["errors"][0]["message"] == "Invalid or revoked API token."


def test_revoked_tokens_are_refused(client: Client, django_user_model: Any):
    _, token = ApiToken.objects.issue(user_with(django_user_model), "old")
    ApiToken.objects.update(is_active=False)

    assert graphql(client, "{ backfillJobs { totalCount } }", **bearer(token)).status_code == 401


# -- the mutation ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_original_mutation_starts_a_backfill(admin_client: Client, fake: Any, world: Any):
    world.add_character(CHARACTER, 40)

    response = graphql(admin_client, ORIGINAL_MUTATION)

    result = response.json()
    assert "errors" not in result
    payload = result["data"]["startKillmailBackfill"]
    job = BackfillJob.objects.get()
    assert payload["success"] is True
    assert payload["message"] == f"Backfill #{job.pk} of character {CHARACTER} queued."
    assert payload["queuedAt"].startswith(job.created_at.isoformat()[:19])
    # The request only queued it; with no broker, the background runner's thread runs it.
    assert payload["job"] == {"id": str(job.pk), "status": "queued"}
    assert tasks.runner.wait_idle(60)
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert (job.target_id, str(job.from_date), job.max_pages, job.limit, job.skip_existing) == (
        CHARACTER,
        "2023-01-01",
        10,
        200,
        True,
    )
    assert job.stored == 40 - job.skipped_older
    assert fake.stats()["violation_count"] == 0


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"characterId": -5}, "character id must be a positive whole number, got -5"),
        (
            {"characterId": CHARACTER, "options": {"fromDate": "01/02/2023"}},
            "from date must be a real date like 2023-01-01, got '01/02/2023'",
        ),
        (
            {"characterId": CHARACTER, "options": {"fromDate": "2999-01-01"}},
            "from date 2999-01-01 is in the future",
        ),
        (
            {"characterId": CHARACTER, "options": {"limit": 201}},
            "limit must be a whole number from 1 to 200, got 201",
        ),
        (
            {"characterId": CHARACTER, "options": {"maxPages": 0}},
            "max pages must be a whole number of at least 1, got 0",
        ),
    ],
)
def test_invalid_input_answers_success_false_and_queues_nothing(
    admin_client: Client, variables: dict[str, Any], message: str
):
    response = graphql(admin_client, START, {"input": variables})

    assert response.json()["data"]["startKillmailBackfill"] == {
        "success": False,
        "message": message,
        "queuedAt": None,
        "job": None,
    }
    assert not BackfillJob.objects.exists()


def test_starting_needs_the_start_backfill_permission(django_user_model: Any):
    client = session(user_with(django_user_model, "backfill.view_backfilljob"))

    result = graphql(client, ORIGINAL_MUTATION).json()

    assert result["data"] is None
    assert "permission to start backfills" in result["errors"][0]["message"]
    assert not BackfillJob.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_token_with_the_permission_starts_a_backfill(
    client: Client, django_user_model: Any, fake: Any, world: Any
):
    world.add_character(CHARACTER, 5)
    user = user_with(django_user_model, "backfill.start_backfill", staff=False)
    _, token = ApiToken.objects.issue(user, "bot")
    variables = {"input": {"characterId": CHARACTER, "options": {"maxPages": 1, "limit": 3}}}

    payload = graphql(client, START, variables, **bearer(token)).json()
    assert tasks.runner.wait_idle(60)

    assert payload["data"]["startKillmailBackfill"]["success"] is True
    assert BackfillJob.objects.get().stored == 3


def stored_ids() -> set[int]:
    return set(Killmail.objects.values_list("killmail_id", flat=True))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("target_type", ["CORPORATION", "ALLIANCE", "REGION"])
def test_start_backfill_runs_a_backfill_of_the_target_to_success(
    admin_client: Client, fake: Any, world: Any, target_type: str
):
    world.add_character(CHARACTER, 40, corporation_id=CORPORATION, alliance_id=ALLIANCE)
    world.add_character(CHARACTER + 1, 15)  # another corporation and alliance
    region = REGIONS[world.body(world.killmail_ids(CHARACTER)[0])["solar_system_id"]]
    target_id, search, words = {
        "CORPORATION": (CORPORATION, {"corporation_ids": (CORPORATION,)}, "corporation"),
        "ALLIANCE": (ALLIANCE, {"alliance_ids": (ALLIANCE,)}, "alliance"),
        "REGION": (region, {"region_ids": (region,)}, "region"),
    }[target_type]
    options = {"toDate": "2026-12-31", "limit": 200}
    variables = {"input": {"targetType": target_type, "targetId": target_id, "options": options}}

    result = graphql(admin_client, START_ANY, variables).json()
    assert tasks.runner.wait_idle(60)

    assert "errors" not in result
    payload = result["data"]["startBackfill"]
    job = BackfillJob.objects.get()
    expected = set(world.search(**search))
    assert expected
    assert stored_ids() == expected
    assert payload["success"] is True
    assert payload["message"] == f"Backfill #{job.pk} of {words} {target_id} queued."
    assert payload["job"]["status"] == "queued"  # the background runner's thread runs it
    reported = graphql(admin_client, JOB, {"id": job.pk}).json()["data"]["backfillJob"]
    assert reported["status"] == "succeeded"
    assert (reported["targetType"], reported["targetId"]) == (words, target_id)
    assert reported["toDate"] == "2026-12-31"
    assert reported["killmailsListed"] == reported["stored"] == len(expected)
    assert reported["pagesFetched"] >= 1
    sources = ("bodiesFromPage", "bodiesFromDump", "bodiesFromEsi")
    assert sum(reported[name] for name in sources) == len(expected)
    assert (reported["dumpsFetched"], reported["skippedNewer"]) == (0, 0)
    assert reported["plan"] == Plan.from_dict(job.plan).lines(planning.rates())
    assert f"{len(expected)} killmails over" in reported["plan"][0]
    assert fake.stats()["violation_count"] == 0


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {
                "targetType": "CORPORATION",
                "targetId": CORPORATION,
                "options": {"fromDate": "2024-03-01", "toDate": "2024-02-01"},
            },
            "to date 2024-02-01 is before from date 2024-03-01",
        ),
        (
            {"targetType": "REGION", "targetId": 0},
            "region id must be a positive whole number, got 0",
        ),
        (
            {"targetType": "SOLAR_SYSTEM", "targetId": -30000142},
            "solar system id must be a positive whole number, got -30000142",
        ),
        (
            {"targetType": "SHIP_TYPE", "targetId": 587, "options": {"toDate": "2024-02-30"}},
            "to date must be a real date like 2023-01-01, got '2024-02-30'",
        ),
        (
            {"targetType": "ALLIANCE", "targetId": ALLIANCE, "options": {"limit": 0}},
            "limit must be a whole number from 1 to 200, got 0",
        ),
    ],
)
def test_start_backfill_refuses_bad_input_and_creates_nothing(
    admin_client: Client, variables: dict[str, Any], message: str
):
    result = graphql(admin_client, START_ANY, {"input": variables}).json()

    assert result["data"]["startBackfill"] == {
        "success": False,
        "message": message,
        "queuedAt": None,
        "job": None,
    }
    assert not BackfillJob.objects.exists()


@pytest.mark.parametrize("target_type", ["HISTORY", "corporation", "GALAXY"])
def test_start_backfill_refuses_an_unknown_target_type(admin_client: Client, target_type: str):
    variables = {"input": {"targetType": target_type, "targetId": CORPORATION}}

    result = graphql(admin_client, START_ANY, variables).json()
    assert tasks.runner.wait_idle(60)

    assert result["data"] is None
    assert "BackfillTargetType" in result["errors"][0]["message"]
    assert not BackfillJob.objects.exists()


def test_start_backfill_needs_the_start_backfill_permission(django_user_model: Any):
    client = session(user_with(django_user_model, "backfill.view_backfilljob"))
    variables = {"input": {"targetType": "CORPORATION", "targetId": CORPORATION}}

    result = graphql(client, START_ANY, variables).json()

    assert result["data"] is None
    assert "permission to start backfills" in result["errors"][0]["message"]
    assert not BackfillJob.objects.exists()


# -- queries ---------------------------------------------------------------------------------


def test_jobs_query_shows_status_counters_and_progress(admin_client: Client):
    job = lifecycle.create_job(CHARACTER, max_pages=1, limit=100)
    BackfillJob.objects.filter(pk=job.pk).update(status="running", killmails_listed=40, stored=40)
    lifecycle.create_job(CHARACTER + 1)
    query = """{ backfillJobs(status: "running") {
        totalCount hasNextPage
        items { id status targetId killmailsListed stored failed pending progress }
    } }"""

    result = graphql(admin_client, query).json()

    assert result["data"]["backfillJobs"] == {
        "totalCount": 1,
        "hasNextPage": False,
        "items": [
            {
                "id": str(job.pk),
                "status": "running",
                "targetId": CHARACTER,
                "killmailsListed": 40,
                "stored": 40,
                "failed": 0,
                "pending": 0,
                "progress": 0.4,
            }
        ],
    }


def test_jobs_query_shows_the_plan_dates_and_day_dump_counters(admin_client: Client):
    plan = Plan(kind="scoped", killmails=300, zkillboard_requests=3, months=[[202608, 300]])
    job = lifecycle.create_job(
        CORPORATION, target_type="corporation", from_date="2026-08-01", to_date="2026-08-31"
    )
    BackfillJob.objects.filter(pk=job.pk).update(
        plan=plan.as_dict(), dumps_fetched=4, bodies_from_dump=250, skipped_newer=7
    )
    unplanned = lifecycle.create_job(ALLIANCE, target_type="alliance")
    query = """query Job($id: ID!) { backfillJob(id: $id) {
        targetType targetId fromDate toDate plan dumpsFetched bodiesFromDump skippedNewer
    } }"""

    planned = graphql(admin_client, query, {"id": str(job.pk)}).json()["data"]["backfillJob"]
    empty = graphql(admin_client, query, {"id": str(unplanned.pk)}).json()["data"]["backfillJob"]

    assert planned == {
        "targetType": "corporation",
        "targetId": CORPORATION,
        "fromDate": "2026-08-01",
        "toDate": "2026-08-31",
        "plan": plan.lines(planning.rates()),
        "dumpsFetched": 4,
        "bodiesFromDump": 250,
        "skippedNewer": 7,
    }
    assert (empty["plan"], empty["toDate"]) == ([], None)


def test_killmails_query_resolves_names_in_a_few_queries(
    admin_client: Client, django_assert_max_num_queries: Any, settings: Any
):
    settings.GRAPHQL_RATE_PER_MINUTE = settings.GRAPHQL_ADDRESS_RATE_PER_MINUTE = 0  # no cache
    bodies = [KillmailFactory() for _ in range(5)]
    ingest_killmails(bodies)
    newest = bodies[-1]  # same time for all: the highest id comes first
    victim = newest["victim"]["character_id"]
    Character.objects.filter(id=victim).update(name="Victim Pilot")
    ItemType.objects.filter(id=587).update(name="Rifter")
    SolarSystem.objects.filter(id=30_000_142).update(name="Jita")

    with django_assert_max_num_queries(10):  # the page, participants, items: not per row
        result = graphql(admin_client, KILLMAILS, {"limit": 3}).json()

    page = result["data"]["killmails"]
    assert page["hasNextPage"] is True
    assert len(page["items"]) == 3
    mail = next(m for m in page["items"] if m["killmailId"] == newest["killmail_id"])
    assert mail["solarSystem"] == {"id": 30_000_142, "name": "Jita"}
    assert mail["victim"]["character"] == {"id": victim, "name": "Victim Pilot"}
    assert mail["victim"]["shipType"] == {"id": 587, "name": "Rifter"}
    assert mail["attackers"][0]["character"]["name"] is None  # not resolved yet
    assert mail["items"][0]["itemType"]["id"] == newest["victim"]["items"][0]["item_type_id"]
    rest = graphql(admin_client, KILLMAILS, {"limit": 3, "offset": 3}).json()
    assert len(rest["data"]["killmails"]["items"]) == 2
    assert rest["data"]["killmails"]["hasNextPage"] is False


def test_killmails_of_one_character(admin_client: Client):
    bodies = [KillmailFactory() for _ in range(3)]
    ingest_killmails(bodies)
    pilot = bodies[1]["attackers"][0]["character_id"]

    result = graphql(admin_client, KILLMAILS, {"characterId": pilot}).json()

    assert [m["killmailId"] for m in result["data"]["killmails"]["items"]] == [
        bodies[1]["killmail_id"]
    ]


def test_page_size_is_capped(admin_client: Client):
    query = "query Page($limit: Int) { killmails(limit: $limit) { items { killmailId } } }"

    result = graphql(admin_client, query, {"limit": MAX_KILLMAILS_PAGE + 1}).json()

    assert result["data"] is None
    assert f"limit must be from 1 to {MAX_KILLMAILS_PAGE}" in result["errors"][0]["message"]


def test_killmails_need_the_view_permission(django_user_model: Any):
    client = session(user_with(django_user_model, "backfill.view_backfilljob"))

    result = graphql(client, "{ killmails { items { killmailId } } }").json()

    assert "permission to view killmails" in result["errors"][0]["message"]


# -- limits ----------------------------------------------------------------------------------


def test_deep_queries_are_refused(admin_client: Client):
    deep = "{ killmails { items { victim { character { a { b { c { d { e } } } } } } } } }"

    result = graphql(admin_client, deep).json()

    assert any("exceeds maximum operation depth" in e["message"] for e in result["errors"])


def test_many_aliases_are_refused(admin_client: Client):
    aliases = " ".join(f"a{n}: backfillJobs {{ totalCount }}" for n in range(30))

    result = graphql(admin_client, f"{{ {aliases} }}").json()

    assert "aliases found" in result["errors"][0]["message"]


def test_huge_documents_are_refused(admin_client: Client):
    fields = " ".join(["totalCount"] * 3000)

    result = graphql(admin_client, f"{{ backfillJobs {{ {fields} }} }}").json()

    assert "token" in result["errors"][0]["message"].lower()


# -- cost ------------------------------------------------------------------------------------

# The query of the incident: 15 aliases of a full page of killmails with their attackers.
PAGE = "killmails(limit: 50) { items { killmailId attackers { character { id name } } } }"
EXPENSIVE = "{ " + " ".join(f"a{n}: {PAGE}" for n in range(15)) + " }"


def test_the_expensive_aliased_query_is_refused_naming_the_limit(admin_client: Client):
    ingest_killmails([KillmailFactory() for _ in range(3)])

    with CaptureQueriesContext(connection) as queries:
        result = graphql(admin_client, EXPENSIVE).json()

    assert result["data"] is None
    error = result["errors"][0]
    assert error["message"].startswith("Query cost 227,265 exceeds the maximum of 50,000")
    assert "GRAPHQL_MAX_COST" in error["message"]
    assert error["extensions"] == {
        "code": "QUERY_TOO_COSTLY",
        "cost": 227_265,
        "maxCost": 50_000,
    }
    assert not [q for q in queries.captured_queries if "killboard_killmail" in q["sql"]]


def test_fragments_and_variables_count_like_inline_fields(admin_client: Client, settings: Any):
    settings.GRAPHQL_MAX_COST = 1000
    query = """
    query Page($limit: Int) { killmails(limit: $limit) { items { ...Mail } } }
    fragment Mail on Killmail { killmailId attackers(limit: 10) { ...Pilot } }
    fragment Pilot on Participant { character { id name } }
    """

    small = graphql(admin_client, query, {"limit": 20}).json()  # 1 + 20 x (1 + 1 + 1 + 10 x 3)
    large = graphql(admin_client, query, {"limit": 50}).json()

    assert small == {"data": {"killmails": {"items": []}}}
    assert large["errors"][0]["extensions"]["cost"] == 1 + 50 * (3 + 10 * 3)


def test_an_absent_limit_counts_as_the_default_page(admin_client: Client, settings: Any):
    settings.GRAPHQL_MAX_COST = 100
    query = "{ killmails { items { killmailId } } }"  # 1 + 20 x (1 + 1)

    assert graphql(admin_client, query).json()["data"] == {"killmails": {"items": []}}
    settings.GRAPHQL_MAX_COST = 40
    assert (
        "exceeds the maximum of 40" in graphql(admin_client, query).json()["errors"][0]["message"]
    )


# -- nested pages ----------------------------------------------------------------------------

NESTED = """
query Nested($id: BigInt!, $offset: Int, $limit: Int) {
  killmail(killmailId: $id) {
    attackerCount
    itemCount
    attackers(offset: $offset, limit: $limit) { character { id } damage }
    items(offset: $offset, limit: $limit) { ordinal itemType { id } }
  }
}
"""


def titan(sample_bodies: list[dict[str, Any]]) -> dict[str, Any]:
    body = max(sample_bodies, key=lambda body: len(body["attackers"]))
    ingest_killmails([body])
    return body


def test_attackers_and_items_come_in_pages_with_their_counts(
    admin_client: Client,
    sample_bodies: list[dict[str, Any]],
    django_assert_max_num_queries: Any,
    settings: Any,
):
    settings.GRAPHQL_RATE_PER_MINUTE = settings.GRAPHQL_ADDRESS_RATE_PER_MINUTE = 0  # no cache
    body = titan(sample_bodies)
    attackers, items = body["attackers"], Item.objects.filter(killmail_id=body["killmail_id"])
    seen: list[int | None] = []
    offset = 0
    while offset < len(attackers):
        variables = {"id": body["killmail_id"], "offset": offset}
        with django_assert_max_num_queries(8):  # a page, not a row
            mail = graphql(admin_client, NESTED, variables).json()["data"]["killmail"]
        assert len(mail["attackers"]) == min(MAX_NESTED_PAGE, len(attackers) - offset)
        seen += [
            attacker["character"] and attacker["character"]["id"] for attacker in mail["attackers"]
        ]
        offset += MAX_NESTED_PAGE

    assert len(attackers) > 2 * MAX_NESTED_PAGE
    assert (mail["attackerCount"], mail["itemCount"]) == (len(attackers), items.count())
    assert seen == [attacker.get("character_id") for attacker in attackers]
    first = graphql(admin_client, NESTED, {"id": body["killmail_id"], "limit": 5}).json()
    assert [item["ordinal"] for item in first["data"]["killmail"]["items"]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"limit": MAX_NESTED_PAGE + 1}, f"limit must be from 1 to {MAX_NESTED_PAGE}, got 101"),
        ({"limit": 0}, f"limit must be from 1 to {MAX_NESTED_PAGE}, got 0"),
        ({"offset": -1}, "offset must be 0 or more, got -1"),
    ],
)
def test_nested_pages_are_capped(
    admin_client: Client,
    sample_bodies: list[dict[str, Any]],
    variables: dict[str, int],
    message: str,
):
    body = titan(sample_bodies)

    result = graphql(admin_client, NESTED, {"id": body["killmail_id"], **variables}).json()

    assert result["data"] == {"killmail": None}
    assert result["errors"][0]["message"] == message


# -- BigInt ----------------------------------------------------------------------------------

BEYOND_INT32 = 2**31 + 7


def test_ids_and_quantities_beyond_32_bits_round_trip(admin_client: Client):
    body = KillmailFactory()
    body["attackers"][0]["character_id"] = BEYOND_INT32
    body["victim"]["items"][0]["quantity_destroyed"] = 5 * 2**32
    ingest_killmails([body])
    query = """query Of($id: BigInt) { killmails(characterId: $id) { items {
        killmailId attackers { character { id } } items { quantityDestroyed }
    } } }"""

    for character_id in (BEYOND_INT32, str(BEYOND_INT32)):
        result = graphql(admin_client, query, {"id": character_id}).json()

        assert "errors" not in result
        (mail,) = result["data"]["killmails"]["items"]
        assert mail["attackers"][0]["character"]["id"] == BEYOND_INT32
        assert mail["items"][0]["quantityDestroyed"] == 5 * 2**32


def test_the_original_mutation_takes_a_character_id_beyond_32_bits(admin_client: Client):
    variables = {"input": {"characterId": BEYOND_INT32, "options": {"maxPages": 0}}}

    result = graphql(admin_client, START, variables).json()

    # Past the scalar: the answer is about the options, not the id.
    assert "errors" not in result
    assert result["data"]["startKillmailBackfill"]["message"].startswith("max pages must be")


@pytest.mark.parametrize("value", [1.5, 2.0, True, "abc", "1.5", "", None, [1]])
def test_bigint_refuses_anything_but_whole_numbers(admin_client: Client, value: Any):
    result = graphql(admin_client, START, {"input": {"characterId": value}}).json()

    assert result["data"] is None
    assert "characterId" in result["errors"][0]["message"]
    assert not BackfillJob.objects.exists()


@pytest.mark.parametrize("literal", ["1.5", "true", '"abc"', "9223372036854775808"])
def test_bigint_refuses_such_literals_too(admin_client: Client, literal: str):
    result = graphql(admin_client, f"{{ killmail(killmailId: {literal}) {{ killmailId }} }}").json()

    assert result["data"] is None
    assert "BigInt" in result["errors"][0]["message"]


# -- POST only -------------------------------------------------------------------------------


def test_queries_sent_with_get_are_refused(admin_client: Client):
    response = admin_client.get(URL, {"query": "{ backfillJobs { totalCount } }"})

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json()["errors"][0]["message"] == (
        "GraphQL queries and mutations must be sent with POST, not GET."
    )


def test_graphiql_loads_its_assets_from_the_static_files(admin_client: Client):
    response = admin_client.get(URL, HTTP_ACCEPT="text/html")

    page = response.content.decode()
    assert response.status_code == 200
    assert "/static/api/graphiql/graphiql.min.js" in page
    assert "/static/api/graphiql/react.production.min.js" in page
    assert "https://" not in page
    assert "http://" not in page
    assert "csrftoken" in response.cookies


# -- rates -----------------------------------------------------------------------------------


def test_each_token_is_limited_to_its_rate(django_user_model: Any, settings: Any):
    settings.GRAPHQL_RATE_PER_MINUTE = 3
    user = user_with(django_user_model, "backfill.view_backfilljob", staff=False)
    _, busy = ApiToken.objects.issue(user, "busy")
    _, other = ApiToken.objects.issue(user, "other")
    query = "{ backfillJobs { totalCount } }"

    answers = [graphql(Client(), query, **bearer(busy)) for _ in range(4)]
    others = graphql(Client(), query, **bearer(other))

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert 1 <= int(refused["Retry-After"]) <= 60
    message = refused.json()["errors"][0]["message"]
    assert message.startswith("Rate limit exceeded: at most 3 GraphQL requests a minute per API")
    assert message.endswith(f"retry in {refused['Retry-After']} s.")
    assert others.status_code == 200


def test_each_client_address_is_limited_whatever_its_credentials(
    django_user_model: Any, settings: Any
):
    settings.GRAPHQL_ADDRESS_RATE_PER_MINUTE = 2
    user = user_with(django_user_model, "backfill.view_backfilljob", staff=False)
    tokens = [ApiToken.objects.issue(user, f"t{n}")[1] for n in range(3)]
    query = "{ backfillJobs { totalCount } }"

    here = [graphql(Client(), query, **bearer(token)).status_code for token in tokens]
    anonymous = graphql(Client(), query)
    elsewhere = graphql(Client(REMOTE_ADDR="192.0.2.9"), query, **bearer(tokens[0]))

    assert here == [200, 200, 429]
    assert anonymous.status_code == 429
    assert "per client address" in anonymous.json()["errors"][0]["message"]
    assert elsewhere.status_code == 200


# -- introspection ---------------------------------------------------------------------------


def test_introspection_is_refused_to_non_staff_tokens(django_user_model: Any):
    user = user_with(django_user_model, "backfill.view_backfilljob", staff=False)
    _, token = ApiToken.objects.issue(user, "bot")

    for query in ("{ __schema { types { name } } }", '{ __type(name: "Killmail") { name } }'):
        result = graphql(Client(), query, **bearer(token)).json()

        assert result["data"] is None
        assert result["errors"][0]["message"].startswith(
            "Introspection (__schema, __type) is for staff users only"
        )
    typename = graphql(Client(), "{ __typename }", **bearer(token)).json()
    assert typename == {"data": {"__typename": "Query"}}


def test_introspection_is_allowed_to_staff_sessions_and_tokens(
    admin_client: Client, django_user_model: Any
):
    _, token = ApiToken.objects.issue(user_with(django_user_model, staff=True), "staff")
    query = '{ __type(name: "BigInt") { name kind } }'

    by_session = graphql(admin_client, query).json()
    by_token = graphql(Client(), query, **bearer(token)).json()

    assert by_session == by_token == {"data": {"__type": {"name": "BigInt", "kind": "SCALAR"}}}


def test_wrong_tokens_lock_the_address_out_even_with_a_right_one(
    django_user_model: Any, settings: Any
):
    settings.AUTH_FAILURE_LIMIT = 3
    _, token = ApiToken.objects.issue(user_with(django_user_model, staff=False), "bot")
    query = "{ __typename }"

    wrong = [graphql(Client(), query, **bearer("kb_guess")).status_code for _ in range(3)]
    right = graphql(Client(), query, **bearer(token))

    assert wrong == [401, 401, 429]
    assert right.status_code == 429
    assert right.json()["errors"][0]["message"].startswith("Too many failed attempts")
    assert int(right["Retry-After"]) > 60
