"""Targets made from templates (migration_jobs/engine/templates.py) are exactly what the
migrations make: same catalog (columns, defaults, keys, indexes, foreign keys, identity
sequences of their own, grants), same django_migrations; templates are rebuilt for a new
migration state, recovered after a crashed build, built once by concurrent builders, and
never reachable by a tenant."""
import logging
import threading

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from psycopg import sql

from migration_jobs.engine import provision, templates
from migration_jobs.models import RunStatus
from migration_jobs.runs import executor
from migration_jobs import services
from migration_jobs.runs.faults import Faults
from tenancy.backend.roles import schema_role
from tenancy.servers import ensure_default_server
from tests.helpers import run_cmd, snapshot
from migration_jobs.engine.places import place_of, shared_place

pytestmark = pytest.mark.django_db(transaction=True)

# Everything a table set is made of, with the schema's name and its tenant role's name
# replaced by placeholders (two places differ by those only).
CATALOG = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
               a.attgenerated, pg_get_expr(d.adbin, d.adrelid), a.attcollation::regcollation::text, a.attnum
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = %(ns)s::regnamespace AND a.attnum > 0 AND NOT a.attisdropped""",
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, c.reloptions, c.relrowsecurity, c.relreplident,
               obj_description(c.oid, 'pg_class'), c.relacl::text[]
          FROM pg_class c WHERE c.relnamespace = %(ns)s::regnamespace""",
    "constraints": """
        SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid), k.condeferrable, k.condeferred,
               k.convalidated, i.relname
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid LEFT JOIN pg_class i ON i.oid = k.conindid
         WHERE k.connamespace = %(ns)s::regnamespace""",
    "indexes": """
        SELECT c.relname, i.relname, pg_get_indexdef(x.indexrelid), x.indisunique, x.indisprimary
          FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
         WHERE c.relnamespace = %(ns)s::regnamespace""",
    "sequences": """
        SELECT s.relname, t.relname, a.attname, d.deptype, q.seqtypid::regtype::text, q.seqstart, q.seqincrement,
               q.seqmax, q.seqmin, q.seqcache, q.seqcycle, pg_sequence_last_value(s.oid)
          FROM pg_class s JOIN pg_sequence q ON q.seqrelid = s.oid
          LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.refobjsubid > 0
          LEFT JOIN pg_class t ON t.oid = d.refobjid LEFT JOIN pg_attribute a ON a.attrelid = t.oid
               AND a.attnum = d.refobjsubid
         WHERE s.relnamespace = %(ns)s::regnamespace""",
    "column grants": """
        SELECT c.relname, a.attname, a.attacl::text[] FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace = %(ns)s::regnamespace AND a.attacl IS NOT NULL""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = %(ns)s::regnamespace AND NOT t.tgisinternal""",  # RI triggers: named by OID
    "default privileges": """
        SELECT defaclobjtype, defaclacl::text[] FROM pg_default_acl WHERE defaclnamespace = %(ns)s::regnamespace""",
    "schema": "SELECT nspacl::text[] FROM pg_namespace WHERE oid = %(ns)s::regnamespace",
    "hidden catalogs": """
        SELECT c.relname, c.relacl::text[] FROM pg_class c
         WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relacl IS NOT NULL""",
    "migrations": "SELECT app, name FROM {migrations}",
}


def catalog(conn, schema: str, role: str) -> dict:
    """The CATALOG of `schema` on `conn`, as sorted rows of text."""
    found = {}
    for what, query in CATALOG.items():
        query = query.replace("{migrations}", sql.Identifier(schema, "django_migrations").as_string(conn))
        rows = conn.execute(query, {"ns": schema}).fetchall()
        text = sorted(repr(row).replace(schema, "<SCHEMA>").replace(role, "<ROLE>") for row in rows)
        found[what] = text
    conn.rollback()
    return found


def assert_same(made, migrated):
    assert made.keys() == migrated.keys()
    for what in made:
        assert made[what] == migrated[what], what
    assert len(made["indexes"]) > 10 and len(made["constraints"]) > 20 and len(made["sequences"]) >= 9
    assert any("FOREIGN KEY" in row for row in made["constraints"])
    assert any("<ROLE>=arwd/" in row for row in made["relations"])  # the tenant role's DML grants


