"""bench_fleet end to end at a tiny size: a plan of the 2 biggest of 6 tenants, 1 then 2 at once,
on the real qcluster it starts (pointed at this test's database through the environment, as
tests/qcluster.py does), with the staying tenant's writer; the table is printed, every move
verified, and nothing of the benchmark is left (tenants, plans, runs, databases, task records)."""
import re

import psycopg
import pytest
from django.conf import settings
from django_q.models import OrmQ, Task

from fleet.models import MovePlan
from migration_jobs.models import MigrationRun
from tenancy.models import Tenant
from tests.helpers import run_cmd
from tests.qcluster import manage_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def children_use_this_database(monkeypatch):
    """The benchmark's qcluster and writer processes inherit the environment: this test's database."""
    env = manage_env()
    for key in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "TENANT_DATABASE_PREFIX", "TENANT_BACKUP_DIR"):
        monkeypatch.setenv(key, env[key])


def test_bench_fleet_prints_the_table_verifies_every_move_and_cleans_up(children_use_this_database,
                                                                       server_conninfo):
    code, out, err = run_cmd("bench_fleet", "--tenants", "6", "--move", "2", "--largest", "600", "--parallel", "1,2",
                             "--baseline", "1", "--rate", "20", "--fenced", "20", "--fence-inserts", "20")
    assert code == 0, out + err
    rows = {m.group(1): line for line in out.splitlines() if (m := re.match(r"\| (\d+) \| [\d.]+ \|", line))}
    assert set(rows) == {"1", "2"}, out
    for line in rows.values():
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[9] == "2/2", line  # moved + verified
        assert cells[10] == "0", line  # the staying tenant was never refused a write
        assert re.fullmatch(r"\d+ / \d+", cells[8]), line  # freeze median / max, recorded by the runs
    assert "real django-q2 cluster" in out
    assert re.search(r"2 at once vs 1 at once: wall time [\d.]+x", out), out
    assert re.search(r"with 20: [\d.]+x \(goal: within 1.2x\); a fenced tenant's write refused", out), out

    assert not Tenant.objects.filter(slug__startswith="fleet_bench_").exists()
    assert not MovePlan.objects.exists() and not MigrationRun.objects.exists()
    assert not Task.objects.filter(cluster__startswith="bench-fleet-").exists()
    assert not OrmQ.objects.filter(key__startswith="bench-fleet-").exists()
    with psycopg.connect(**server_conninfo()) as conn:
        prefix = f"{settings.TENANT_DATABASE_PREFIX}fleet_bench_"
        assert conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)).fetchall() == []
        assert conn.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)).fetchall() == []
