"""Lossless end to end: what the upstreams may legally send is stored and exported as served."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import call_command

from backfill import lifecycle, tasks
from backfill.models import BackfillJob
from killboard.export import iter_records
from killboard.models import Killmail, RejectedKillmail
from tests.test_ingest import LEGAL_EDGES

pytestmark = pytest.mark.django_db(transaction=True)

CHARACTER = 2117325769


def backfill(**options: Any) -> BackfillJob:
    job = lifecycle.create_job(CHARACTER, **options)
    tasks.start_job(job.pk)
    job.refresh_from_db()
    return job


def served(world: Any, killmail_ids: list[int]) -> list[dict[str, Any]]:
    """What the upstreams hold for these killmails: ESI body plus zkb, by id."""
    return [
        {**world.body(killmail_id), "zkb": world.zkb(killmail_id)}
        for killmail_id in sorted(killmail_ids)
    ]


@pytest.mark.parametrize("item_shape", ["full", "zkbonly"])
def test_a_backfill_of_bodies_with_fields_unknown_today_keeps_every_one(fake, world, item_shape):
    world.novel_share = 0.3
    ids = world.add_character(CHARACTER, 450)
    fake.configure(item_shape=item_shape)

    job = backfill()

    novel = [killmail_id for killmail_id in ids if world.is_novel(killmail_id)]
    assert len(novel) > 100
    assert (job.status, job.stored, job.rejected, job.failed) == ("succeeded", 450, 0, 0)
    assert not RejectedKillmail.objects.exists()
    assert list(iter_records()) == served(world, ids)
    assert fake.stats()["violation_count"] == 0


def test_export_command_writes_what_the_upstream_served(fake, world, tmp_path):
    world.novel_share = 1.0
    ids = world.add_character(CHARACTER, 40)
    backfill()

    call_command("export_killmails", "--output", str(tmp_path / "out.jsonl"), stdout=io.StringIO())

    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == served(world, ids)


def test_an_esi_body_of_another_killmail_is_rejected_never_stored_as_it(fake, world):
    ids = world.add_character(CHARACTER, 30)
    asked, answered = ids[5], ids[6]
    world.misfiled[asked] = answered
    fake.configure(item_shape="zkbonly")

    job = backfill()

    assert (job.status, job.rejected, job.stored) == ("partial", 1, 29)
    assert not Killmail.objects.filter(killmail_id=asked).exists()
    quarantined = RejectedKillmail.objects.get()
    assert (quarantined.killmail_id, quarantined.job_id) == (asked, job.pk)
    assert f"ESI answered with killmail {answered} for killmail {asked}" in quarantined.reason
    assert quarantined.record["killmail_id"] == answered


def test_a_page_body_that_breaks_meaning_is_quarantined_and_the_job_ends_partial(fake, world):
    ids = world.add_character(CHARACTER, 20)
    broken = ids[3]
    body = world.body(broken)
    del body["victim"]["ship_type_id"]
    world.served_bodies[broken] = body

    job = backfill()

    assert (job.status, job.stored, job.rejected) == ("partial", 19, 1)
    quarantined = RejectedKillmail.objects.get()
    assert quarantined.record == {**body, "zkb": world.zkb(broken)}
    assert "victim.ship_type_id: required field is missing" in quarantined.reason
    assert "zKillboard page" in quarantined.source


def test_an_import_of_every_legal_edge_exports_exactly_what_it_read(world, tmp_path):
    world.novel_share = 1.0
    ids = world.add_character(CHARACTER, 25)
    records = [*served(world, ids), *LEGAL_EDGES.values()]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))

    out = io.StringIO()
    call_command("import_killmails", str(source), stdout=out, stderr=io.StringIO())
    call_command("export_killmails", "--output", str(tmp_path / "out.jsonl"), stdout=io.StringIO())

    assert f"{len(records)} new, 0 already stored, 0 rejected" in out.getvalue()
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    by_id = {record["killmail_id"]: record for record in records}
    assert [json.loads(line) for line in lines] == [by_id[i] for i in sorted(by_id)]
