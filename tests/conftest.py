"""Shared fixtures. Every test talks to a real PostgreSQL server: the embedded cluster, or
the server of DATABASE_URL."""
import os
import re

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.conf import settings
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import sql

from benchmarks.seeding import seed
from migration_jobs.engine import provision
from migration_jobs.engine.places import shared_place
from project.embedded_pg import ensure_running
from tenancy.models import DatabaseCredential, DatabaseServer, Domain, Tenant, tenant_host
from tenancy.servers import ensure_default_server
from tests.helpers import drop_places, run_cmd, server_conninfo_of, snapshot


@pytest.fixture(autouse=True)
def _allow_dedicated_aliases(request):
    """Django's test case refuses connections to aliases it was not told about; dedicated
    tenant databases get theirs at run time, so let those through (the real connection)."""
    if not request.node.get_closest_marker("django_db"):
        yield
        return
    request.getfixturevalue("_django_db_helper")
    real = request.getfixturevalue("django_db_blocker")._real_ensure_connection
    guarded = BaseDatabaseWrapper.ensure_connection

    def ensure_connection(self, *args, **kwargs):
        if self.alias.startswith("tenant_"):
            return real(self, *args, **kwargs)
        return guarded(self, *args, **kwargs)

    BaseDatabaseWrapper.ensure_connection = ensure_connection
    yield
    BaseDatabaseWrapper.ensure_connection = guarded


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_databases_and_roles(conn, predicate):
    for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname ~ '^test'").fetchall():
        if predicate(name):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    for (name,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname ~ '^test[0-9]+_'").fetchall():
        if predicate(name):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _owner_pid(name: str):
    """The pytest process a test database or role belongs to (see project/test_settings.py;
    pytest-django adds `_gw<n>` to the database name of each xdist worker)."""
    match = re.match(r"^test_repairshop_(\d+)(?:_gw\d+)?$", name) or re.match(r"^test(\d+)_", name)
    return int(match.group(1)) if match else None


@pytest.fixture(scope="session", autouse=True)
def _clean_server():
    """Drop what dead test runs left behind, and, at the end, what this run made."""
    with psycopg.connect(**server_conninfo_of(), autocommit=True) as conn:
        # Both xdist workers start here at once: one drops the leftovers, the other waits
        # (two DROP ROLE of the same role collide on its catalog row).
        conn.execute("SELECT pg_advisory_lock(74210, 1)")
        try:
            _drop_databases_and_roles(conn, lambda n: _owner_pid(n) is not None and not _pid_alive(_owner_pid(n)))
        finally:
            conn.execute("SELECT pg_advisory_unlock(74210, 1)")
    yield
    with psycopg.connect(**server_conninfo_of(), autocommit=True) as conn:
        mine = settings.TENANT_DATABASE_PREFIX
        _drop_databases_and_roles(conn, lambda n: n.startswith(mine))


@pytest.fixture
def make_tenant(db):
    def make(slug, placement="shared", status="active", name=None):
        tenant = Tenant(slug=slug, name=name or slug.replace("_", " ").title(), placement=placement, status=status)
        tenant.save()
        Domain.objects.create(domain=tenant_host(slug), tenant=tenant, is_primary=True)
        return tenant

    return make


@pytest.fixture
def cleanup():
    """Call it with tenants (or their slugs): after the test, their dedicated schema, database
    (with its role) and backups are dropped, whatever the test left."""
    given = []
    yield given.append
    connection.set_schema_to_public()
    server = ensure_default_server()
    for item in given:
        slug = item if isinstance(item, str) else item.slug
        database = f"{settings.TENANT_DATABASE_PREFIX}{slug}"
        provision.drop_schema(f"{settings.TENANT_SCHEMA_PREFIX}{slug}")
        provision.drop_database(server, database, provision.role_name(database))
        for path in settings.BACKUP_DIR.glob(f"{slug}-run*.tar"):
            path.unlink()


@pytest.fixture
def server_conninfo():
    return server_conninfo_of


@pytest.fixture
def place_tenant(db):
    """Give a tenant an empty dedicated schema or database (no rows moved) and route it there."""
    made = []

    def place(tenant, placement, server=None):
        if placement == "schema":
            provision.ensure_schema(tenant.schema_name)
            made.append(("schema", tenant.schema_name))
        elif placement == "database":
            server = server or ensure_default_server()
            database = tenant.database_name
            role = provision.role_name(database)
            password = provision.new_password()
            made.append(("database", server, database, role))
            provision.provision_database(server, database, role, password)
            credential = DatabaseCredential(tenant=tenant, server=server, database=database, role=role)
            credential.set_password(password)
            credential.save()
        tenant.placement = placement
        tenant.save()
        return tenant

    yield place
    drop_places(made)


@pytest.fixture(scope="session")
def second_cluster():
    """A second PostgreSQL server (another embedded cluster) for moves across servers."""
    return ensure_running(settings.BASE_DIR / ".pgdata-second")


@pytest.fixture
def second_server(db, second_cluster):
    server = DatabaseServer(name="second", host=second_cluster.host, port=second_cluster.port,
                            admin_user=second_cluster.user, maintenance_db="postgres")
    server.set_admin_password(second_cluster.password)  # the cluster authenticates (scram)
    server.save()
    return server


def drop_move_objects():
    """Fences, the guard's triggers, tables and function, and change logs that moves leave in the shared test
    database outlive the flush between tests (and tenant ids repeat): drop them."""
    with shared_place().connect() as conn:
        for table, trigger in conn.execute(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                "AND (t.tgname LIKE 'tenant\\_fence\\_%' OR t.tgname LIKE 'tenant\\_move\\_%')").fetchall():
            conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(trigger), sql.Identifier(table)))
        for (name,) in conn.execute("SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = "
                                    "'public'::regnamespace AND relname LIKE 'tenant\\_move\\_log\\_%'"
                                    ).fetchall():
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        conn.execute("DROP TABLE IF EXISTS tenant_move_fence, tenant_move_capturing")
        conn.execute("DROP FUNCTION IF EXISTS tenant_move_guard()")
        conn.commit()


@pytest.fixture(autouse=True)
def _clean_move_objects(request):
    """After every test that commits (transaction=True)."""
    marker = request.node.get_closest_marker("django_db")
    yield
    if marker and marker.kwargs.get("transaction"):
        drop_move_objects()


# --- Seeded tenants, their archive, the places moves made --------------------------------

@pytest.fixture
def seeded(request):
    """Three seeded tenants of skewed sizes (benchmarks.seeding); returns the largest. A test
    module sets the sizes with SEEDED = {"largest": rows, "seed": n} (default 3000 rows, seed 7)."""
    result = seed(tenants=3, **getattr(request.module, "SEEDED", {"largest": 3000, "seed": 7}))
    return Tenant.objects.get(slug=result.largest.slug)


@pytest.fixture
def exported(seeded, tmp_path):
    """(tenant, archive path, every row of the tenant before): the seeded tenant exported."""
    path = tmp_path / f"{seeded.slug}.tenant.tar"
    code, out, err = run_cmd("export_tenant", seeded.slug, "-o", str(path))
    assert code == 0, err
    assert f"to {path}" in out
    return seeded, path, snapshot(shared_place(), seeded.pk)


@pytest.fixture
def made_places():
    """A list for what successful moves left (("schema", name) or ("database", server,
    database, role)): dropped after the test (failed moves clean up after themselves)."""
    made = []
    yield made
    drop_places(made)


@pytest.fixture
def staff(client):
    """The test client, logged in as a superuser (`client.user`)."""
    user = get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-Admin-81")
    client.force_login(user)
    client.user = user
    return client
