"""Health after a move: real requests to tenant hosts become one row per tenant and minute
(written once per flush, not once per request), p50/p95 come from the buckets, a real move
records its smoke check through the router, and the before/after verdict is flagged on the
run page and in the tenant list."""
import json
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_q.models import Schedule
from psycopg import sql

from migration_jobs.engine import provision
from migration_jobs.engine.smoke import smoke_check
from migration_jobs.engine.tables import tenant_models, tenant_tables
from migration_jobs.models import MigrationRun
from migration_jobs.runs import executor
from migration_jobs.runs.faults import Faults
from migration_jobs.runs.health import schedule_name
from migration_jobs.services import request_move
from migration_jobs.services.health import refresh_run_health, run_health
from monitoring import middleware
from monitoring.health import Window, latency_window, quantile_from_buckets
from monitoring.middleware import Aggregator, Minute, write_minutes
from monitoring.models import LATENCY_BUCKETS_MS, RequestMinute
from tenancy.backend.roles import schema_role
from tenancy.context import tenant_context
from tenancy.models import Tenant, tenant_host
from tests.helpers import fill, run_cmd

MINUTE_START = datetime(2026, 3, 2, 10, 15, tzinfo=dt_timezone.utc)


class Clock:
    """The aggregator's wall clock, moved by the test (latencies are still measured for real)."""

    def __init__(self, at: datetime):
        self.now = at.timestamp()

    def __call__(self):
        return self.now

    def advance(self, seconds: float):
        self.now += seconds


@pytest.fixture
def aggregator(settings, monkeypatch):
    """A fresh process aggregator writing at most every 5 s, on a clock the test moves."""
    settings.MONITORING_FLUSH_SECONDS = 5
    clock = Clock(MINUTE_START + timedelta(seconds=10))
    fresh = Aggregator(clock=clock)
    monkeypatch.setattr(middleware, "aggregator", fresh)
    fresh.clock_control = clock
    return fresh


def upserts(queries) -> int:
    return sum("INSERT INTO monitoring_requestminute" in q["sql"] for q in queries)


# --- Requests become per-minute rows ----------------------------------------------------------

@pytest.mark.django_db
def test_requests_are_one_row_per_tenant_and_minute_written_once_per_flush(client, make_tenant, aggregator):
    tenant, other = make_tenant("healthy"), make_tenant("quiet")
    fill(tenant, 2)
    host = tenant_host(tenant.slug)
    with CaptureQueriesContext(connection) as queries:
        for _ in range(20):
            assert client.get("/shop/customers/", HTTP_HOST=host).status_code == 200
        assert client.get("/shop/summary/", HTTP_HOST=tenant_host(other.slug)).status_code == 200
        assert client.get("/admin/login/").status_code == 200  # no tenant: not counted
    assert not [q for q in queries if "monitoring_requestminute" in q["sql"]], "a request must not write its row"
    assert not RequestMinute.objects.exists()
    pending = aggregator.pending()
    assert {key[0]: m.requests for key, m in pending.items()} == {tenant.pk: 20, other.pk: 1}

    aggregator.clock_control.advance(6)  # past MONITORING_FLUSH_SECONDS: the next request writes
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/shop/customers/", HTTP_HOST=host).status_code == 200
    assert upserts(queries) == 1, [q["sql"] for q in queries]  # one statement for every tenant
    rows = {r.tenant_id: r for r in RequestMinute.objects.all()}
    assert set(rows) == {tenant.pk, other.pk}
    row = rows[tenant.pk]
    assert (row.minute, row.requests, row.errors) == (MINUTE_START, 21, 0)
    assert sum(row.buckets) == 21 and len(row.buckets) == len(LATENCY_BUCKETS_MS) + 1
    assert 0 < row.latency_ms_max and row.latency_ms_max * 21 >= row.latency_ms_sum > 0

    # The same minute again adds to the same row; the next minute is a new row.
    for _ in range(3):
        client.get("/shop/customers/", HTTP_HOST=host)
    aggregator.clock_control.advance(60)
    for _ in range(4):
        client.get("/shop/customers/", HTTP_HOST=host)
    aggregator.clock_control.advance(6)
    client.get("/shop/customers/", HTTP_HOST=host)
    minutes = list(RequestMinute.objects.filter(tenant=tenant).order_by("minute").values_list("minute", "requests"))
    assert minutes == [(MINUTE_START, 24), (MINUTE_START + timedelta(minutes=1), 5)]

    figures = latency_window(tenant.pk, MINUTE_START, MINUTE_START + timedelta(minutes=2))
    assert figures["requests"] == 29 and figures["errors"] == 0 and figures["error_rate"] == 0
    assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["max_ms"]
    assert latency_window(tenant.pk, MINUTE_START + timedelta(minutes=2), MINUTE_START + timedelta(minutes=9)) == {
        "requests": 0, "errors": 0, "error_rate": None, "p50_ms": None, "p95_ms": None, "mean_ms": None,
        "max_ms": None}


