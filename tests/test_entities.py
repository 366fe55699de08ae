"""A kind's entry in killboard.entities is all enrichment needs: its table, how it is named,
its route, what its details reference, and its queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.contrib import admin

from config.queues import ENRICHMENT_QUEUES
from enrichment import tasks
from killboard.entities import BY_KIND, DETAILED, ENTITY_KINDS
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
    model_fields = {field.attname for field in entry.model._meta.concrete_fields}
    assert entry.detail_fields
    assert set(entry.detail_fields) <= model_fields


@pytest.mark.parametrize("entry", DETAILED, ids=lambda entry: entry.kind)
def test_a_universe_route_shares_the_universe_group_and_the_type_queue(entry) -> None:
    universe = entry.detail_path.startswith("universe/")

    assert (entry.detail_group == "universe") == universe
    assert (entry.queue == "esi_type_info_queue") == universe


def test_every_kind_gets_its_name_from_names_or_from_its_details() -> None:
    for entry in ENTITY_KINDS:
        assert entry.named or entry.has_details, entry.kind
    assert {entry.kind for entry in ENTITY_KINDS if not entry.named} == {"group", "category"}


def test_references_are_kept_fields_pointing_at_kinds_later_in_the_registry() -> None:
    order = [entry.kind for entry in ENTITY_KINDS]
    for entry in ENTITY_KINDS:
        for attname, kind in entry.references.items():
            assert attname in entry.detail_fields, (entry.kind, attname)
            # One pass in registry order follows every cascade.
            assert order.index(kind) > order.index(entry.kind), (entry.kind, kind)
            field = entry.model._meta.get_field(attname.removesuffix("_id"))
            assert field.related_model is BY_KIND[kind].model
    assert BY_KIND["type"].references == {"group_id": "group"}
    assert BY_KIND["group"].references == {"category_id": "category"}
    assert BY_KIND["solar_system"].references == {"constellation_id": "constellation"}
    assert BY_KIND["constellation"].references == {"region_id": "region"}


def test_only_pilots_are_detailed_on_demand_and_their_details_keep_no_affiliation() -> None:
    on_demand = [entry.kind for entry in ENTITY_KINDS if entry.details_on_demand]

    assert on_demand == ["character"]
    assert set(BY_KIND["character"].detail_fields) == {"security_status", "birthday"}
    assert not BY_KIND["character"].details_follow_names
    assert BY_KIND["corporation"].details_follow_names
    assert not BY_KIND["group"].details_follow_names  # created by types, detailed directly


def test_every_enrichment_queue_serves_a_kind_or_the_name_scan() -> None:
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}

    assert set(ENRICHMENT_QUEUES) <= {entry.queue for entry in DETAILED} | routed


def test_a_kind_with_a_name_only_has_no_route_queue_or_fields() -> None:
    for entry in ENTITY_KINDS:
        if not entry.has_details:
            assert (entry.detail_group, entry.queue) == (None, None)
            assert dict(entry.detail_fields) == dict(entry.references) == {}
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
        lambda args, kwargs, queue: sent.append((*args, queue)),
    )

    with django_capture_on_commit_callbacks(execute=True):
        tasks.queue_details({entry.kind: [1] for entry in ENTITY_KINDS})

    assert sent == [(entry.kind, [1], entry.queue) for entry in DETAILED]
