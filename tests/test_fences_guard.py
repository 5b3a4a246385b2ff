"""The guard (engine/guard.py): fences and captures are rows, the triggers on a shared table are
the same three whatever the number of fenced or moving tenants, and the guarantees of the
per-tenant triggers hold: a fenced tenant's write is refused in the database, by any
connection, also one opened before the fence; other tenants write on; a capture misses no
write; installations with per-tenant triggers are converted."""
from datetime import datetime, timezone

import psycopg
import pytest
from psycopg import sql

from benchmarks.fence_cost import OLD_FENCE_FUNCTION, OLD_WHEN
from migration_jobs.engine import capture, fences, guard
from migration_jobs.engine.places import shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.exceptions import StepFailed
from tests.helpers import fill

pytestmark = pytest.mark.django_db(transaction=True)

FENCED = 200
FAKE_FROM = 10_000_000  # fenced tenants that have no rows (the fence table has no foreign key)


def insert_customer(conn, tenant_id, name="x"):
    return conn.execute("INSERT INTO shop_customer (tenant_id, public_id, first_name, last_name, phone, "
                        "loyalty_points, tags, created_at) VALUES (%s, gen_random_uuid(), %s, 'guard', '', 1, "
                        "'{}', now()) RETURNING id", (tenant_id, name)).fetchone()[0]


def guard_triggers(conn) -> dict[str, int]:
    counts = guard.guarded_tables(conn, "public")
    conn.rollback()
    return counts


def fence_many(place, count: int) -> None:
    """`count` fenced tenants without rows, as one insert (fast to set up)."""
    with place.connect() as conn:
        guard.ensure_objects(conn, place.schema)
        conn.execute(sql.SQL("INSERT INTO {} (tenant_id, reason) SELECT g, 'moved' FROM generate_series(%s, %s) g "
                             "ON CONFLICT DO NOTHING").format(sql.Identifier(place.schema, guard.FENCE_TABLE)),
                     (FAKE_FROM, FAKE_FROM + count - 1))
        conn.commit()


@pytest.fixture
def two_tenants(make_tenant):
    moved, staying = make_tenant("guard_moved"), make_tenant("guard_staying")
    fill(moved, 2)
    fill(staying, 2)
    return moved, staying


def test_fenced_tenant_refused_others_write_and_triggers_do_not_grow(two_tenants):
    moved, staying = two_tenants
    place, tables = shared_place(), tenant_tables()
    fences.freeze(place, moved.pk, moved.slug, tables, "moved by a test")
    with place.connect() as conn:
        one_fence = guard_triggers(conn)
    assert one_fence == {t.name: 3 for t in tables}  # three statement triggers per tenant table
    fence_many(place, FENCED - 1)
    with place.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tenant_move_fence").fetchone()[0] == FENCED
        # Every write kind of the fenced tenant fails, also mixed in one statement with others' rows.
        for statement, args in [
                ("INSERT INTO shop_customer (tenant_id, public_id, first_name, last_name, phone, loyalty_points, "
                 "tags, created_at) VALUES (%s, gen_random_uuid(), 'a', 'b', '', 1, '{}', now())", (moved.pk,)),
                ("UPDATE shop_customer SET loyalty_points = 9 WHERE tenant_id = %s", (moved.pk,)),
                ("DELETE FROM shop_repairstatushistory WHERE tenant_id = %s", (moved.pk,)),
                ("UPDATE shop_customer SET loyalty_points = 9 WHERE tenant_id IN (%s, %s)", (staying.pk, moved.pk)),
                # a row moved into the fenced tenant is a write to it too
                ("UPDATE shop_customer SET tenant_id = %s, email = NULL WHERE id = (SELECT min(id) FROM shop_customer "
                 "WHERE tenant_id = %s)", (moved.pk, staying.pk))]:
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                               match=f"tenant {moved.slug} refuses writes here: moved by a test"):
                conn.execute(statement, args)
            conn.rollback()
        # The staying tenant writes as before: insert, update, delete.
        pk = insert_customer(conn, staying.pk)
        assert conn.execute("UPDATE shop_customer SET loyalty_points = 5 WHERE tenant_id = %s",
                            (staying.pk,)).rowcount == 3
        assert conn.execute("DELETE FROM shop_customer WHERE id = %s", (pk,)).rowcount == 1
        conn.commit()
        # The engine's own sessions pass the fence.
        conn.execute(capture.BYPASS)
        conn.execute("UPDATE shop_customer SET loyalty_points = 1 WHERE tenant_id = %s", (moved.pk,))
        conn.rollback()
    # Capturing tenants do not add triggers either.
    with place.connect() as conn:
        capture.start_capture(conn, place, 901, staying.pk, tables, drain_timeout=10)
        capture.start_capture(conn, place, 902, FAKE_FROM, tables, drain_timeout=10)
        assert guard_triggers(conn) == one_fence
        capture.stop_capture(conn, place, 901, tables)
        capture.stop_capture(conn, place, 902, tables)
    # Unfenced again: the tenant writes, the triggers stay.
    fences.remove(place, moved.pk, tables)
    with place.connect() as conn:
        insert_customer(conn, moved.pk)
        conn.commit()
        assert guard_triggers(conn) == one_fence


