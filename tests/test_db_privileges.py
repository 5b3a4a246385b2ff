"""Issue 10, findings 4 and 5: authenticated, least-privilege databases, tested by connecting
as each role (the embedded cluster's superuser, a dedicated tenant's LOGIN role, a schema
tenant's role taken with SET ROLE)."""
import shutil
import subprocess
import sys

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.db.utils import DatabaseError, ProgrammingError
from psycopg import errors, sql

from project import embedded_pg
from shop.models import Customer
from tenancy.backend.roles import schema_role
from tenancy.context import tenant_context
from tenancy.shared_db import shared_conninfo

embedded_only = pytest.mark.skipif(not settings.USING_EMBEDDED_PG, reason="DATABASE_URL is set: no embedded cluster")


def _refused(conninfo, dbname):
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(**{**conninfo, "dbname": dbname, "connect_timeout": 5}).close()
    return str(refused.value)


# --- Finding 4: the embedded cluster authenticates --------------------------------------------

@embedded_only
def test_embedded_cluster_refuses_a_wrong_password_over_tcp():
    cluster = embedded_pg.running_cluster(settings.EMBEDDED_PG_DIR)
    assert cluster.password  # from EMBEDDED_PG_PASSWORD in .env
    assert "password authentication failed" in _refused({**cluster.conninfo(), "password": "wrong"}, "postgres")
    assert "password" in _refused({k: v for k, v in cluster.conninfo().items() if k != "password"}, "postgres")
    with psycopg.connect(**cluster.conninfo(), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == embedded_pg.SUPERUSER
    hba = (cluster.data_dir / "pg_hba.conf").read_text()
    assert "trust" not in "\n".join(line for line in hba.splitlines() if not line.lstrip().startswith("#"))


@embedded_only
def test_a_cluster_made_with_trust_is_upgraded_to_scram(monkeypatch):
    data_dir = settings.BASE_DIR / f".pgdata-trust-{settings.TEST_RUN_ID}"
    shutil.rmtree(data_dir, ignore_errors=True)
    with monkeypatch.context() as old:  # as older versions made it
        old.setattr(embedded_pg, "AUTH_METHOD", "trust")
        embedded_pg._initdb(data_dir, "unused")
    try:
        cluster = embedded_pg.ensure_running(data_dir)
        assert "password authentication failed" in _refused({**cluster.conninfo(), "password": "wrong"}, "postgres")
        with psycopg.connect(**cluster.conninfo(), connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            public_can = conn.execute("SELECT has_database_privilege('public', 'postgres', 'CONNECT'), "
                                      "has_database_privilege('public', 'template1', 'TEMPORARY')").fetchone()
        assert public_can == (False, False)
    finally:
        embedded_pg.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
        for leftover in (data_dir.parent / f".{data_dir.name}.port", data_dir.parent / f".{data_dir.name}.lock"):
            leftover.unlink(missing_ok=True)


def test_ensure_env_adds_the_pg_password_to_an_existing_env(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(settings.BASE_DIR / "scripts" / "ensure_env.py", tmp_path / "scripts")
    env_file = tmp_path / ".env"
    env_file.write_text("TENANT_ENCRYPTION_KEY=" + "ab" * 32)  # no final newline
    run = lambda: subprocess.run([sys.executable, str(tmp_path / "scripts" / "ensure_env.py")],  # noqa: E731
                                 capture_output=True, text=True, check=True).stdout
    assert "added EMBEDDED_PG_PASSWORD" in run()
    lines = env_file.read_text().splitlines()
    assert lines[0] == "TENANT_ENCRYPTION_KEY=" + "ab" * 32
    assert lines[1].startswith("EMBEDDED_PG_PASSWORD=") and len(lines[1]) > 40
    assert "kept as it is" in run()
    assert env_file.read_text().splitlines() == lines
    env_file.unlink()
    run()
    assert "EMBEDDED_PG_PASSWORD=" in env_file.read_text() and env_file.stat().st_mode & 0o077 == 0


# --- Finding 5a: a dedicated tenant role reaches its own database only ------------------------

def _role_conninfo(credential):
    return {"host": credential.server.host, "port": credential.server.port, "user": credential.role,
            "password": credential.password(), "dbname": credential.database, "connect_timeout": 5}


@pytest.mark.django_db(transaction=True)
def test_a_dedicated_tenant_role_reaches_its_own_database_only(make_tenant, place_tenant):
    one = place_tenant(make_tenant("priv_one"), "database")
    two = place_tenant(make_tenant("priv_two"), "database")
    mine = _role_conninfo(one.credential)
    for other in (shared_conninfo()["dbname"], "postgres", "template1", two.credential.database):
        if other in ("postgres", "template1") and not settings.USING_EMBEDDED_PG:
            continue  # a server of DATABASE_URL: its system databases are not the project's
        assert "permission denied for database" in _refused(mine, other), other
    with psycopg.connect(**mine, autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == one.credential.database
        for statement in ("CREATE TEMP TABLE scratch (x int)", "CREATE TABLE public.mine (x int)",
                          "CREATE SCHEMA mine", "SELECT datname FROM pg_database",
                          "SELECT rolname FROM pg_roles", "SELECT usename FROM pg_stat_activity",
                          "SELECT datname FROM pg_stat_database"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        # Its own tables: DML works.
        conn.execute("INSERT INTO shop_customer (tenant_id, public_id, first_name, last_name, phone, "
                     "loyalty_points, tags, created_at) VALUES (%s, gen_random_uuid(), 'a', 'b', '', 0, "
                     "'{}', now())", (one.pk,))
        assert conn.execute("SELECT count(*) FROM shop_customer").fetchone() == (1,)
    # Django's own connection as that role (the tenant's requests) still works.
    with tenant_context(one):
        Customer.objects.create(first_name="c", last_name="d", created_at="2026-01-01T00:00:00Z")
        assert Customer.objects.count() == 2


# --- Finding 5b: a schema tenant's queries run as its own role ---------------------------------

def _denied(statement):
    with pytest.raises(ProgrammingError) as denied, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(statement)
    assert isinstance(denied.value.__cause__, errors.InsufficientPrivilege), denied.value
    return str(denied.value)


def _current_user():
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_a_schema_tenant_reaches_its_own_schema_only(make_tenant, place_tenant, cleanup):
    pooled = make_tenant("priv_pooled")
    with tenant_context(pooled):
        Customer.objects.create(first_name="pooled", last_name="x", created_at="2026-01-01T00:00:00Z")
    one = place_tenant(make_tenant("priv_sone"), "schema")
    two = place_tenant(make_tenant("priv_stwo"), "schema")
    cleanup(one), cleanup(two)
    with tenant_context(two):
        Customer.objects.create(first_name="two", last_name="x", created_at="2026-01-01T00:00:00Z")
    login_user = _current_user()

    with tenant_context(one):
        assert _current_user() == schema_role(one.schema_name) != login_user
        # Its own schema, end to end through the ORM.
        created = Customer.objects.create(first_name="one", last_name="x", created_at="2026-01-01T00:00:00Z")
        created.first_name = "uno"
        created.save()
        assert list(Customer.objects.values_list("first_name", flat=True)) == ["uno"]
        # Raw SQL naming the shared tables, another tenant's schema, the tenant list: refused.
        _denied("SELECT first_name FROM public.shop_customer")
        _denied(sql.SQL("SELECT first_name FROM {}").format(
            sql.Identifier(two.schema_name, "shop_customer")).as_string(connection.connection))
        _denied("SELECT slug FROM tenancy_tenant")
        _denied("SELECT 1 FROM tenancy_databasecredential")
        # Nothing of its own outside its tables; no listing of schemas, roles, databases.
        _denied("CREATE TEMP TABLE scratch (x int)")
        _denied("CREATE TABLE public.scratch (x int)")
        _denied("SELECT nspname FROM pg_namespace")
        _denied("SELECT rolname FROM pg_roles")
        _denied("SELECT datname FROM pg_database")
        # A nested context for another tenant still resolves it (as the login role) and
        # takes that tenant's role; leaving it restores this one.
        with tenant_context(two):
            assert _current_user() == schema_role(two.schema_name)
            assert list(Customer.objects.values_list("first_name", flat=True)) == ["two"]
        assert _current_user() == schema_role(one.schema_name)
    assert _current_user() == login_user  # RESET ROLE with the public schema
    with tenant_context(pooled):  # shared placement: the login role, as before
        assert _current_user() == login_user
        assert Customer.objects.count() == 1


@pytest.mark.django_db
def test_the_schema_role_is_dropped_with_its_schema(make_tenant, place_tenant):
    from migration_jobs.engine import provision

    tenant = place_tenant(make_tenant("priv_gone"), "schema")
    role = schema_role(tenant.schema_name)

    def role_exists():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
            return cursor.fetchone() is not None

    assert role_exists()
    provision.drop_schema(tenant.schema_name)
    assert not role_exists()


@pytest.mark.django_db
def test_migrations_of_a_schema_run_as_the_owner(make_tenant, place_tenant, cleanup):
    """django-tenants' migrate_schemas sets the schema itself, without a tenant role."""
    from django.core.management import call_command

    tenant = place_tenant(make_tenant("priv_migr"), "schema")
    cleanup(tenant)
    call_command("migrate_schemas", tenant=True, schema_name=tenant.schema_name, interactive=False, verbosity=0)
    connection.set_schema_to_public()
    assert _current_user() == settings.DATABASES["default"]["USER"]


@pytest.mark.django_db
def test_a_schema_tenant_made_before_roles_gets_its_role(make_tenant, place_tenant, cleanup):
    from migration_jobs.engine import provision

    tenant = place_tenant(make_tenant("priv_old"), "schema")
    cleanup(tenant)
    provision.drop_schema_role(tenant.schema_name)  # as an older version left it
    with pytest.raises(DatabaseError, match="does not exist"), transaction.atomic(), tenant_context(tenant):
        Customer.objects.count()  # refused, never run as the login role
    provision.ensure_schema_roles([tenant.schema_name, "tenant_no_such_schema"])
    with tenant_context(tenant):
        assert _current_user() == schema_role(tenant.schema_name)
        assert Customer.objects.count() == 0