def template_databases(server) -> list[str]:
    with provision.admin_connection(server) as conn:
        return [name for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
            (templates.template_prefix(settings.TENANT_DATABASE_PREFIX),)).fetchall()]


def template_schemas() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s) ORDER BY 1",
                       [templates.template_prefix(settings.TENANT_SCHEMA_PREFIX)])
        return [name for (name,) in cursor.fetchall()]


@pytest.fixture
def server():
    return ensure_default_server()


@pytest.fixture
def databases(server):
    """Names of tenant databases (with their role) to drop after the test."""
    made = []

    def make(name):
        database = f"{settings.TENANT_DATABASE_PREFIX}{name}"
        made.append(database)
        return database, provision.role_name(database)

    yield make
    for database in made:
        provision.drop_database(server, database, provision.role_name(database))


@pytest.fixture
def schemas():
    made = []

    def make(name):
        schema = f"{settings.TENANT_SCHEMA_PREFIX}{name}"
        made.append(schema)
        return schema

    yield make
    connection.set_schema_to_public()
    for schema in made:
        provision.drop_schema(schema)


def twice_at_once(build) -> None:
    """Run `build` in two threads at once and wait for both."""
    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- Databases ------------------------------------------------------------------------------

def test_a_database_from_the_template_is_what_the_migrations_make(server, databases):
    cloned, cloned_role = databases("tpl_cloned")
    migrated, migrated_role = databases("tpl_migrated")
    provision.provision_database(server, cloned, cloned_role, provision.new_password())
    # The way of earlier versions (and of a resumed run): an empty database, then migrate.
    with provision.admin_connection(server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(sql.Identifier(migrated)))
    provision.ensure_database(server, migrated, migrated_role, provision.new_password())
    assert provision.migrate_tables(server, migrated, migrated_role) is True  # empty: migrated
    assert provision.migrate_tables(server, cloned, cloned_role) is False  # from the template: current

    def read(database, role):
        with psycopg.connect(**server.conninfo(database)) as conn:
            found = catalog(conn, "public", role)
            found["database"] = [repr(conn.execute(
                "SELECT datacl::text[], datallowconn, datistemplate FROM pg_database WHERE datname = %s",
                (database,)).fetchone()).replace(database, "<DB>").replace(role, "<ROLE>")]
            return found

    assert_same(read(cloned, cloned_role), read(migrated, migrated_role))
    assert template_databases(server) == [templates.template_name(settings.TENANT_DATABASE_PREFIX)]


def test_the_tenant_role_cannot_reach_the_template(server, databases):
    database, role = databases("tpl_role")
    password = provision.new_password()
    provision.provision_database(server, database, role, password)
    template = templates.template_name(settings.TENANT_DATABASE_PREFIX)
    info = {**server.conninfo(database), "user": role, "password": password}
    with psycopg.connect(**info) as conn:  # its own database: yes
        assert conn.execute("SELECT count(*) FROM shop_customer").fetchone() == (0,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**{**info, "dbname": template}).close()
    with provision.admin_connection(server) as conn:
        allowed, acl = conn.execute("SELECT datallowconn, datacl::text[] FROM pg_database WHERE datname = %s",
                                    (template,)).fetchone()
    assert not allowed and not any(entry.startswith("=") for entry in acl)  # nothing for PUBLIC either


def test_a_new_migration_state_makes_a_new_template_and_drops_the_old(server, databases, monkeypatch):
    real = templates.migration_state()
    prefix = templates.template_prefix(settings.TENANT_DATABASE_PREFIX)
    with provision.admin_connection(server) as conn:
        assert templates.database_template(server, conn) == f"{prefix}{real.key}"
    # As after a new migration: another key.
    monkeypatch.setattr(templates, "migration_state", lambda: templates.MigrationState("0123456789ab", real.leaves))
    database, role = databases("tpl_newstate")
    provision.provision_database(server, database, role, provision.new_password())
    assert template_databases(server) == [f"{prefix}0123456789ab"]  # built, and the stale one dropped
    with psycopg.connect(**server.conninfo(database)) as conn:
        assert conn.execute("SELECT count(*) FROM django_migrations").fetchone()[0] > 10
    monkeypatch.undo()
    with provision.admin_connection(server) as conn:
        assert templates.database_template(server, conn) == f"{prefix}{real.key}"
    assert template_databases(server) == [f"{prefix}{real.key}"]


