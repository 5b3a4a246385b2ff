"""The in-server copy (INSERT ... SELECT within one database) against real PostgreSQL: exact
rows, resume, a failing table, a cancelled copy, and whole moves to a schema that use it."""
import threading
import time

import psycopg
import pytest
from psycopg import sql

from migration_jobs.engine import load, provision
from migration_jobs.engine.copy_in_server import copy_tenant_in_server, same_database
from migration_jobs.engine.deferral import drop_secondary, restore_secondary, table_objects
from migration_jobs.engine.places import database_place, place_of, schema_place, shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.engine.verify import fingerprint, verify_tenant
from migration_jobs import services
from migration_jobs.models import RunStatus
from migration_jobs.runs import executor
from tenancy.servers import ensure_default_server
from tests.helpers import snapshot
from tests.test_engine_copy import _assert_same_rows, targets, tenants  # noqa: F401 - fixtures
from tests.test_moves import move

pytestmark = pytest.mark.django_db(transaction=True)


def _undeferred(target, tables):
    with target.connect(autocommit=True) as conn:
        objects = table_objects(conn, target, [t.name for t in tables])
        drop_secondary(conn, target, objects)
    return objects


def _target_rows(target, name):
    with target.connect() as conn:
        return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target.table(name))).fetchone()[0]


def _engine_sessions():
    with shared_place().connect(autocommit=True) as conn:
        for _ in range(50):  # a closed session's backend leaves pg_stat_activity a moment later
            sessions = conn.execute("SELECT application_name, state, query FROM pg_stat_activity "
                                    "WHERE application_name LIKE 'tenant-move%%' AND datname = current_database() "
                                    "AND pid <> pg_backend_pid()").fetchall()
            if not sessions:
                return []
            time.sleep(0.1)
    return sessions


def test_places_of_one_database_copy_in_server(db):
    shared = shared_place()
    assert same_database(shared, schema_place("t_x")) and load.uses_in_server_copy(shared, schema_place("t_x"))
    assert load.uses_in_server_copy(schema_place("t_x"), shared)
    assert not load.uses_in_server_copy(shared, schema_place("t_x"), in_server=False)
    other = database_place(ensure_default_server(), "tenant_elsewhere")
    assert not load.uses_in_server_copy(shared, other) and not load.uses_in_server_copy(shared, other, in_server=True)
    with pytest.raises(ValueError):
        copy_tenant_in_server(shared, other, 1, tenant_tables())


@pytest.mark.parametrize("workers", [1, 3])
def test_every_row_and_value_arrives_and_verifies(tenants, targets, workers):
    mover, _ = tenants
    tables = tenant_tables()
    source, target = shared_place(), targets("schema", mover)
    objects = _undeferred(target, tables)
    done = {}
    result = copy_tenant_in_server(source, target, mover.pk, tables, workers=workers,
                                   on_table_done=lambda name, copied: done.__setitem__(name, copied))
    with target.connect(autocommit=True) as conn:
        restore_secondary(conn, target, objects)
    assert set(result) == set(done) == {t.name for t in tables}
    with source.connect() as conn:
        for table in tables:
            assert result[table.name].rows == fingerprint(conn, source, table, mover.pk).rows > 0
            assert result[table.name].bytes > 0
    _assert_same_rows(source, target, tables, mover.pk)
    report = verify_tenant(source, target, mover.pk, tables, target_is_dedicated=True)
    assert report.ok, report.summary()


def test_with_foreign_keys_in_place_every_table_goes_in_one_transaction(tenants, targets):
    """Each table in its own snapshot-importing transaction would not see the parents another
    committed: the FK check of the first child table would fail."""
    mover, _ = tenants
    tables = tenant_tables()
    source, target = shared_place(), targets("schema", mover)
    done = []
    result = copy_tenant_in_server(source, target, mover.pk, tables, workers=3,
                                   on_table_done=lambda name, copied: done.append(name))
    assert set(result) == {t.name for t in tables} and done == [t.name for t in tables]  # FK order
    report = verify_tenant(source, target, mover.pk, tables, target_is_dedicated=True)
    assert report.ok, report.summary()
    # Again over the rows already there (a resume that redoes everything): parents are emptied
    # with DELETE (TRUNCATE refuses a referenced table), the deferred FK checks pass at commit.
    assert set(copy_tenant_in_server(source, target, mover.pk, tables, workers=2)) == set(result)
    assert verify_tenant(source, target, mover.pk, tables, target_is_dedicated=True).ok


def test_resume_copies_only_the_tables_not_done(tenants, targets):
    mover, _ = tenants
    tables = tenant_tables()
    source, target = shared_place(), targets("schema", mover)
    _undeferred(target, tables)
    copy_tenant_in_server(source, target, mover.pk, tables, workers=2)
    redo = {"shop_repair", "shop_signature"}
    with target.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DELETE FROM {}").format(target.table("shop_repair")))  # a half-done table
        conn.execute(sql.SQL("UPDATE {} SET first_name = 'kept'").format(target.table("shop_customer")))
    result = copy_tenant_in_server(source, target, mover.pk, tables, skip={t.name for t in tables} - redo, workers=2)
    assert set(result) == redo
    with target.connect() as conn:  # a skipped table is left as it is
        assert conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE first_name <> 'kept'").format(
            target.table("shop_customer"))).fetchone()[0] == 0
    report = verify_tenant(source, target, mover.pk, [t for t in tables if t.name in redo], target_is_dedicated=True)
    assert report.ok, report.summary()
    assert copy_tenant_in_server(source, target, mover.pk, tables, skip={t.name for t in tables}) == {}


