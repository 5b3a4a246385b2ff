"""Per-tenant fence and per-run capture triggers of earlier versions become the guard's rows
(engine/guard.py): one set of triggers per table, whatever the number of fenced or moving
tenants. For every schema of the shared database, once, in this migration's transaction.
Dedicated databases are converted by `migrate` after their own migrations, and by the engine
whenever it installs the guard in a place."""
from django.db import migrations

from migration_jobs.engine import guard


def convert_legacy_triggers(apps, schema_editor):
    connection = schema_editor.connection
    if getattr(connection, "schema_name", "public") != "public":
        return  # run per tenant schema by django-tenants: the public run did every schema
    connection.ensure_connection()
    guard.upgrade(connection.connection)


class Migration(migrations.Migration):

    dependencies = [
        ('migration_jobs', '0006_tenant_size_sample'),
    ]

    operations = [
        migrations.RunPython(convert_legacy_triggers, migrations.RunPython.noop),
    ]