@pytest.mark.django_db
def test_server_errors_are_counted_and_status_refusals_are_not(make_tenant, place_tenant, aggregator):
    broken, suspended = make_tenant("broken"), make_tenant("napping", status="suspended")
    place_tenant(broken, "database")
    credential = broken.credential
    # Its database is gone: every request for it fails in the application (500).
    provision.drop_database(credential.server, credential.database, credential.role)
    browser = Client(raise_request_exception=False)
    for _ in range(3):
        assert browser.get("/shop/summary/", HTTP_HOST=tenant_host(broken.slug)).status_code == 500
    assert browser.get("/shop/summary/", HTTP_HOST=tenant_host(suspended.slug)).status_code == 503
    assert aggregator.flush() == 1
    row = RequestMinute.objects.get()
    assert (row.tenant_id, row.requests, row.errors) == (broken.pk, 3, 3)
    assert latency_window(broken.pk, MINUTE_START, MINUTE_START + timedelta(minutes=1))["error_rate"] == 1.0


def test_percentiles_are_interpolated_inside_their_bucket():
    buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    buckets[1] = 90   # (5, 10] ms
    buckets[6] = 10   # (250, 500] ms
    assert quantile_from_buckets(buckets, 0.5) == pytest.approx(5 + 5 * 50 / 90)
    assert quantile_from_buckets(buckets, 0.95) == pytest.approx(250 + 250 * 5 / 10)
    # Nothing was slower than 400 ms: the bucket ends there.
    assert quantile_from_buckets(buckets, 0.95, max_ms=400) == pytest.approx(250 + 150 * 5 / 10)
    slow = [0] * len(buckets)
    slow[-1] = 4  # slower than every bound: up to the slowest request seen
    assert quantile_from_buckets(slow, 0.5, max_ms=30_000) == pytest.approx(10_000 + 20_000 * 0.5)
    assert quantile_from_buckets([0] * len(buckets), 0.5) is None
    # The same figures through a Window, as the run page and /metrics read them.
    window = Window(requests=100, errors=2, ms_sum=5000.0, ms_max=400.0, buckets=buckets)
    assert window.as_dict()["p95_ms"] == pytest.approx(325.0)
    assert window.as_dict()["error_rate"] == 0.02


# --- The smoke check of a real move ------------------------------------------------------------

SEEDED = {"largest": 1500, "seed": 5}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("target, online", [("schema", False), ("database", True)])
def test_a_real_move_records_its_smoke_check(seeded, made_places, target, online):
    tenant = seeded
    args = ["migrate_tenant", tenant.slug, "--to", target] + (["--online"] if online else [])
    code, out, err = run_cmd(*args)
    assert code == 0, err
    run = MigrationRun.objects.filter(tenant=tenant).latest("created_at")
    tenant.refresh_from_db()
    made_places.append(("schema", tenant.schema_name) if target == "schema" else
                       ("database", run.target_server, run.target_database,
                        provision.role_name(run.target_database)))
    assert run.status == "succeeded" and tenant.placement == target
    smoke = run.health["smoke"]
    assert smoke["ok"] and smoke["placement"] == target and smoke["error"] is None
    assert set(smoke["tables"]) == {t.name for t in tenant_tables()}
    with tenant_context(tenant):  # what the tenant has in each table, read where it lives now
        counts = {m._meta.db_table: m.objects.count() for m in tenant_models()}
    assert {name: entry["rows"] for name, entry in smoke["tables"].items()} == \
        {name: min(5, n) for name, n in counts.items()}
    assert max(counts.values()) > 5 and all(entry["ms"] > 0 for entry in smoke["tables"].values())
    assert run.health["smoke_ms"] == smoke["total_ms"] >= sum(t["ms"] for t in smoke["tables"].values())
    switched = datetime.fromisoformat(run.health["switched_at"])
    assert run.started_at < switched < run.finished_at
    if online:
        assert switched == run.freeze_ended_at
    switch_step = run.steps.get(name="cutover" if online else "switch")
    assert f"smoke check: {len(smoke['tables'])} tables read in" in switch_step.message
    # The verdict is refreshed by django-q2 until the hour after the switch is over.
    assert Schedule.objects.get(name=schedule_name(run.pk)).func == "migration_jobs.services.health.refresh_run_health"
    health = run_health(run)
    assert health["regressed"] is None and not health["final"] and health["smoke_ok"] is True