def _blocked(target, name):
    """A session holding the target table `name` locked, so a worker that reaches it waits."""
    holder = target.connect(autocommit=False, application_name="test lock holder")
    holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(target.table(name)))
    return holder


def test_an_error_in_one_table_rolls_it_back_and_stops_the_others(tenants, targets):
    mover, _ = tenants
    tables = tenant_tables()
    source, target = shared_place(), targets("schema", mover)
    _undeferred(target, tables)
    with target.connect(autocommit=True) as conn:  # every signature of the tenant is refused
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT refuse CHECK (signed_by = '') NOT VALID").format(
            target.table("shop_signature")))
    holder = _blocked(target, "shop_customer")
    baseline = threading.active_count()
    try:
        with pytest.raises(psycopg.errors.CheckViolation):
            copy_tenant_in_server(source, target, mover.pk, tables, workers=len(tables))  # all tables at once
    finally:
        holder.close()
    assert threading.active_count() == baseline
    assert _engine_sessions() == []
    assert _target_rows(target, "shop_signature") == 0     # the failing table: rolled back
    assert _target_rows(target, "shop_customer") == 0      # the waiting one: cancelled, rolled back


def test_a_cancel_between_tables_stops_the_copy(tenants, targets):
    """A run's cancel is raised from on_table_done (its checkpoint): the other workers stop."""
    mover, _ = tenants
    tables = tenant_tables()
    source, target = shared_place(), targets("schema", mover)
    _undeferred(target, tables)
    holder = _blocked(target, "shop_customer")

    class Cancelled(Exception):
        pass

    def on_table_done(name, copied):
        raise Cancelled(name)

    try:
        with pytest.raises(Cancelled):
            copy_tenant_in_server(source, target, mover.pk, tables, workers=len(tables), on_table_done=on_table_done)
    finally:
        holder.close()
    assert _engine_sessions() == []
    assert _target_rows(target, "shop_customer") == 0


SEEDED = {"largest": 3000, "seed": 7}  # the conftest `seeded` tenant


def test_a_move_to_a_schema_copies_in_server_and_back(seeded, made_places, monkeypatch):
    def pipe(*args, **kwargs):
        raise AssertionError("the pipe copy was used for a schema target")

    monkeypatch.setattr(load, "copy_tenant", pipe)
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    run = move(tenant, "schema")
    assert run.status == RunStatus.SUCCEEDED, run.error
    made_places.append(("schema", run.target_schema))
    tenant.refresh_from_db()
    assert tenant.placement == "schema" and snapshot(place_of(tenant), tenant.pk) == before
    assert run.report["verify"]["ok"]
    copy = run.steps.get(name="copy")
    assert copy.rows == sum(map(len, before.values()))
    assert all(t["bytes"] > 0 for t in copy.details["tables"].values())

    back = executor.execute(services.request_move_back(tenant).pk)
    assert back.status == RunStatus.SUCCEEDED, back.error
    tenant.refresh_from_db()
    assert tenant.placement == "shared" and snapshot(shared_place(), tenant.pk) == before


def test_the_setting_forces_the_pipe(seeded, made_places, monkeypatch, settings):
    def in_server(*args, **kwargs):
        raise AssertionError("the in-server copy was used")

    settings.MIGRATION_COPY_IN_SERVER = False
    monkeypatch.setattr(load, "copy_tenant_in_server", in_server)
    run = move(seeded, "schema")
    assert run.status == RunStatus.SUCCEEDED, run.error
    made_places.append(("schema", run.target_schema))
    assert run.report["verify"]["ok"]


def test_a_failing_in_server_copy_rolls_the_schema_move_back(seeded, made_places):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    schema = tenant.schema_name
    # The schema an earlier move out and back left (reused by the next move), with a table
    # that now refuses the tenant's rows.
    assert move(tenant, "schema").status == RunStatus.SUCCEEDED
    tenant.refresh_from_db()
    assert executor.execute(services.request_move_back(tenant).pk).status == RunStatus.SUCCEEDED
    tenant.refresh_from_db()
    made_places.append(("schema", schema))
    place = schema_place(schema)
    with place.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT refuse CHECK (false) NOT VALID").format(
            place.table("shop_repair")))
    run = move(tenant, "schema")
    assert run.status == RunStatus.ROLLED_BACK, run.error
    assert "refuse" in run.error
    tenant.refresh_from_db()
    assert tenant.placement == "shared" and tenant.status == "active"
    assert snapshot(shared_place(), tenant.pk) == before