def test_a_connection_opened_before_the_fence_cannot_write_after_the_switch(two_tenants):
    moved, staying = two_tenants
    place, tables = shared_place(), tenant_tables()
    fence_many(place, FENCED)
    with place.connect() as conn:
        capture.install_fence(conn, place, moved.pk, moved.slug, tables)  # as the capture step does
    stale = place.connect()  # a process that still routes the tenant to the shared tables
    insert_customer(stale, moved.pk, "before")
    stale.commit()
    older = place.connect(application_name="app")  # a transaction open across the freeze
    older.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    older.execute("SELECT count(*) FROM shop_customer WHERE tenant_id = %s", (moved.pk,)).fetchone()
    frozen_at = datetime.now(timezone.utc)
    with place.connect() as switch:  # the cutover's freeze and switch: rows, no DDL
        fences.close(place, moved.pk, "legacy rows: tenant moved", conn=switch, slug=moved.slug)
    # The drain sees the transaction begun before the freeze: the cutover would wait for it.
    with place.connect(autocommit=True, application_name="drain") as drain:
        assert guard.wait_for_older_transactions(drain, frozen_at, 0.2) == 1
        older.rollback()
        assert guard.wait_for_older_transactions(drain, frozen_at, 5) == 0
    for statement in ("INSERT", "UPDATE", "DELETE"):
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match=f"tenant {moved.slug} refuses"):
            if statement == "INSERT":
                insert_customer(stale, moved.pk, "after")
            elif statement == "UPDATE":
                stale.execute("UPDATE shop_customer SET first_name = 'after' WHERE tenant_id = %s", (moved.pk,))
            else:
                stale.execute("DELETE FROM shop_repairstatushistory WHERE tenant_id = %s", (moved.pk,))
        stale.rollback()
    insert_customer(stale, staying.pk, "other")  # other tenants are never blocked
    stale.commit()
    assert stale.execute("SELECT count(*) FROM shop_customer WHERE first_name = 'after'").fetchone()[0] == 0
    stale.close()
    older.close()


def test_capture_logs_only_its_tenant_and_waits_for_older_transactions(two_tenants):
    moved, staying = two_tenants
    place, tables = shared_place(), tenant_tables()
    fence_many(place, FENCED)
    older = place.connect(application_name="app")
    older.execute("SELECT 1").fetchone()  # a transaction begun before the capture
    with place.connect() as conn, pytest.raises(StepFailed, match="transactions begun before the capture started"):
        capture.start_capture(conn, place, 903, moved.pk, tables, drain_timeout=0.3)
    older.rollback()
    with place.connect() as conn:
        capture.start_capture(conn, place, 903, moved.pk, tables, drain_timeout=10)  # idempotent
        mine = insert_customer(conn, moved.pk)
        insert_customer(conn, staying.pk)
        conn.execute("UPDATE shop_customer SET loyalty_points = 2 WHERE tenant_id IN (%s, %s)", (moved.pk, staying.pk))
        gone = conn.execute("DELETE FROM shop_repairstatushistory WHERE tenant_id = %s RETURNING id",
                            (moved.pk,)).fetchall()
        conn.commit()
        logged = conn.execute("SELECT table_name, row_pk, op FROM tenant_move_log_903 ORDER BY id").fetchall()
        customers = {r[0] for r in conn.execute("SELECT id FROM shop_customer WHERE tenant_id = %s",
                                                (moved.pk,)).fetchall()}
        assert ("shop_customer", mine, "I") in logged
        assert {pk for table, pk, op in logged if table == "shop_customer" and op == "U"} == customers
        assert {pk for table, pk, op in logged if table == "shop_repairstatushistory"} == {r[0] for r in gone}
        assert all(op in "IUD" for _, _, op in logged)
        assert len(logged) == 1 + len(customers) + len(gone)  # nothing of the staying tenant
        capture.stop_capture(conn, place, 903, tables)
        assert capture.leftovers(conn) == []
        insert_customer(conn, moved.pk)  # no capture, no log: the write goes through
        conn.commit()