class RevokeBeforeSwitch(Faults):
    """Before the switch, the schema tenant's role loses SELECT on one table (a real grant
    problem in the target, found only by reading it as the tenant)."""

    def __init__(self, schema: str, table: str):
        super().__init__()
        self.schema, self.table = schema, table

    def checkpoint(self, name):
        if name == "before:switch":
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("REVOKE SELECT ON {}.{} FROM {}").format(
                    sql.Identifier(self.schema), sql.Identifier(self.table),
                    sql.Identifier(schema_role(self.schema))).as_string(connection.connection))


@pytest.mark.django_db(transaction=True)
def test_a_failed_smoke_check_is_flagged_and_never_undoes_the_switch(seeded, made_places, staff):
    tenant = seeded
    run = request_move(tenant, "schema")
    made_places.append(("schema", run.target_schema))
    run = executor.execute(run.pk, faults=RevokeBeforeSwitch(run.target_schema, "shop_repair"))
    tenant.refresh_from_db()
    assert run.status == "succeeded" and tenant.placement == "schema" and tenant.status == "active"
    smoke = run.health["smoke"]
    assert not smoke["ok"]
    assert smoke["tables"]["shop_repair"]["error"] == "ProgrammingError: permission denied for table shop_repair"
    assert smoke["tables"]["shop_customer"]["rows"] == 5  # the other tables were still read
    assert "SMOKE CHECK FAILED" in run.steps.get(name="switch").message
    # Flagged on the run page and in the tenant list.
    page = staff.get(reverse("admin:migration_jobs_migrationrun_change", args=[run.pk])).content.decode()
    assert "Health after the switch" in page and "smoke check failed" in page and "permission denied for table shop_repair" in page
    listing = staff.get(reverse("admin:tenancy_tenant_changelist")).content.decode()
    assert f"smoke check failed (run {run.pk})" in listing


@pytest.mark.django_db
def test_smoke_check_reads_through_the_router_for_each_placement(make_tenant, place_tenant):
    shared, moved = make_tenant("smoky"), make_tenant("smoked")
    fill(shared, 6)
    place_tenant(moved, "database")
    fill(moved, 1)
    check = smoke_check(shared.pk)
    assert check["ok"] and check["placement"] == "shared" and check["tables"]["shop_customer"]["rows"] == 5
    check = smoke_check(moved.pk)
    assert check["ok"] and check["placement"] == "database" and check["tables"]["shop_customer"]["rows"] == 1


# --- Before / after, the verdict, the run page and the tenant list -----------------------------

def synthetic(tenant, start: datetime, minutes: int, per_minute: int, bucket: int, errors: int = 0):
    """Per-minute rows written by the middleware's own upsert: `per_minute` requests a minute,
    all in one latency bucket."""
    rows = []
    for i in range(minutes):
        m = Minute()
        m.requests, m.errors = per_minute, errors
        bound = LATENCY_BUCKETS_MS[min(bucket, len(LATENCY_BUCKETS_MS) - 1)]
        m.ms_sum, m.ms_max = per_minute * bound * 0.9, bound * 0.95
        m.buckets[bucket] = per_minute
        rows.append((tenant.pk, start + timedelta(minutes=i), m))
    write_minutes(rows)


def switched_run(tenant, at: datetime, **health) -> MigrationRun:
    return MigrationRun.objects.create(
        tenant=tenant, kind="move", source_placement="shared", target_placement="schema", status="succeeded",
        started_at=at - timedelta(minutes=2), finished_at=at + timedelta(seconds=5),
        health={"switched_at": at.isoformat(), "smoke": {"ok": True, "tables": {}, "total_ms": 4.2, "error": None},
                "smoke_ms": 4.2, **health})


