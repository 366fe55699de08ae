"""The deployment recipes: the Procfile, and compose.yaml with its Dockerfile, kept in step.

The Procfile must run as the README gives it, on a fresh clone with no activated virtualenv
and no directory made by hand: the service test starts `.venv/bin/honcho start` on a copy of
the working tree against PostgreSQL, RabbitMQ and the fake upstream, and runs a backfill
through gunicorn. compose.yaml runs each Procfile line unchanged; there is no Docker Compose
here, so its structure is checked with PyYAML (and with `docker compose config` where the
plugin exists).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from django.contrib.auth import get_user_model

from api.models import ApiToken
from backfill.models import BackfillJob
from tests.workers import ROOT, purge_queues, require_services, service_env, wait_until

APP_SERVICES = ("web", "worker_backfill", "worker_enrichment", "beat", "live", "flower")
# Variables every process of the app needs from compose.
APP_ENVIRONMENT = ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY", "EVE_CONTACT")
# Seconds every Procfile process must stay up (the issue: beat died, and honcho took the
# others down with it).
STAY_UP_SECONDS = 30
CHARACTER = 2117325769
MUTATION = """
mutation {
  startKillmailBackfill(input: {characterId: %d, options: {maxPages: 2, limit: 50}}) {
    success message job { id status }
  }
}
"""


def procfile() -> dict[str, str]:
    """The Procfile's processes: name to command line."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(
        (name.strip(), command.strip())
        for name, _, command in (line.partition(":") for line in lines)
        if name.strip() and not name.startswith("#")
    )


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def compose_command(service: str) -> str:
    """The shell line a compose service runs, with compose's `$$` back to `$`."""
    command = compose()["services"][service]["command"]
    assert command[:2] == ["sh", "-c"], command
    assert len(command) == 3, command
    return command[2].replace("$$", "$")


def test_every_procfile_process_is_a_compose_service_running_the_same_line():
    processes = procfile()

    assert set(processes) == set(APP_SERVICES)
    for name, line in processes.items():
        assert compose_command(name) == line, name


def test_compose_commands_leave_their_variables_to_the_container():
    # A lone `$` would be filled in by compose from the host's environment, at `up` time.
    for name in APP_SERVICES:
        command = compose()["services"][name]["command"][2]
        assert not re.search(r"(?<!\$)\$(?!\$)", command.replace("$$", "")), name


def test_compose_runs_the_app_on_postgresql_and_rabbitmq():
    services = compose()["services"]

    for name in ("postgres", "rabbitmq"):
        assert services[name]["image"]
        assert services[name]["healthcheck"]["test"]
    assert services["migrate"]["command"][2].endswith("manage.py migrate --noinput")
    for name in (*APP_SERVICES, "migrate"):
        service = services[name]
        assert (service["build"], service["image"]) == (".", "killboard:latest"), name
        assert set(APP_ENVIRONMENT) <= set(service["environment"]), name
        assert service["environment"]["DJANGO_DEBUG"] == "false", name
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["rabbitmq"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert services["web"]["environment"]["PORT"] == "8000"
    assert services["web"]["ports"] == ["${WEB_PORT:-8000}:8000"]
    assert services["flower"]["environment"]["FLOWER_ADDRESS"] == "0.0.0.0"


def test_the_image_has_the_venv_the_procfile_lines_run_from():
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()

    assert "\nFROM python:3.11-slim\n" in dockerfile
    assert "python -m venv .venv && .venv/bin/pip install" in dockerfile
    assert "-r requirements.txt" in dockerfile
    assert "manage.py collectstatic --noinput" in dockerfile
    assert {".venv/", "var/", ".git/", "db.sqlite3*"} <= set(ignored)


def test_every_procfile_line_runs_a_program_of_the_projects_venv():
    for name, line in procfile().items():
        program = next(word for word in shlex.split(line) if word.startswith(".venv/"))
        assert (ROOT / program).is_file(), f"{name}: {program} (made by `make install`)"


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="no Docker Compose here: compose.yaml is checked with PyYAML only",
)
def test_docker_compose_accepts_the_file():
    env = {
        **os.environ,
        **dict.fromkeys(
            ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "EVE_CONTACT"), "x"
        ),
        "FLOWER_BASIC_AUTH": "admin:x",
    }
    result = subprocess.run(
        ["docker", "compose", "-f", "compose.yaml", "config", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr


# -- honcho on a fresh clone ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh_clone(target: Path) -> Path:
    """The working tree's files as a clone has them (tracked and new, nothing ignored), with
    the project's .venv linked in: a real `make install` takes minutes."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(ROOT / ".venv")
    return target


def group_members(groups: set[int]) -> list[int]:
    """Processes still in any of these process groups."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[2]) in groups and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_honcho(honcho: subprocess.Popen[bytes], groups: set[int]) -> list[int]:
    """SIGTERM honcho (it stops its processes), then kill what is left; what was left."""
    honcho.send_signal(signal.SIGTERM)
    try:
        honcho.wait(timeout=30)
    except subprocess.TimeoutExpired:
        honcho.kill()
        honcho.wait()
    time.sleep(0.5)
    left = group_members(groups)
    for group in {os.getpgid(pid) for pid in left if _alive(pid)}:
        os.killpg(group, signal.SIGKILL)
    return left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_honcho_runs_the_procfile_from_a_fresh_clone_and_a_backfill_through_gunicorn(
    tmp_path: Path, fake: Any, world: Any
):
    require_services()
    world.add_character(CHARACTER, 80)
    clone = fresh_clone(tmp_path / "clone")
    port = free_port()
    env = service_env(
        fake,
        # No activated virtualenv: the shell finds only the system's programs.
        PATH="/usr/local/bin:/usr/bin:/bin",
        PORT=str(port),
        FLOWER_PORT=str(free_port()),
        FLOWER_BASIC_AUTH="admin:secret",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="development-only-not-a-secret-honcho-test-0123456789",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SECURE_SSL_REDIRECT="false",
        ZKILLBOARD_REQUESTS_PER_SECOND="1000",
    )
    for name in ("VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(name, None)
    log = tmp_path / "honcho.log"
    purge_queues()
    with log.open("wb") as output:
        honcho = subprocess.Popen(
            [".venv/bin/honcho", "start"],
            cwd=clone,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    groups: set[int] = set()
    try:
        time.sleep(STAY_UP_SECONDS)
        text = log.read_text(errors="replace")
        started = dict(re.findall(r"(\w+)\.1 started \(pid=(\d+)\)", text))
        groups = {int(pid) for pid in started.values()}
        assert honcho.poll() is None, text[-3000:]
        assert set(started) == set(procfile()), text[-3000:]
        assert " stopped (rc=" not in text, text[-3000:]

        user = get_user_model().objects.create_superuser("ops", password="not-used")
        _, token = ApiToken.objects.issue(user, "honcho test")
        response = requests.post(
            f"http://127.0.0.1:{port}/graphql/",
            json={"query": MUTATION % CHARACTER},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text[:2000]
        payload = response.json()["data"]["startKillmailBackfill"]
        assert payload["success"] is True, payload
        job = BackfillJob.objects.get(pk=payload["job"]["id"])
        wait_until(lambda: not BackfillJob.objects.get(pk=job.pk).is_active, timeout=120)
        job.refresh_from_db()
        assert (job.status, job.stored) == (BackfillJob.Status.SUCCEEDED, 80)
        assert honcho.poll() is None, log.read_text(errors="replace")[-3000:]
    finally:
        left = stop_honcho(honcho, groups)
        purge_queues()
    assert left == [], f"processes left after honcho stopped: {left}"
