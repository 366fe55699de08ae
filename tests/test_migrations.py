"""Existing databases move forward without loss.

A database left by the previous main (killboard 0004, backfill 0002) is filled the way that
main's ingest and backfill wrote it, through the historical models, then migrated to every
app's latest migration; the current code must export the same killmails and retry the same
failures.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.state import StateApps

from backfill.lifecycle import reopen_job
from backfill.models import FailedKillmail, PendingKillmail
from killboard.export import iter_records
from killboard.models import Killmail
from tests.conftest import load
from tests.factories import ItemFactory, KillmailFactory

OLD_MAIN = [
    ("killboard", "0004_no_database_check_on_child_rows"),
    ("backfill", "0002_alter_backfilljob_options"),
]
# The old ingest's killmail columns for zkb keys; any other zkb key went to zkb_other.
OLD_ZKB_COLUMNS = {
    "locationID": "location_id",
    "hash": "killmail_hash",
    "fittedValue": "fitted_value",
    "droppedValue": "dropped_value",
    "destroyedValue": "destroyed_value",
    "totalValue": "total_value",
    "totalDroppableValue": "total_droppable_value",
    "points": "points",
    "npc": "npc",
    "solo": "solo",
    "awox": "awox",
    "labels": "labels",
}
ENTITY_IDS = (
    "character_id",
    "corporation_id",
    "alliance_id",
    "faction_id",
    "ship_type_id",
    "weapon_type_id",
)
CHARACTER = 2117325769


def migrate_to_latest() -> None:
    """Apply every app's latest migration (the graph's leaf nodes) not applied yet."""
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.fixture
def old_main(transactional_db: None) -> Iterator[StateApps]:
    """The models of the old main, over a test database migrated back to it.

    The database is at the latest migrations again afterwards, whatever the test did.
    """
    try:
        executor = MigrationExecutor(connection)
        executor.migrate(OLD_MAIN)
        yield executor.loader.project_state(OLD_MAIN).apps
    finally:
        migrate_to_latest()


def store_the_old_way(apps: StateApps, record: dict[str, Any]) -> None:
    """Write one record into the old main's rows, as its ingest (a2fb5cd) mapped them.

    Entity placeholders are left out: export reads none of them.
    """
    killmail_model = apps.get_model("killboard", "Killmail")
    participant_model = apps.get_model("killboard", "Participant")
    item_model = apps.get_model("killboard", "Item")
    killmail_id, victim = record["killmail_id"], record["victim"]
    zkb = record.get("zkb") or {}
    time = datetime.fromisoformat(record["killmail_time"])
    position = victim.get("position") or {}
    zkb_columns = {column: zkb.get(key) for key, column in OLD_ZKB_COLUMNS.items()}
    zkb_columns["killmail_hash"] = zkb.get("hash", "")
    killmail_model.objects.create(
        killmail_id=killmail_id,
        killmail_time=time,
        solar_system_id=record["solar_system_id"],
        moon_id=record.get("moon_id"),
        war_id=record.get("war_id"),
        position_x=position.get("x"),
        position_y=position.get("y"),
        position_z=position.get("z"),
        **zkb_columns,
        zkb_other={key: value for key, value in zkb.items() if key not in OLD_ZKB_COLUMNS} or None,
    )

    def participant(source: dict[str, Any], ordinal: int, **fields: Any) -> Any:
        ids = {key: source.get(key) for key in ENTITY_IDS}
        return participant_model(
            killmail_id=killmail_id, killmail_time=time, ordinal=ordinal, **ids, **fields
        )

    participant_model.objects.bulk_create(
        [
            participant(victim, 0, is_victim=True, damage=victim["damage_taken"]),
            *(
                participant(
                    attacker,
                    ordinal,
                    is_victim=False,
                    damage=attacker["damage_done"],
                    final_blow=attacker["final_blow"],
                    security_status=attacker["security_status"],
                )
                for ordinal, attacker in enumerate(record["attackers"])
            ),
        ]
    )
    # Depth-first, each content pointing at its container's ordinal.
    walk: list[tuple[dict[str, Any], int | None]] = []
    for item in victim.get("items", []):
        container = len(walk)
        walk += [(item, None), *((content, container) for content in item.get("items", []))]
    item_model.objects.bulk_create(
        item_model(
            killmail_id=killmail_id,
            ordinal=ordinal,
            container_ordinal=container,
            item_type_id=item["item_type_id"],
            flag=item["flag"],
            singleton=item["singleton"],
            quantity_destroyed=item.get("quantity_destroyed"),
            quantity_dropped=item.get("quantity_dropped"),
        )
        for ordinal, (item, container) in enumerate(walk)
    )


def old_records() -> list[dict[str, Any]]:
    """Real killmails and made-up ones; two carry a zkb key the old schema did not know."""
    package = load("zkb_redisq_package_119455394.json")["package"]
    with_href = KillmailFactory()
    with_href["zkb"]["href"] = (
        f"https://esi.evetech.net/v1/killmails/{with_href['killmail_id']}/"
        f"{with_href['zkb']['hash']}/"
    )
    container = ItemFactory(flag=11, items=[ItemFactory(), ItemFactory(quantity_dropped=3)])
    return [
        load("esi_killmail_107220741.json"),
        load("esi_killmail_108794056.json"),
        {**package["killmail"], "zkb": package["zkb"]},
        KillmailFactory(),
        with_href,
        KillmailFactory(victim__items=[container, ItemFactory()]),
    ]


def test_killmails_stored_by_the_old_main_export_as_they_came_after_migrating(
    old_main: StateApps, tmp_path: Path
) -> None:
    records = old_records()
    for record in records:
        store_the_old_way(old_main, record)
    # The old export gave back exactly the records the old ingest stored (its round-trip
    # tests held it), so the records stand for the export before the migration.
    before = sorted(records, key=lambda record: record["killmail_id"])

    migrate_to_latest()

    assert list(iter_records()) == before
    output = tmp_path / "out.jsonl"
    call_command("export_killmails", "--output", str(output), stdout=io.StringIO())
    assert [json.loads(line) for line in output.read_text().splitlines()] == before
    unknown = {
        record["killmail_id"]: {"href": record["zkb"]["href"]}
        for record in records
        if "href" in record.get("zkb", {})
    }
    assert len(unknown) == 2
    stored = Killmail.objects.filter(zkb_extra__isnull=False)
    assert {killmail.killmail_id: killmail.zkb_extra for killmail in stored} == unknown


def test_a_failure_recorded_by_the_old_main_can_still_be_retried(old_main: StateApps) -> None:
    package = load("zkb_redisq_package_zkbonly_130678514.json")["package"]
    job = old_main.get_model("backfill", "BackfillJob").objects.create(
        target_id=CHARACTER, status="succeeded", killmails_listed=1, failed=1
    )
    old_main.get_model("backfill", "FailedKillmail").objects.create(
        job=job,
        killmail_id=package["killID"],
        killmail_hash=package["zkb"]["hash"],
        zkb=package["zkb"],
        reason="ESI answered 422: Invalid killmail_id and/or killmail_hash",
    )

    migrate_to_latest()

    assert reopen_job(job.pk, retry_failed=True) is True
    pending = PendingKillmail.objects.get(job_id=job.pk)
    assert (pending.killmail_id, pending.killmail_hash, pending.zkb) == (
        package["killID"],
        package["zkb"]["hash"],
        package["zkb"],
    )
    assert not FailedKillmail.objects.exists()
