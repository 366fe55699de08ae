"""Nobody in who should not be: write paths, CSRF, GraphQL, production settings, passwords
and guessing, secrets.

Every way to change something (the admin's add forms and actions, the GraphQL mutation) is
tried as an anonymous visitor, a logged-in user who is not staff, and staff without the
matching permission: each must change nothing. A superuser doing the same proves the paths
are real. Flower's basic auth is checked on a running Flower by
`tests/test_flower.py::test_flower_refuses_requests_without_credentials`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import string
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from api.models import ApiToken
from backfill import lifecycle
from backfill.models import BackfillJob, FailedKillmail
from config import throttle
from killboard.models import Character, RejectedKillmail
from tests.conftest import logged_in_client
from tests.factories import KillmailFactory
from tests.workers import ROOT, manage

pytestmark = pytest.mark.django_db

CHARACTER = 2117325769
JOBS = reverse("admin:backfill_backfilljob_changelist")
ADD_JOB = reverse("admin:backfill_backfilljob_add")
CHARACTERS = reverse("admin:killboard_character_changelist")
TOKENS = reverse("admin:api_apitoken_changelist")
REJECTED = reverse("admin:killboard_rejectedkillmail_changelist")
ADD_TOKEN = reverse("admin:api_apitoken_add")
ENRICHED_AT = datetime(2026, 1, 1, tzinfo=UTC)
MUTATION = """
mutation { startKillmailBackfill(input: {characterId: 2117325769}) { success message } }
"""
# Every model permission a read-only operator could hold: they see everything, change nothing.
VIEW_PERMISSIONS = (
    "backfill.view_backfilljob",
    "killboard.view_character",
    "killboard.view_rejectedkillmail",
    "api.view_apitoken",
)


@pytest.fixture
def rows(admin_user: Any) -> dict[str, int]:
    """A queued job, a cancelled one with a failure, a character, a token, a retryable reject."""
    queued = lifecycle.create_job(CHARACTER)
    cancelled = lifecycle.create_job(CHARACTER + 1)
    lifecycle.cancel_job(cancelled.pk)
    FailedKillmail.objects.create(job=cancelled, killmail_id=1, killmail_hash="a" * 40, reason="x")
    BackfillJob.objects.filter(pk=cancelled.pk).update(failed=1)
    character = Character.objects.create(id=CHARACTER, name="Pilot", details_updated_at=ENRICHED_AT)
    token, _ = ApiToken.objects.issue(admin_user, "bot")
    record = KillmailFactory()
    rejected = RejectedKillmail.objects.create(
        killmail_id=record["killmail_id"], record=record, digest="0" * 64, reason="older rules"
    )
    return {
        "admin": admin_user.pk,
        "queued": queued.pk,
        "cancelled": cancelled.pk,
        "character": character.id,
        "token": token.pk,
        "rejected": rejected.pk,
    }


def snapshot() -> tuple[Any, ...]:
    """Everything a write path could change."""
    return (
        sorted(BackfillJob.objects.values_list("pk", "status", "failed")),
        FailedKillmail.objects.count(),
        sorted(Character.objects.values_list("id", "details_updated_at")),
        sorted(ApiToken.objects.values_list("pk", "is_active")),
        sorted(RejectedKillmail.objects.values_list("pk", flat=True)),
    )


def action(name: str, *ids: int, **extra: str) -> dict[str, Any]:
    return {"action": name, "_selected_action": [str(pk) for pk in ids], **extra}


# (url, form data from the fixture's row ids)
WRITE_PATHS: dict[str, tuple[str, Any]] = {
    "add a backfill job": (
        ADD_JOB,
        lambda rows: {
            "target_type": "character",
            "target_id": "90000001",
            "limit": "200",
            "skip_existing": "on",
        },
    ),
    "cancel jobs": (JOBS, lambda rows: action("cancel", rows["queued"])),
    "resume jobs": (JOBS, lambda rows: action("resume", rows["cancelled"])),
    "retry failed killmails": (JOBS, lambda rows: action("retry_failed", rows["cancelled"])),
    "backfill this character": (
        CHARACTERS,
        lambda rows: action(
            "backfill_this_character", rows["character"], apply="Start backfill", limit="200"
        ),
    ),
    "re-enrich characters": (CHARACTERS, lambda rows: action("re_enrich", rows["character"])),
    "issue an API token": (ADD_TOKEN, lambda rows: {"user": str(rows["admin"]), "name": "stolen"}),
    "revoke API tokens": (TOKENS, lambda rows: action("revoke", rows["token"])),
    "retry rejected killmails": (REJECTED, lambda rows: action("retry", rows["rejected"])),
}


@pytest.fixture(params=["anonymous", "not staff", "staff without the permission"])
def outsider(request: Any, django_user_model: Any) -> Client:
    """A client that must not be able to write."""
    if request.param == "anonymous":
        return Client()
    staff = request.param != "not staff"
    return logged_in_client(django_user_model, *VIEW_PERMISSIONS, staff=staff, username="someone")


@pytest.mark.parametrize("path", WRITE_PATHS)
def test_write_paths_change_nothing_for_outsiders(outsider: Client, rows: dict[str, int], path):
    url, data = WRITE_PATHS[path]
    before = snapshot()

    outsider.post(url, data(rows), follow=True)

    assert snapshot() == before


@pytest.mark.parametrize("path", WRITE_PATHS)
def test_write_paths_work_for_a_superuser(admin_client: Client, rows: dict[str, int], path):
    url, data = WRITE_PATHS[path]
    before = snapshot()

    admin_client.post(url, data(rows), follow=True)

    assert snapshot() != before


def test_every_admin_action_declares_the_permission_it_needs():
    unguarded = [
        f"{model.__name__}.{name}"
        for model, model_admin in admin.site._registry.items()
        for function, name, _ in model_admin._get_base_actions()
        if not getattr(function, "allowed_permissions", None)
    ]

    assert unguarded == []


def test_admin_posts_without_the_csrf_token_are_refused(admin_user: Any, rows: dict[str, int]):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    before = snapshot()

    add = client.post(ADD_JOB, WRITE_PATHS["add a backfill job"][1](rows))
    cancel = client.post(JOBS, action("cancel", rows["queued"]))

    assert (add.status_code, cancel.status_code) == (403, 403)
    assert snapshot() == before


def test_admin_posts_with_the_csrf_token_are_accepted(admin_user: Any, rows: dict[str, int]):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    client.get(JOBS)  # sets the csrftoken cookie, as any admin page does
    token = client.cookies["csrftoken"].value

    response = client.post(JOBS, {**action("cancel", rows["queued"]), "csrfmiddlewaretoken": token})

    assert response.status_code == 302
    assert BackfillJob.objects.get(pk=rows["queued"]).status == BackfillJob.Status.CANCELLED


def graphql(client: Client, query: str, **headers: str) -> Any:
    return client.post(
        "/graphql/", json.dumps({"query": query}), content_type="application/json", **headers
    )


def test_graphql_refuses_anonymous_mutations(client: Client):
    response = graphql(client, MUTATION)

    assert response.status_code == 401
    assert response.json()["data"] is None
    assert not BackfillJob.objects.exists()


def test_graphql_refuses_mutations_of_non_staff_sessions(django_user_model: Any):
    client = logged_in_client(
        django_user_model, "backfill.start_backfill", staff=False, username="someone"
    )

    assert graphql(client, MUTATION).status_code == 401
    assert not BackfillJob.objects.exists()


def test_graphql_refuses_mutations_without_the_permission(django_user_model: Any):
    staff = logged_in_client(django_user_model, *VIEW_PERMISSIONS, username="someone")
    user = django_user_model.objects.get(username="someone")
    _, token = ApiToken.objects.issue(user, "read-only bot")

    by_session = graphql(staff, MUTATION).json()
    by_token = graphql(Client(), MUTATION, HTTP_AUTHORIZATION=f"Bearer {token}").json()

    for answer in (by_session, by_token):
        assert answer["data"] is None
        assert "permission to start backfills" in answer["errors"][0]["message"]
    assert not BackfillJob.objects.exists()


def test_graphql_refuses_mutations_sent_with_get(admin_client: Client):
    response = admin_client.get("/graphql/", {"query": MUTATION})

    assert response.status_code in (400, 405)
    assert not BackfillJob.objects.exists()


# -- production settings (each in a process of its own, as a server would load them) -------


def random_secret_key() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(50))


def production_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=random_secret_key(),
        DJANGO_ALLOWED_HOSTS="example.com",
    )
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def loaded_settings(env: dict[str, str]) -> dict[str, Any]:
    names = [
        "DEBUG",
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "SECURE_SSL_REDIRECT",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD",
    ]
    code = (
        "import json; from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}))"
    )
    result = manage(env, "shell", "-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "secret_key", [None, "development-only-not-a-secret"], ids=["unset", "development key"]
)
def test_production_settings_refuse_the_development_key(secret_key: str | None):
    env = production_env()
    env.pop("DJANGO_SECRET_KEY")
    if secret_key:
        env["DJANGO_SECRET_KEY"] = secret_key

    result = manage(env, "check")

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off" in result.stderr


def test_production_settings_default_to_https_only_cookies_and_hsts():
    loaded = loaded_settings(production_env())

    assert loaded == {
        "DEBUG": False,
        "ALLOWED_HOSTS": ["example.com"],
        "CSRF_TRUSTED_ORIGINS": [],
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 3600,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
    }


def test_production_settings_come_from_the_environment():
    loaded = loaded_settings(
        production_env(
            DJANGO_ALLOWED_HOSTS="kb.example.com,api.example.com",
            DJANGO_CSRF_TRUSTED_ORIGINS="https://kb.example.com",
            DJANGO_SECURE_SSL_REDIRECT="false",
            DJANGO_SECURE_HSTS_SECONDS="31536000",
        )
    )

    assert loaded["ALLOWED_HOSTS"] == ["kb.example.com", "api.example.com"]
    assert loaded["CSRF_TRUSTED_ORIGINS"] == ["https://kb.example.com"]
    assert loaded["SECURE_SSL_REDIRECT"] is False
    assert loaded["SECURE_HSTS_SECONDS"] == 31536000
    assert loaded["SESSION_COOKIE_SECURE"] is True


def test_settings_are_production_unless_django_debug_is_true():
    env = production_env()
    env.pop("DJANGO_DEBUG")

    loaded = loaded_settings(env)

    assert loaded["DEBUG"] is False
    assert loaded["SECURE_SSL_REDIRECT"] is True


def test_check_deploy_is_clean_with_production_settings():
    result = manage(production_env(), "check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


# -- passwords and guessing -----------------------------------------------------------------


def test_a_one_letter_password_is_refused(admin_client: Client, django_user_model: Any):
    response = admin_client.post(
        reverse("admin:auth_user_add"),
        {"username": "newcomer", "password1": "a", "password2": "a", "usable_password": "true"},
    )

    assert response.status_code == 200
    assert "This password is too short." in response.content.decode()
    assert not django_user_model.objects.filter(username="newcomer").exists()


LOGIN = reverse("admin:login")


def log_in(password: str, username: str = "operator", address: str = "198.51.100.7") -> Any:
    return Client(REMOTE_ADDR=address).post(
        LOGIN, {"username": username, "password": password, "next": JOBS}
    )


@pytest.fixture
def operator(django_user_model: Any, settings: Any) -> str:
    """A staff user whose password is known; three failures lock a login out."""
    settings.AUTH_FAILURE_LIMIT = 3
    password = random_secret_key()
    django_user_model.objects.create_user("operator", password=password, is_staff=True)
    return password


def test_admin_login_is_refused_after_too_many_failures_even_with_the_password(operator: str):
    failures = [log_in("wrong") for _ in range(3)]

    refused = log_in(operator)

    assert "Please enter the correct username and password" in failures[0].content.decode()
    assert "Too many failed attempts: try again in 15 minutes." in failures[2].content.decode()
    assert refused.status_code == 200  # the form again, not the redirect of a login
    assert "Too many failed attempts: try again in 15 minutes." in refused.content.decode()
    assert "_auth_user_id" not in refused.wsgi_request.session


def test_admin_lockout_ends_after_the_lockout_period(operator: str, monkeypatch: Any):
    for _ in range(3):
        log_in("wrong")
    later = time.time() + 15 * 60 + 1
    monkeypatch.setattr(throttle, "time", SimpleNamespace(time=lambda: later))

    response = log_in(operator)

    assert response.status_code == 302
    assert response.url == JOBS


def test_admin_lockout_is_per_username_and_address(operator: str, django_user_model: Any):
    for _ in range(3):
        log_in("wrong")

    from_elsewhere = log_in(operator, address="198.51.100.8")

    assert from_elsewhere.status_code == 302


def test_a_successful_login_forgets_the_failures(operator: str):
    for _ in range(2):
        log_in("wrong")
    assert log_in(operator).status_code == 302

    for _ in range(2):
        log_in("wrong")

    assert log_in(operator).status_code == 302


# -- secrets ---------------------------------------------------------------------------------

# Things that look like credentials; the development key is the one allowed "secret".
SECRET_PATTERNS = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36}"  # GitHub token
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack token
    r"|kb_[A-Za-z0-9_-]{40,}"  # this project's API tokens
    r"|django-insecure-"
    r"|(?i:secret_key|api_key|password|passwd|token)\s*[:=]\s*[\"'][^\"'\s]{12,}[\"']"
    r"|://[^/\s:@]+:(?!guest@)[^/\s:@]{6,}@"  # a URL with a password other than guest's
)
ALLOWED = ("development-only-not-a-secret",)


def test_no_secret_is_tracked_in_the_repository():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    found = []
    this_file = Path(__file__).resolve()
    for name in filter(None, tracked.split("\0")):
        path = ROOT / name
        # This file spells the patterns out, so it would find itself.
        if not path.is_file() or path.resolve() == this_file:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            match = SECRET_PATTERNS.search(line)
            if match and not any(allowed in line for allowed in ALLOWED):
                found.append(f"{name}:{number}: {match.group()[:40]}")

    assert ".env" not in tracked.split("\0")
    assert found == []
