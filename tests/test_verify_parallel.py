"""Verification reads each place with several connections sharing one exported snapshot:
the results are those of one consistent view (a row committed after the snapshot is seen by
none of them), equal to table-by-table fingerprints, and a changed value, a missing row, an
extra row and other tenants' rows are still caught when tables are measured in parallel."""
import threading
import time

import psycopg
import pytest
from psycopg import sql

from migration_jobs.engine import provision, verify
from migration_jobs.engine.copy import copy_tenant
from migration_jobs.engine.places import schema_place, shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.engine.verify import (PlaceSnapshot, fingerprint, foreign_rows, measure_places, row_hash,
                                          verify_tenant)
from tests.helpers import drop_places
from tests.test_engine_copy import _populate

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def parallel(monkeypatch):
    """Extra connections even for the few rows of a test (they normally start at 16 MB)."""
    monkeypatch.setattr(verify, "EXTRA_WORKER_BYTES", 1)


@pytest.fixture
def moved(make_tenant):
    """(mover, target schema place, tables): the mover's rows copied into a schema; tenants
    with a lower and a higher id around it in the shared tables."""
    low = make_tenant("lowtenant")
    mover = make_tenant("mover")
    high = make_tenant("hightenant")
    for tenant in (low, mover, high):
        _populate(tenant, 6, edge=tenant is mover)
    schema = f"{mover.schema_name}_verify"
    provision.ensure_schema(schema)
    target, tables = schema_place(schema), tenant_tables()
    copy_tenant(shared_place(), target, mover.pk, tables)
    yield mover, (low, high), target, tables
    drop_places([("schema", schema)])


def _count(conn, table, tenant_id):
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
        sql.Identifier("public", table)), (tenant_id,)).fetchone()[0]


def _add_customer(tenant_id):
    with shared_place().connect(autocommit=True) as conn:
        conn.execute("INSERT INTO public.shop_customer (tenant_id, public_id, first_name, last_name, phone, "
                     "loyalty_points, tags, created_at) VALUES (%s, gen_random_uuid(), 'late', 'row', '', 0, "
                     "'{}', now())", (tenant_id,))


def test_connections_joining_a_snapshot_see_what_it_saw(moved):
    mover, _, _, _ = moved
    snap = PlaceSnapshot(shared_place())
    try:
        before = _count(snap.first, "shop_customer", mover.pk)
        _add_customer(mover.pk)  # committed after the export, before the others join
        joined = [snap.join(), snap.join()]
        assert [_count(c, "shop_customer", mover.pk) for c in (snap.first, *joined)] == [before] * 3
        with shared_place().connect(autocommit=True) as fresh:
            assert _count(fresh, "shop_customer", mover.pk) == before + 1
    finally:
        snap.close()
    assert all(c.closed for c in snap.conns)


def test_a_row_written_during_verification_is_not_seen(moved, parallel):
    mover, _, _, tables = moved
    source = shared_place()
    written, seen = [], {}
    all_working = threading.Barrier(3, timeout=60)

    def hash_and_write(conn, place, table):
        # Called by a worker just before it measures a table, after the snapshot was
        # exported: a customer committed now must be seen by no worker, whenever it joined.
        _add_customer(mover.pk)
        written.append(table.name)
        if id(conn) not in seen:  # each worker's first table: wait until all three work
            seen[id(conn)] = None
            all_working.wait()
        seen[id(conn)] = _count(conn, "shop_customer", mover.pk)
        return row_hash(conn, place, table)

    with source.connect() as conn:
        expected = {t.name: fingerprint(conn, source, t, mover.pk) for t in tables}
    (measured,) = measure_places([(source, False)], mover.pk, tables, workers=3, row_hash_of=hash_and_write)
    assert sorted(written) == sorted(t.name for t in tables)
    assert list(seen.values()) == [expected["shop_customer"].rows] * 3
    assert {name: fp for name, (fp, _) in measured.items()} == expected
    with source.connect() as conn:
        customers = next(t for t in tables if t.name == "shop_customer")
        assert fingerprint(conn, source, customers, mover.pk).rows == expected["shop_customer"].rows + len(tables)


def test_parallel_tables_give_the_fingerprints_of_one_table_at_a_time(moved, parallel):
    mover, _, target, tables = moved
    with target.connect() as conn:
        one_by_one = {t.name: (fingerprint(conn, target, t, mover.pk), foreign_rows(conn, target, t, mover.pk))
                      for t in tables}
    for workers in (1, 2, 4):
        (measured,) = measure_places([(target, True)], mover.pk, tables, workers=workers)
        assert measured == one_by_one
    assert verify_tenant(shared_place(), target, mover.pk, tables, workers=3).ok


def test_parallel_verify_catches_changed_missing_extra_and_foreign_rows(moved, parallel):
    mover, (low, high), target, tables = moved
    assert verify_tenant(shared_place(), target, mover.pk, tables, workers=2).ok
    with target.connect(autocommit=True) as conn:
        t = lambda name: target.table(name)  # noqa: E731
        conn.execute(sql.SQL("UPDATE {} SET hourly_rate = hourly_rate + 0.01 WHERE id = (SELECT min(id) FROM {})")
                     .format(t("shop_employee"), t("shop_employee")))
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = (SELECT max(id) FROM {})").format(
            t("shop_repairstatushistory"), t("shop_repairstatushistory")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM public.shop_customer WHERE tenant_id = %s LIMIT 1")
                     .format(t("shop_customer")), (low.pk,))
        conn.execute(sql.SQL("UPDATE {} SET tenant_id = %s WHERE tenant_id = %s").format(
            t("shop_customer")), (mover.pk, low.pk))  # an extra row of the mover
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM public.shop_sparepart WHERE tenant_id = ANY(%s)")
                     .format(t("shop_sparepart")), ([low.pk, high.pk],))
    report = verify_tenant(shared_place(), target, mover.pk, tables, workers=2)
    assert set(report.mismatches) == {"shop_employee", "shop_repairstatushistory", "shop_customer",
                                      "shop_sparepart"}
    assert report.tables["shop_employee"]["problems"] == ["same row count, different content"]
    history = report.tables["shop_repairstatushistory"]
    assert history["target_rows"] == history["source_rows"] - 1
    customers = report.tables["shop_customer"]
    assert customers["target_rows"] == customers["source_rows"] + 1 and customers["foreign_rows"] == 0
    with shared_place().connect() as conn:
        others = sum(_count(conn, "shop_sparepart", tenant.pk) for tenant in (low, high))
    assert report.tables["shop_sparepart"]["foreign_rows"] == others > 0  # below and above the mover's id


def test_an_error_in_one_worker_is_raised_and_every_connection_closed(moved, parallel):
    mover, _, target, tables = moved

    def failing(conn, place, table):
        if table.name == "shop_device":
            raise RuntimeError("boom")
        return row_hash(conn, place, table)

    with pytest.raises(RuntimeError, match="boom"):
        measure_places([(shared_place(), False), (target, True)], mover.pk, tables, workers=2, row_hash_of=failing)
    with psycopg.connect(**shared_place().conninfo, autocommit=True) as conn:
        for _ in range(50):  # a closed connection's backend leaves the view a moment later
            left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenant-move verify'")
            if left.fetchone()[0] == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("verify connections left open")
