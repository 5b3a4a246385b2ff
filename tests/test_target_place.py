"""A move out never takes over a schema or database of its target's name that it did not make:
the preflight refuses, and nothing of that place is emptied or dropped (a rollback used to drop
it, with whatever it held). One an earlier run of the tenant left (moved back, then out again)
is reused."""
import pytest
from psycopg import sql

from migration_jobs import services
from migration_jobs.engine import provision
from migration_jobs.engine.places import shared_place
from migration_jobs.models import RunStatus
from migration_jobs.runs import executor
from tenancy.servers import ensure_default_server
from tests.helpers import fingerprints, schema_exists

pytestmark = pytest.mark.django_db(transaction=True)

SEEDED = {"largest": 600, "seed": 31}


def move(tenant, target):
    return executor.execute(services.request_move(tenant, target).pk)


def assert_refused(run, tenant, before, name):
    assert run.status != RunStatus.SUCCEEDED
    assert "exists and no run of this tenant made it" in run.error and name in run.error, run.error
    assert run.steps.get(name="provision").status == "pending"
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == ("shared", "active")
    assert fingerprints(shared_place(), tenant.pk) == before


def test_a_schema_the_product_did_not_make_is_neither_used_nor_dropped(seeded):
    tenant = seeded
    schema = tenant.schema_name
    dry = executor.execute(services.request_move(tenant, "schema", dry_run=True).pk)  # made nothing
    assert dry.status == RunStatus.SUCCEEDED and dry.target_schema == schema
    with shared_place().connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(sql.Identifier(schema, "shop_customer")))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'somebody else''s')").format(
            sql.Identifier(schema, "shop_customer")))
        conn.commit()
    try:
        before = fingerprints(shared_place(), tenant.pk)
        run = move(tenant, "schema")
        assert_refused(run, tenant, before, f"schema {schema}")
        assert schema_exists(schema)
        with shared_place().connect() as conn:
            assert conn.execute(sql.SQL("SELECT note FROM {}").format(
                sql.Identifier(schema, "shop_customer"))).fetchall() == [("somebody else's",)]
    finally:
        provision.drop_schema(schema)


def test_a_database_the_product_did_not_make_is_neither_used_nor_dropped(seeded):
    tenant = seeded
    server = ensure_default_server()
    database = tenant.database_name
    with provision.admin_connection(server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        before = fingerprints(shared_place(), tenant.pk)
        run = move(tenant, "database")
        assert_refused(run, tenant, before, f"database {database}")
        assert provision.database_exists(server, database)
    finally:
        with provision.admin_connection(server) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))


def test_the_place_an_earlier_run_of_the_tenant_left_is_reused(seeded, made_places):
    tenant = seeded
    run = move(tenant, "schema")
    assert run.status == RunStatus.SUCCEEDED, run.error
    tenant.refresh_from_db()
    back = executor.execute(services.request_move_back(tenant).pk)
    assert back.status == RunStatus.SUCCEEDED, back.error
    assert schema_exists(tenant.schema_name)  # the dedicated place stays until retired
    tenant.refresh_from_db()
    again = move(tenant, "schema")
    made_places.append(("schema", tenant.schema_name))
    assert again.status == RunStatus.SUCCEEDED, again.error
    checks = {c["name"]: c for c in again.report["preflight"]["checks"]}
    assert checks["target place"]["ok"] and "left by an earlier run" in checks["target place"]["detail"]