@pytest.mark.django_db
def test_regression_is_judged_from_the_hours_around_the_switch(make_tenant, settings, staff):
    settings.TENANT_HEALTH_REGRESSION_RATIO = 1.5
    settings.TENANT_HEALTH_MIN_REQUESTS = 100
    now = timezone.now().replace(second=30, microsecond=0)
    at = now - timedelta(hours=2)  # the hour after is over: a final verdict
    switch_minute = at.replace(second=0)
    slow, steady, idle = make_tenant("slowed"), make_tenant("steady"), make_tenant("idle")
    for tenant, after_bucket in ((slow, 6), (steady, 3)):
        synthetic(tenant, switch_minute - timedelta(hours=1), 60, 10, bucket=3)           # (25, 50] ms
        synthetic(tenant, switch_minute + timedelta(minutes=1), 60, 10, bucket=after_bucket)
        synthetic(tenant, switch_minute, 1, 1000, bucket=10)  # the switch's own minute: on neither side
    synthetic(idle, switch_minute - timedelta(hours=1), 60, 1, bucket=3)
    runs = {t.slug: switched_run(t, at) for t in (slow, steady, idle)}
    url = reverse("admin:tenancy_tenant_changelist")
    staff.get(url)  # warm up (session, content types)
    with CaptureQueriesContext(connection) as three:
        staff.get(url)

    health = run_health(runs["slowed"], now=now)
    assert health["before"]["requests"] == health["after"]["requests"] == 600
    assert 25 < health["before"]["p95_ms"] <= 50 and 250 < health["after"]["p95_ms"] <= 500
    assert health["regressed"] is True and health["final"] is True and "p95" in health["reason"]
    stored = MigrationRun.objects.get(pk=runs["slowed"].pk).health
    assert stored["regressed"] is True and stored["final"] and stored["smoke"]["ok"]  # cached, smoke kept
    assert run_health(runs["steady"], now=now)["regressed"] is False
    idle_health = run_health(runs["idle"], now=now)
    assert idle_health["regressed"] is None and "not enough requests" in idle_health["reason"]

    # More errors after the switch is a regression too, even at the same latency.
    erring = make_tenant("erring")
    synthetic(erring, switch_minute - timedelta(hours=1), 60, 10, bucket=3)
    synthetic(erring, switch_minute + timedelta(minutes=1), 60, 10, bucket=3, errors=1)
    erring_run = switched_run(erring, at)
    verdict = run_health(erring_run, now=now)
    assert verdict["regressed"] is True and "error rate" in verdict["reason"]

    # Flagged on the run page (before / after figures) and in the tenant list.
    page = staff.get(reverse("admin:migration_jobs_migrationrun_change", args=[runs["slowed"].pk])).content.decode()
    assert "Health after the switch" in page and "hour before the switch" in page
    assert ">regressed<" in page and "600" in page and "p95 latency" in page
    with CaptureQueriesContext(connection) as four:
        listing = staff.get(url).content.decode()
    assert f"regressed (run {runs['slowed'].pk})" in listing and f"regressed (run {erring_run.pk})" in listing
    assert ">ok</a>" in listing and "not judged" in listing
    assert len(four) == len(three)  # the column is an annotation, not a query per row


@pytest.mark.django_db
def test_a_verdict_is_cached_once_the_hour_after_has_enough_requests(make_tenant, settings):
    settings.TENANT_HEALTH_MIN_REQUESTS = 100
    tenant = make_tenant("judged")
    now = timezone.now().replace(second=30, microsecond=0)
    at = now - timedelta(minutes=20)  # 19 complete minutes after the switch so far
    switch_minute = at.replace(second=0)
    synthetic(tenant, switch_minute - timedelta(hours=1), 60, 10, bucket=3)
    synthetic(tenant, switch_minute + timedelta(minutes=1), 5, 10, bucket=7)
    run = switched_run(tenant, at)
    health = run_health(run, now=now)
    assert health["regressed"] is None and health["after"]["requests"] == 50
    assert "regressed" not in MigrationRun.objects.get(pk=run.pk).health  # not enough yet: nothing cached
    synthetic(tenant, switch_minute + timedelta(minutes=6), 10, 10, bucket=7)
    assert refresh_run_health(run.pk) == {"regressed": True, "final": False}  # the scheduled task
    stored = MigrationRun.objects.get(pk=run.pk).health
    assert stored["regressed"] is True and stored["final"] is False and stored["after"]["requests"] == 150
    # A run that switched nothing has no health.
    failed = MigrationRun.objects.create(tenant=tenant, kind="move", source_placement="shared",
                                         target_placement="schema", status="rolled_back")
    assert run_health(failed) is None


@pytest.mark.django_db
def test_bench_request_health_compares_with_no_middleware_and_a_write_per_request():
    code, out, err = run_cmd("bench_request_health", "--requests", "20", "--rounds", "1", "--json")
    assert code == 0, err
    assert "(a) no health middleware" in out and "(c) health middleware, a write per request" in out
    report = json.loads(out.strip().splitlines()[-1])
    rows = {key: m["row_writes"] for key, m in report["methods"].items()}
    assert rows["a"] == 0 and rows["b"] in (1, 2) and rows["c"] >= 20  # (b): one per minute touched
    assert not Tenant.objects.filter(slug="bench_health").exists() and not RequestMinute.objects.exists()
