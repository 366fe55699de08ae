"""Create the database cache table(s) of settings.CACHES (the default `killboard_cache`).

Every process shares that cache: login throttling, beat's heartbeat and the ESI budgets the
clients observed. `createcachetable` skips tables that exist and caches that are not in the
database (a Redis CACHE_URL), so running it again is harmless.
"""

from django.core.management import call_command
from django.db import migrations


def create_cache_tables(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = []

    operations = [migrations.RunPython(create_cache_tables, migrations.RunPython.noop)]
