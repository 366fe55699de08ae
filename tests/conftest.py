"""Shared fixtures: test data files and the killmails in them."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from config.background import runner
from fakeupstream.server import FakeUpstream
from fakeupstream.world import SAMPLES_DIR, World

DATA = Path(__file__).parent / "data"
# ESI buckets far above the real ones, for the many tests where the rate is not the point.
GENEROUS_BUCKETS = dict.fromkeys(
    ("killmail", "char-affiliation", "names", "character", "corporation", "alliance", "universe"),
    (10**6, 900.0),
)
# Real upstream samples only the tests read; those the fake upstream reads too (the ESI
# killmail bodies, the names 404) live with it, in fakeupstream/data/ (SAMPLES_DIR).
UPSTREAM = DATA / "upstream"


def load(name: str) -> Any:
    """A real upstream sample by file name, from fakeupstream/data/ or tests/data/upstream/."""
    path = SAMPLES_DIR / name
    return json.loads((path if path.exists() else UPSTREAM / name).read_text())


@pytest.fixture
def sample_bodies() -> list[dict[str, Any]]:
    """The real ESI bodies: a solo kill, a Sotiyo with 581 attackers, a titan with 982."""
    return [load(path.name) for path in sorted(SAMPLES_DIR.glob("esi_killmail_*.json"))]


_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    """Refuse any connection that leaves this machine: tests talk to loopback only."""
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise OSError(f"tests must not connect to {host}: only loopback is allowed")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _upstreams_nowhere(settings: Any) -> None:
    """Upstream URLs point at a closed loopback port unless a test sets the fake's."""
    settings.ZKILLBOARD_API_URL = "http://127.0.0.1:9/zkb/api/"
    settings.ESI_URL = "http://127.0.0.1:9/esi/"
    settings.R2Z2_URL = "http://127.0.0.1:9/r2z2/"


@pytest.fixture(autouse=True)
def _background_runner_stopped() -> Iterator[None]:
    """Work a request handed to the background runner ends with its test, not in the next."""
    yield
    runner.stop()


@pytest.fixture
def world() -> World:
    """An empty fake EVE universe; tests add the characters they need."""
    return World(seed=1)


@pytest.fixture
def fake(world: World, settings: Any) -> Iterator[FakeUpstream]:
    """The fake zKillboard, ESI and R2Z2 on loopback, fast, with settings pointing at it."""
    with FakeUpstream(
        world,
        zkb_rate=1e6,
        r2z2_rate=1e6,
        esi_killmail_bucket=GENEROUS_BUCKETS["killmail"],
        esi_buckets=GENEROUS_BUCKETS,
    ) as upstream:
        settings.ZKILLBOARD_API_URL = upstream.zkb_url
        settings.ESI_URL = upstream.esi_url
        settings.ZKILLBOARD_REQUESTS_PER_SECOND = 1e6
        settings.R2Z2_URL = upstream.r2z2_url
        settings.R2Z2_REQUESTS_PER_SECOND = 1e6
        yield upstream


def logged_in_client(
    user_model: Any, *permissions: str, staff: bool = True, username: str = "staff"
) -> Client:
    """A test client logged in as a user holding exactly `permissions` ("app.codename")."""
    user = user_model.objects.create_user(username, password="pw", is_staff=staff)
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client