def test_a_crashed_build_is_dropped_by_the_next_builder(server, databases, monkeypatch):
    templates.drop_database_templates(server)
    real = templates.migrate_database

    def migrate_then_die(server, database, verbosity=0):
        real(server, database, verbosity)
        raise RuntimeError("worker killed mid-build")

    monkeypatch.setattr(templates, "migrate_database", migrate_then_die)
    with provision.admin_connection(server) as conn, pytest.raises(RuntimeError):
        templates.database_template(server, conn)
    name = templates.template_name(settings.TENANT_DATABASE_PREFIX)
    assert template_databases(server) == [f"{name}{templates.BUILDING_SUFFIX}"]  # never under the final name
    monkeypatch.setattr(templates, "migrate_database", real)
    # The next move builds the template again (the leftover dropped first) and is made from it.
    database, role = databases("tpl_crash")
    provision.provision_database(server, database, role, provision.new_password())
    assert template_databases(server) == [name]
    with psycopg.connect(**server.conninfo(database)) as conn:
        assert conn.execute("SELECT to_regclass('shop_repair') IS NOT NULL").fetchone()[0]


def test_concurrent_builders_make_one_template(server, caplog):
    templates.drop_database_templates(server)
    names, errors = [], []
    barrier = threading.Barrier(2)

    def build():
        try:
            with provision.admin_connection(server) as conn:
                barrier.wait()
                names.append(templates.database_template(server, conn))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with caplog.at_level(logging.INFO, logger="migration_jobs.engine.templates"):
        twice_at_once(build)
    assert not errors
    name = templates.template_name(settings.TENANT_DATABASE_PREFIX)
    assert names == [name, name]
    assert template_databases(server) == [name]
    assert sum("built template database" in r.getMessage() for r in caplog.records) == 1


# --- Schemas --------------------------------------------------------------------------------

def read_schema(schema):
    with psycopg.connect(**shared_place().conninfo) as conn:
        return catalog(conn, schema, schema_role(schema))


def test_a_schema_from_the_template_is_what_the_migrations_make(schemas):
    cloned, migrated = schemas("tpl_cloned"), schemas("tpl_migrated")
    assert provision.ensure_schema(cloned) is False  # cloned
    # The way of earlier versions (and what migrate_schemas keeps doing): migrations replayed.
    provision.create_schema(migrated)
    provision.ensure_schema_role(migrated)
    from django.core.management import call_command
    call_command("migrate_schemas", tenant=True, schema_name=migrated, interactive=False, verbosity=0)
    connection.set_schema_to_public()
    assert provision.ensure_schema(migrated) is False  # current already: nothing replayed
    assert_same(read_schema(cloned), read_schema(migrated))
    assert template_schemas() == [templates.template_name(settings.TENANT_SCHEMA_PREFIX)]


def test_cloned_identity_sequences_are_the_schemas_own(schemas):
    schema = schemas("tpl_identity")
    provision.ensure_schema(schema)
    with psycopg.connect(**shared_place().conninfo) as conn:
        owners = conn.execute(
            "SELECT DISTINCT split_part(pg_get_serial_sequence(format('%%I.%%I', n.nspname, c.relname), a.attname), "
            "'.', 1) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND a.attidentity <> ''",
            (schema,)).fetchall()
        assert owners == [(schema,)]
        conn.execute(sql.SQL("INSERT INTO {} (app, name, applied) VALUES ('x', 'y', now())").format(
            sql.Identifier(schema, "django_migrations")))
        template = templates.template_name(settings.TENANT_SCHEMA_PREFIX)
        ids = conn.execute(sql.SQL("SELECT (SELECT max(id) FROM {}), (SELECT max(id) FROM {})").format(
            sql.Identifier(schema, "django_migrations"), sql.Identifier(template, "django_migrations"))).fetchone()
        assert ids[0] == ids[1] + 1  # the clone's sequence went on from the template's, on its own
        conn.rollback()


