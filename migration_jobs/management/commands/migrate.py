"""`migrate`: django-tenants' migrate_schemas, fitted to tenants that move.

Public first, then only tenants in schema placement (pooled tenants have a schema name but
no schema), then each dedicated database (tenant apps only), so a model change reaches
every placement. It wins over django-tenants' `migrate` because migration_jobs is listed
before django_tenants in INSTALLED_APPS (the first app that has a command wins).
"""
from django_tenants.management.commands.migrate_schemas import MigrateSchemasCommand
from django_tenants.migration_executors import get_executor
from django_tenants.utils import get_public_schema_name

from migration_jobs.engine import guard
from migration_jobs.engine.places import database_place
from migration_jobs.engine.provision import ensure_schema_roles, grant_existing, migrate_database
from tenancy.models import Placement, Tenant


class Command(MigrateSchemasCommand):
    help = ("Apply migrations to the shared schema, every dedicated tenant schema and every "
            "dedicated tenant database.")

    def handle(self, *args, **options):
        # Parse the options as django-tenants does, but choose the tenants ourselves.
        super(MigrateSchemasCommand, self).handle(*args, **options)
        executor = get_executor(codename=self.executor)(self.args, self.options)
        if self.sync_public and (not self.schema_name or self.schema_name == get_public_schema_name()):
            executor.run_migrations(tenants=[get_public_schema_name()])
        if not self.sync_tenant:
            return
        schema_tenants = Tenant.objects.filter(placement=Placement.SCHEMA)
        database_tenants = Tenant.objects.filter(placement=Placement.DATABASE).select_related("credential__server")
        if self.schema_name and self.schema_name != get_public_schema_name():
            schema_tenants = schema_tenants.filter(schema_name=self.schema_name)
            database_tenants = database_tenants.none()
        schemas = list(schema_tenants.values_list("schema_name", flat=True))
        if schemas:
            executor.run_migrations(tenants=schemas)
            ensure_schema_roles(schemas)  # schema tenants made before roles existed
        self._migrate_databases(database_tenants, options)

    def _migrate_databases(self, tenants, options):
        verbosity = int(options.get("verbosity", 1))
        for tenant in tenants:
            credential = tenant.credential
            if verbosity >= 1:
                self.stdout.write(f"[database:{credential.database}] migrating tenant {tenant.slug}")
            migrate_database(credential.server, credential.database, verbosity=verbosity - 1)
            grant_existing(credential.server, credential.database, credential.role)
            with database_place(credential.server, credential.database).connect() as conn:
                guard.upgrade(conn)  # per-tenant triggers of earlier versions (migration 0007 does the shared ones)
                conn.commit()
