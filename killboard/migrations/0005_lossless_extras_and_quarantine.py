# Extras columns for what the typed columns do not hold, and the quarantine of rejected
# killmails. zkb_other keeps its data: renamed, then its jsonb turned into JSON text.

import django.utils.timezone
from django.db import migrations, models

import killboard.models


class Migration(migrations.Migration):
    dependencies = [
        ("killboard", "0004_no_database_check_on_child_rows"),
    ]

    operations = [
        migrations.RenameField(model_name="killmail", old_name="zkb_other", new_name="zkb_extra"),
        migrations.AlterField(
            model_name="killmail",
            name="zkb_extra",
            field=killboard.models.JSONTextField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="killmail",
            name="extra",
            field=killboard.models.JSONTextField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="killmail",
            name="position_extra",
            field=killboard.models.JSONTextField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="participant",
            name="extra",
            field=killboard.models.JSONTextField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="item",
            name="extra",
            field=killboard.models.JSONTextField(blank=True, editable=False, null=True),
        ),
        migrations.CreateModel(
            name="RejectedKillmail",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("killmail_id", models.BigIntegerField(blank=True, null=True)),
                (
                    "record",
                    killboard.models.JSONTextField(
                        help_text="The record as it came: ESI body plus zkb."
                    ),
                ),
                ("digest", models.CharField(max_length=64, unique=True)),
                ("reason", models.TextField()),
                (
                    "source",
                    models.CharField(
                        blank=True, help_text="Where it came from.", max_length=255
                    ),
                ),
                ("job_id", models.BigIntegerField(blank=True, null=True)),
                ("rejected_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "ordering": ("-rejected_at",),
                "indexes": [
                    models.Index(fields=["job_id"], name="rejected_job_idx"),
                    models.Index(fields=["killmail_id"], name="rejected_killmail_idx"),
                ],
            },
        ),
    ]
