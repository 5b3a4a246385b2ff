"""A move's preflight decides in milliseconds: row counts and size come from the planner's
statistics (the copy counts exactly), no row of the tenant is read; references a move out
would carry to another tenant's rows are proven by the copy's foreign keys instead, and fail
the run with a clear message, rolled back."""
import time

import pytest
from django.db import connection
from psycopg import sql

from migration_jobs import services
from migration_jobs.engine import preflight
from migration_jobs.engine.places import schema_place, shared_place
from migration_jobs.engine.tables import row_counts, tenant_tables
from migration_jobs.models import RunStatus, StepStatus
from migration_jobs.runs import executor
from tests.helpers import fingerprints, point_at_another_tenant, schema_exists

pytestmark = pytest.mark.django_db(transaction=True)

SEEDED = {"largest": 3000, "seed": 17}


def analyze():
    with shared_place().connect(autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(
            shared_place().table(t.name) for t in tenant_tables())))


def rows_read(conn) -> int:
    """Rows the server read from the tenant tables so far (every session of this database)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    names = [t.name for t in tenant_tables()]
    return int(conn.execute(
        "SELECT (SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables "
        "         WHERE schemaname = 'public' AND relname = ANY(%s)) "
        "     + (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes "
        "         WHERE schemaname = 'public' AND relname = ANY(%s))", (names, names)).fetchone()[0])


def settled_rows_read(conn) -> int:
    """rows_read once the other sessions' statistics have reached the server (they are sent
    at most every second, and when a session ends)."""
    last, deadline = rows_read(conn), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(1.1)
        now = rows_read(conn)
        if now == last:
            return now
        last = now
    return last


def test_the_preflight_estimates_rows_from_statistics_without_reading_the_tenants_rows(seeded):
    tenant = seeded
    analyze()
    with shared_place().connect() as conn:
        exact = row_counts(conn, shared_place(), tenant_tables(), tenant.pk)
    # The seeding session's scans reach the statistics when it ends (an idle session holds
    # them up to 10 s): end it now, not in the middle of the measure.
    connection.close()
    with shared_place().connect(autocommit=True) as watch:
        before = settled_rows_read(watch)
        run = executor.execute(services.request_move(tenant, "database", dry_run=True).pk)
        read = settled_rows_read(watch) - before
        with shared_place().connect() as conn:  # the measure sees a count of the tenant's rows
            row_counts(conn, shared_place(), tenant_tables(), tenant.pk)
        counted = settled_rows_read(watch) - before - read
    assert run.status == RunStatus.SUCCEEDED, run.error
    report = run.report["preflight"]
    assert report["ok"] and report["rows_estimated"] is True
    assert any("estimated from the planner's statistics" in c["detail"] for c in report["checks"])
    for name, count in exact.items():
        assert abs(report["row_counts"][name] - count) <= max(3, 0.1 * count), (name, report["row_counts"][name], count)
    assert run.rows_total == report["total_rows"]
    assert report["estimated_bytes"] > 0
    # The tenant has thousands of rows; the preflight read next to none of them (a few
    # catalog and loose-index-scan probes).
    assert counted >= sum(exact.values()) >= 3000
    assert read < 200, read


def test_a_table_without_statistics_is_counted_exactly(seeded):
    tenant = seeded
    place = schema_place("preflight_nostats")
    with shared_place().connect(autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS preflight_nostats CASCADE")
        conn.execute("CREATE SCHEMA preflight_nostats")
        try:
            # Fewer rows than autovacuum's analyze threshold (50): it stays never analyzed.
            conn.execute("CREATE TABLE preflight_nostats.shop_repairstatushistory AS "
                         "SELECT * FROM public.shop_repairstatushistory WHERE tenant_id = %s LIMIT 37", (tenant.pk,))
            spec = next(t for t in tenant_tables() if t.name == "shop_repairstatushistory")
            assert conn.execute("SELECT reltuples FROM pg_class WHERE oid = "
                                "'preflight_nostats.shop_repairstatushistory'::regclass").fetchone()[0] < 0
            counts, _, estimated = preflight.estimate_rows(conn, place, [spec], tenant.pk)
            assert counts == {"shop_repairstatushistory": 37} and not estimated
            conn.execute("ANALYZE preflight_nostats.shop_repairstatushistory")
            counts, _, estimated = preflight.estimate_rows(conn, place, [spec], tenant.pk)
            assert estimated and counts == {"shop_repairstatushistory": 37}  # now from its statistics
        finally:
            conn.execute("DROP SCHEMA preflight_nostats CASCADE")


@pytest.mark.parametrize("target", ["database", "schema"])
def test_a_reference_to_another_tenants_row_fails_the_copy_and_rolls_back(seeded, target):
    tenant = seeded
    mine = point_at_another_tenant(tenant)
    before = fingerprints(shared_place(), tenant.pk)
    run = executor.execute(services.request_move(tenant, target).pk)
    assert run.status == RunStatus.ROLLED_BACK, (run.status, run.error)
    assert run.steps.get(name="preflight").message and run.report["preflight"]["ok"]
    assert "point at rows that are not its own" in run.error and "verify_tenant" in run.error
    assert "shop_device" in run.error
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == ("shared", "active")
    assert fingerprints(shared_place(), tenant.pk) == before
    if target == "schema":
        assert not schema_exists(run.target_schema)
    copy = run.steps.get(name="copy")
    assert copy.status in (StepStatus.ROLLED_BACK, StepStatus.FAILED)
    with shared_place().connect() as conn:  # the tenant is writable again
        conn.execute("UPDATE shop_device SET customer_id = customer_id WHERE id = %s", (mine,))
        conn.commit()