# The per-tenant design (capture.py before the guard), to make an old installation: its fence
# function and WHEN clauses are the benchmark's baseline; its capture function is here.
OLD_CAPTURE_FUNCTION = """CREATE OR REPLACE FUNCTION public.tenant_move_capture_{run}() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO public.tenant_move_log_{run} (table_name, row_pk, op) VALUES (TG_TABLE_NAME, OLD.id, 'D');
        ELSE
            INSERT INTO public.tenant_move_log_{run} (table_name, row_pk, op) VALUES (TG_TABLE_NAME, NEW.id, left(TG_OP, 1));
        END IF;
        RETURN NULL;
    END $$"""


def old_triggers(conn, prefix, timing, tenant_id, call):
    for table in tenant_tables():
        for op, when in OLD_WHEN.items():
            conn.execute(f"CREATE TRIGGER {prefix}_{op[:3].lower()} {timing} {op} ON public.{table.name} "
                         f"FOR EACH ROW WHEN ({when.format(t=int(tenant_id))}) EXECUTE FUNCTION {call}")


def test_per_tenant_triggers_of_earlier_versions_are_converted(two_tenants):
    moved, capturing = two_tenants
    run = 904
    with shared_place().connect() as conn:  # an installation of the earlier version
        conn.execute("CREATE TABLE tenant_move_fence (tenant_id bigint PRIMARY KEY, reason text NOT NULL, "
                     "since timestamptz NOT NULL DEFAULT now())")
        conn.execute(sql.SQL(OLD_FENCE_FUNCTION).format(fn=sql.Identifier("public", guard.LEGACY_FENCE_FUNCTION),
                                                        fence=sql.Identifier("public", guard.FENCE_TABLE)))
        conn.execute(f"CREATE TABLE tenant_move_log_{run} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                     "table_name text NOT NULL, row_pk bigint NOT NULL, op \"char\" NOT NULL, changed_at timestamptz "
                     "NOT NULL DEFAULT clock_timestamp(), applied_round integer)")
        conn.execute(OLD_CAPTURE_FUNCTION.format(run=run))
        old_triggers(conn, f"tenant_fence_{moved.pk}", "BEFORE", moved.pk,
                     f"public.tenant_move_fence_check('{moved.pk}', '{moved.slug}')")
        old_triggers(conn, f"tenant_fence_{capturing.pk}", "BEFORE", capturing.pk,  # installed, not closed
                     f"public.tenant_move_fence_check('{capturing.pk}', '{capturing.slug}')")
        old_triggers(conn, f"tenant_move_capture_{run}", "AFTER", capturing.pk, f"public.tenant_move_capture_{run}()")
        conn.execute("INSERT INTO tenant_move_fence (tenant_id, reason) VALUES (%s, 'legacy rows')", (moved.pk,))
        conn.commit()
        assert sum(guard_triggers(conn).values()) == 9 * len(tenant_tables())
        done = guard.upgrade(conn)  # what migration 0007 runs, in its transaction
        conn.commit()
        assert f"run {run} captures tenant {capturing.pk} in public" in done
        assert guard_triggers(conn) == {t.name: 3 for t in tenant_tables()}
        assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname IN ('tenant_move_fence_check', %s)",
                            (f"tenant_move_capture_{run}",)).fetchone()[0] == 0
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="legacy rows"):
            insert_customer(conn, moved.pk)
        conn.rollback()
        pk = insert_customer(conn, capturing.pk)  # still captured, by the guard now
        conn.commit()
        assert conn.execute(f"SELECT row_pk FROM tenant_move_log_{run}").fetchall() == [(pk,)]
        assert guard.upgrade(conn) == []  # nothing left to convert
        conn.rollback()
        capture.stop_capture(conn, shared_place(), run, tenant_tables())
        assert capture.leftovers(conn) == []