@pytest.mark.parametrize("change", [
    "CREATE VIEW {t}.extra AS SELECT 1 AS x",
    # a default naming another schema's sequence: a copy would share it
    "ALTER TABLE {t}.shop_customer ADD COLUMN extra bigint DEFAULT nextval('public.django_migrations_id_seq')",
])
def test_a_template_the_clone_cannot_copy_exactly_is_refused(schemas, change):
    template = templates.schema_template()
    with connection.cursor() as cursor:
        cursor.execute(change.format(t=sql.Identifier(template).as_string(cursor.connection)))
    try:
        schema = schemas("tpl_refused")
        assert provision.ensure_schema(schema) is True  # migrated instead
        with psycopg.connect(**shared_place().conninfo) as conn:
            assert conn.execute("SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NULL",
                                (f"{schema}.shop_repair", f"{schema}.extra")).fetchone() == (True, True)
    finally:
        templates.drop_schema_templates()


def test_concurrent_schema_builders_make_one_template(caplog):
    templates.drop_schema_templates()
    names, errors = [], []
    barrier = threading.Barrier(2)

    def build():
        try:
            barrier.wait()
            names.append(templates.schema_template())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    with caplog.at_level(logging.INFO, logger="migration_jobs.engine.templates"):
        twice_at_once(build)
    assert not errors
    name = templates.template_name(settings.TENANT_SCHEMA_PREFIX)
    assert names == [name, name] and template_schemas() == [name]
    assert sum("built template schema" in r.getMessage() for r in caplog.records) == 1


def test_a_crashed_schema_build_is_dropped_by_the_next_builder(schemas):
    templates.drop_schema_templates()
    name = templates.template_name(settings.TENANT_SCHEMA_PREFIX)
    with connection.cursor() as cursor:  # what a build killed before its rename leaves
        cursor.execute(sql.SQL("CREATE SCHEMA {}; CREATE TABLE {}.half (id int)").format(
            sql.Identifier(f"{name}{templates.BUILDING_SUFFIX}"),
            sql.Identifier(f"{name}{templates.BUILDING_SUFFIX}")).as_string(cursor.connection))
    assert provision.ensure_schema(schemas("tpl_after_crash")) is False
    assert template_schemas() == [name]


def test_a_schema_tenant_cannot_read_the_template(schemas):
    schema = schemas("tpl_isolated")
    provision.ensure_schema(schema)
    template = templates.template_name(settings.TENANT_SCHEMA_PREFIX)
    with psycopg.connect(**shared_place().conninfo) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(schema_role(schema))))
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema, "shop_customer"))).fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(template, "shop_customer")))


# --- Moves ------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["schema", "database"])
def test_a_move_from_the_template_succeeds_and_a_failed_one_rolls_back(seeded, made_places, target):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    failed = executor.execute(services.request_move(tenant, target).pk, faults=Faults({"before:switch": RuntimeError}))
    assert failed.status == RunStatus.ROLLED_BACK, (failed.status, failed.error)
    assert "from the template" in failed.steps.get(name="create_tables").message
    tenant.refresh_from_db()
    assert tenant.placement == "shared" and snapshot(shared_place(), tenant.pk) == before
    run = executor.execute(services.request_move(tenant, target).pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.steps.get(name="verify").status == "succeeded"
    tenant.refresh_from_db()
    made_places.append(("schema", tenant.schema_name) if target == "schema" else
                       ("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    assert "from the template" in run.steps.get(name="create_tables").message
    assert tenant.placement == target and snapshot(place_of(tenant), tenant.pk) == before
    # Templates are neither capture leftovers nor tenants' places.
    code, out, _ = run_cmd("tenant_move_leftovers")
    assert code == 0 and "template" not in out, out
    if target == "database":
        assert template_databases(run.target_server) == [templates.template_name(settings.TENANT_DATABASE_PREFIX)]
    else:
        assert template_schemas() == [templates.template_name(settings.TENANT_SCHEMA_PREFIX)]
