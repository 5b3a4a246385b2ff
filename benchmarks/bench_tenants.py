"""The benchmarks' tenants (`bench_<rows>`, generated server-side by benchmarks.seeding) and
the dedicated targets they are copied to; removing both again. Shared by every benchmark."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from psycopg import sql

from benchmarks import seeding
from migration_jobs.engine import capture, provision
from migration_jobs.engine.places import database_place, schema_place, shared_place
from migration_jobs.engine.tables import tenant_tables
from tenancy.models import DatabaseCredential, Placement, Status, Tenant
from tenancy.servers import ensure_default_server

BENCH_MARKER = "bench_migration"
SLUG_PREFIX = "bench_"
TARGET_METHODS = ("a", "b", "c")  # the bench_migration methods that copy into a target of their own


class BenchError(Exception):
    """The benchmark cannot run (or a copy was wrong); the message says why."""


def bench_slug(rows: int) -> str:
    return f"{SLUG_PREFIX}{rows}"


def bench_seed(rows: int) -> int:
    # Salts (hence Customer.public_id, globally unique) differ from every demo tenant's
    # (seed 42 ..) and between sizes.
    return 7_000_000_000 + rows


def check_can_run(sizes: list[int]) -> list:
    """Refuse when a bench tenant is dedicated or not ours; return leftovers to clear."""
    leftovers = []
    for tenant in Tenant.objects.filter(slug__in=[bench_slug(n) for n in sizes]):
        if tenant.placement != Placement.SHARED:
            raise BenchError(f"tenant {tenant.slug} exists in {tenant.placement} placement (kept by an earlier "
                             "--keep run?); move it back or delete it before benchmarking")
        if BENCH_MARKER not in (tenant.settings or {}):
            raise BenchError(f"tenant {tenant.slug} exists and was not made by bench_migration; "
                             "rename or delete it first")
        leftovers.append(tenant)
    return leftovers


def create_bench_tenant(rows: int):
    """A shared-placement tenant `bench_<rows>` with about `rows` shop rows, built server-side
    by benchmarks.seeding, in one transaction. Returns (tenant, rows by table)."""
    with transaction.atomic():
        tenant = Tenant(slug=bench_slug(rows), name=f"Benchmark {rows:,} rows", placement="shared",
                        status="active", settings={BENCH_MARKER: {"rows": rows}})
        tenant.save()
        made = seeding.fill_tenant(tenant, rows, bench_seed(rows))
    # VACUUM too: the shared tables as they are in service (visibility map, hint bits set), and
    # no autovacuum of the fresh rows competing with what is measured next.
    pg = seeding.raw_connection(connection)
    with connection.cursor() as cur:
        cur.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.SQL(", ").join(map(sql.Identifier, made))).as_string(pg))
    return tenant, made


def drop_bench_tenant(tenant) -> None:
    """Delete a benchmark tenant: its places, runs, exports, credential, shop rows, itself."""
    if BENCH_MARKER not in (tenant.settings or {}):
        raise BenchError(f"refusing to delete tenant {tenant.slug}: not made by bench_migration")
    server = ensure_default_server()
    connection.set_schema_to_public()
    for method in TARGET_METHODS:
        provision.drop_database(server, target_name("database", tenant.slug, method),
                                provision.role_name(target_name("database", tenant.slug, method)))
        provision.drop_schema(target_name("schema", tenant.slug, method))
    for credential in DatabaseCredential.objects.filter(tenant=tenant):
        provision.drop_database(credential.server, credential.database, credential.role)
    provision.drop_database(server, tenant.database_name, provision.role_name(tenant.database_name))
    provision.drop_schema(tenant.schema_name)
    for run in tenant.migration_runs.all():
        _remove_exports(run)
    tenant.migration_runs.all().delete()
    DatabaseCredential.objects.filter(tenant=tenant).delete()
    remove_fence(tenant.pk)  # a move fenced its shared rows: they would refuse the DELETE
    with connection.cursor() as cur:
        for table in reversed(seeding.shop_tables()):  # children first
            cur.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(sql.Identifier(table))
                        .as_string(seeding.raw_connection(connection)), [tenant.pk])
    Tenant.objects.filter(pk=tenant.pk).delete()


def _remove_exports(run) -> None:
    for step in run.steps.filter(name="backup"):
        path = step.details.get("path")
        if path:
            for candidate in (Path(path), Path(path + ".partial")):
                candidate.unlink(missing_ok=True)


# --- Targets ---------------------------------------------------------------------------------

def target_name(kind: str, slug: str, method: str) -> str:
    prefix = settings.TENANT_DATABASE_PREFIX if kind == "database" else settings.TENANT_SCHEMA_PREFIX
    return f"{prefix}{slug}_{method}"


def provision_target(kind: str, name: str):
    """A fresh dedicated target (dropped first if an earlier run left it), every table migrated."""
    if kind == "schema":
        provision.drop_schema(name)
        provision.ensure_schema(name)
        return schema_place(name)
    server = ensure_default_server()
    role = provision.role_name(name)
    provision.drop_database(server, name, role)
    provision.provision_database(server, name, role, provision.new_password())
    return database_place(server, name)


def drop_target(kind: str, name: str) -> None:
    if kind == "schema":
        connection.set_schema_to_public()
        provision.drop_schema(name)
    else:
        provision.drop_database(ensure_default_server(), name, provision.role_name(name))


@contextmanager
def fresh_target(kind: str, name: str, keep: bool):
    place = provision_target(kind, name)
    try:
        yield place
    finally:
        if not keep:
            drop_target(kind, name)


def remove_fence(tenant_id: int) -> None:
    """Drop the write fence a move leaves on the tenant's (legacy) rows in the shared tables."""
    place = shared_place()
    with place.connect(application_name="bench cleanup") as conn:
        capture.remove_fence(conn, place, tenant_id, tenant_tables())


def put_back_in_shared(tenant, run, *, drop: bool = True) -> None:
    """Undo a benchmark move without copying: the shared rows were never touched by the move."""
    connection.set_schema_to_public()
    remove_fence(tenant.pk)
    if drop:
        if run.target_schema:
            provision.drop_schema(run.target_schema)
        if run.target_database:
            provision.drop_database(run.target_server, run.target_database,
                                    provision.role_name(run.target_database))
        DatabaseCredential.objects.filter(tenant_id=tenant.pk).delete()
    fresh = Tenant.objects.get(pk=tenant.pk)
    fresh.placement, fresh.status = Placement.SHARED, Status.ACTIVE
    fresh.save()  # the route caches hear about it

