"""bench_migration end to end on a tiny tenant: every method runs, every copy is checked,
and nothing of the benchmark is left behind (tenant, rows, databases, schemas, roles)."""
from io import StringIO

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from benchmarks.measure import LABELS
from migration_jobs.models import MigrationRun
from migration_jobs.runs.plans import MOVE_STEPS
from benchmarks.seeding import shop_tables
from tenancy.models import Tenant
from tests.helpers import run_cmd

pytestmark = pytest.mark.django_db(transaction=True)
SEEDED = {"largest": 1000, "seed": 3}  # the conftest `seeded` tenants (bench_verify)
STEP_NAMES = [s.name for s in MOVE_STEPS]


def test_bench_migration_prints_all_methods_checks_them_and_cleans_up(server_conninfo):
    out = StringIO()
    call_command("bench_migration", "--rows", "3000", "--baseline-limit", "500", stdout=out)
    text = out.getvalue()

    rows = {}
    for line in text.splitlines():
        for method in ("(a)", "(b)", "(c)", "(d)"):
            if line.startswith(LABELS[method[1]]) and method not in rows:
                rows[method] = line  # the table's row, not the notes under it
    assert set(rows) == {"(a)", "(b)", "(c)", "(d)"}, text
    assert "[capped]" in rows["(a)"]
    for method, line in rows.items():
        assert "ok:" in line and "FAIL" not in line, line
    assert "verify_tenant" in rows["(b)"] and "verify_tenant" in rows["(c)"] and "verify_tenant" in rows["(d)"]
    assert "(d) of which: copy step" in text
    for header in ("rows/s", "vs (a)", "vs (b)", "peak RSS"):
        assert header in text

    assert not Tenant.objects.filter(slug__startswith="bench_").exists()
    assert not MigrationRun.objects.exists()
    with connection.cursor() as cur:
        for table in shop_tables():
            cur.execute(f'SELECT count(*) FROM "{table}"')
            assert cur.fetchone()[0] == 0, table
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [f"{settings.TENANT_SCHEMA_PREFIX}bench%"])
        assert cur.fetchall() == []
    with psycopg.connect(**server_conninfo()) as conn:
        prefix = f"{settings.TENANT_DATABASE_PREFIX}bench_"
        assert conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)).fetchall() == []
        assert conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)).fetchall() == []


def test_bench_migration_compare_times_every_step_of_both_moves_and_cleans_up(server_conninfo):
    out = StringIO()
    call_command("bench_migration", "--compare", "--rows", "2000", stdout=out)
    text = out.getvalue()
    methods = {line.split("  ")[0]: line for line in text.splitlines() if line.startswith(("(b)", "(e)", "(d)"))}
    assert set(methods) == {"(b) bare binary COPY pipe -> database", "(e) bare INSERT ... SELECT -> schema",
                            "(d) engine full run -> database", "(d) engine full run -> schema",
                            "(d) engine full run -> schema, pipe copy"}, text
    for line in methods.values():
        assert "ok:" in line and "FAIL" not in line, line
    assert "verify_tenant" in methods["(b) bare binary COPY pipe -> database"]
    assert "verify_tenant" in methods["(e) bare INSERT ... SELECT -> schema"]
    steps = {line.split()[0]: line.split()[1:] for line in text.splitlines()
             if line.split() and line.split()[0] in STEP_NAMES and not line.startswith(" ")}  # not the goals
    assert set(steps) == set(STEP_NAMES), text
    for name, cells in steps.items():  # seconds and round trips: to a database, a schema, a schema piped
        assert len(cells) == 6 and all(float(c) >= 0 for c in cells), (name, cells)
        assert int(cells[1]) > 0 and int(cells[3]) > 0 and int(cells[5]) > 0, (name, cells)
    assert "verification (the verify step): database" in text
    for goal in ("full database move / bare pipe", "full schema move / INSERT ... SELECT",
                 "verification (database)", "full database move of", "copy step to a schema: in server"):
        assert goal in text, text

    assert not Tenant.objects.filter(slug__startswith="bench_").exists()
    assert not MigrationRun.objects.exists()
    with connection.cursor() as cur:
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [f"{settings.TENANT_SCHEMA_PREFIX}bench%"])
        assert cur.fetchall() == []
    with psycopg.connect(**server_conninfo()) as conn:
        prefix = f"{settings.TENANT_DATABASE_PREFIX}bench_"
        assert conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)).fetchall() == []


def test_bench_move_back_compares_reuse_with_a_full_copy_and_cleans_up(server_conninfo):
    out = StringIO()
    call_command("bench_move_back", "--rows", "3000", "--changes", "5", stdout=out)
    text = out.getvalue()
    lines = {line[:3]: line.split() for line in text.splitlines() if line.startswith(("(a)", "(b)"))}
    assert set(lines) == {"(a)", "(b)"}, text
    # columns from the end: rows, copied, reused, seconds, ratio
    a_rows, a_copied, a_reused = (int(v.replace(",", "")) for v in lines["(a)"][-5:-2])
    b_rows, b_copied, b_reused = (int(v.replace(",", "")) for v in lines["(b)"][-5:-2])
    assert a_rows == b_rows == b_copied and b_reused == 0
    assert 0 < a_copied < a_rows and a_reused == a_rows - a_copied
    assert not Tenant.objects.filter(slug__startswith="bench_").exists()
    with psycopg.connect(**server_conninfo()) as conn:
        prefix = f"{settings.TENANT_DATABASE_PREFIX}bench_"
        assert conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)).fetchall() == []


def test_bench_verify_compares_both_checksums_on_the_same_rows(seeded):
    code, out, err = run_cmd("bench_verify", seeded.slug, "--rounds", "1")
    assert code == 0, err
    rows = {line.split("|")[1].strip(): int(line.split("|")[2].strip().replace(",", ""))
            for line in out.splitlines() if line.startswith("| md5 ") or line.startswith("| hash64 ")}
    assert rows["md5"] == rows["hash64"] > 0
    assert "ok=True" in out and "faster (best of each)" in out


def test_bench_fences_measures_both_designs_and_cleans_up():
    code, out, err = run_cmd("bench_fences", "--fenced", "0,20", "--inserts", "30", "--bulk-rows", "200",
                             "--rounds", "1")
    assert code == 0, err
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| per-tenant ") or line.startswith("| guard ")]
    triggers = {(r[0], r[1]): int(r[2]) for r in rows}
    assert triggers == {("per-tenant", "0"): 0, ("per-tenant", "20"): 60, ("guard", "0"): 3, ("guard", "20"): 3}
    assert all(r[3] == "yes" for r in rows)  # every configuration refuses the fenced tenant's write
    assert "fenced tenants vs 0: guard" in out
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'bench_fences'")
        assert cursor.fetchone()[0] == 0
