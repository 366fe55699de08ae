"""A kind's entry in killboard.entities is all enrichment needs: its table, route and queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.contrib import admin

from config.queues import ENRICHMENT_QUEUES
from enrichment import tasks
from killboard.entities import DETAILED, ENTITY_KINDS
from killboard.models import Entity


def test_every_model_kind_and_route_appears_once() -> None:
    kinds = [entry.kind for entry in ENTITY_KINDS]
    models = [entry.model for entry in ENTITY_KINDS]
    paths = [entry.detail_path for entry in DETAILED]

    assert len(set(kinds)) == len(kinds)
    assert len(set(models)) == len(models)
    assert len(set(paths)) == len(paths)
    assert set(models) == set(Entity.__subclasses__())


@pytest.mark.parametrize("entry", DETAILED, ids=lambda entry: entry.kind)
def test_a_detailed_kind_has_a_route_a_group_a_consumed_queue_and_its_fields(entry) -> None:
    assert entry.path(90) == entry.detail_path.replace("{id}", "90")
    assert not entry.path(90).startswith("/")
    assert entry.path(90).endswith("/")
    assert entry.detail_group
    assert entry.queue in ENRICHMENT_QUEUES
    model_fields = {field.name for field in entry.model._meta.concrete_fields}
    assert entry.detail_fields
    assert set(entry.detail_fields) <= model_fields


def test_every_enrichment_queue_serves_a_kind_or_the_name_scan() -> None:
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}

    assert set(ENRICHMENT_QUEUES) <= {entry.queue for entry in DETAILED} | routed


def test_a_kind_with_a_name_only_has_no_route_queue_or_fields() -> None:
    for entry in ENTITY_KINDS:
        if not entry.has_details:
            assert (entry.detail_group, entry.queue, dict(entry.detail_fields)) == (None, None, {})
            with pytest.raises(ValueError, match="no detail route"):
                entry.path(90)


def test_every_kind_has_an_admin() -> None:
    for entry in ENTITY_KINDS:
        assert admin.site.is_registered(entry.model), entry.kind


def test_a_detail_body_fills_its_fields_and_a_bad_value_becomes_empty() -> None:
    [corporation] = [entry for entry in DETAILED if entry.kind == "corporation"]
    body = {
        "ticker": "X" * 20,
        "ceo_id": 90,
        "alliance_id": True,
        "name": "Corp",
        "date_founded": "2015-03-01T12:00:00Z",
    }

    assert corporation.detail_values(body) == {
        "ticker": "X" * 16,
        "ceo_id": 90,
        "alliance_id": None,
        "member_count": None,
        "date_founded": datetime(2015, 3, 1, 12, tzinfo=UTC),
    }


@pytest.mark.django_db
def test_detail_batches_go_to_their_kinds_queue(
    monkeypatch, django_capture_on_commit_callbacks
) -> None:
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        tasks.enrich_details,
        "apply_async",
        lambda args, queue: sent.append((*args, queue)),
    )

    with django_capture_on_commit_callbacks(execute=True):
        tasks.queue_details({entry.kind: [1] for entry in ENTITY_KINDS})

    assert sent == [(entry.kind, [1], entry.queue) for entry in DETAILED]
