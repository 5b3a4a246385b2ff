"""GET /metrics: Prometheus text built from the database at scrape time, behind an API token
whose user and creator hold monitoring.view_metrics; per-tenant request figures (bounded to
tenants with traffic) and the runs' status, rows copied, lag, freeze, smoke check and verdict."""
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from api.models import ApiCall
from migration_jobs.models import MigrationRun
from monitoring import middleware
from monitoring.middleware import Aggregator
from tenancy.models import tenant_host
from tests.helpers import fill, make_token, staff_user

pytestmark = pytest.mark.django_db


def scrape(token=None, **headers):
    if token is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return Client().get("/metrics", **headers)


def samples(body: str) -> dict:
    """{(name, frozenset(labels)): value} of every sample, parsed as Prometheus parses it."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def test_metrics_need_a_token_with_the_permission():
    response = scrape()
    assert response.status_code == 401 and "Bearer" in response["WWW-Authenticate"]
    assert scrape("tmt_nope_nope").status_code == 401
    no_perm = make_token(staff_user("watcher"))
    response = scrape(no_perm)
    assert response.status_code == 403 and "monitoring.view_metrics" in response.json()["error"]
    # The permission must be held by the token's creator too.
    boss = staff_user("boss")
    holder = staff_user("grafana", ["monitoring.view_metrics"])
    assert scrape(make_token(holder, created_by=boss)).status_code == 403
    response = scrape(make_token(holder, scope="read"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert ApiCall.objects.filter(path="/metrics").count() == 5  # recorded like every API call
    assert list(ApiCall.objects.filter(path="/metrics").order_by("pk").values_list("status_code", flat=True)) == \
        [401, 401, 403, 403, 200]


def test_metrics_export_tenant_requests_and_runs(settings, monkeypatch, make_tenant):
    busy, idle = make_tenant("busy"), make_tenant("idle")
    fill(busy, 1)
    # Real requests, counted in the previous (complete) minute: the window is complete minutes.
    last_minute = (timezone.now() - timedelta(minutes=1)).timestamp()
    aggregator = Aggregator(clock=lambda: last_minute)
    monkeypatch.setattr(middleware, "aggregator", aggregator)
    browser = Client(raise_request_exception=False)
    for _ in range(7):
        assert browser.get("/shop/customers/", HTTP_HOST=tenant_host(busy.slug)).status_code == 200
    aggregator.flush()
    running = MigrationRun.objects.create(
        tenant=busy, kind="move", source_placement="shared", target_placement="database", online=True,
        status="running", current_step="catch_up", rows_total=5000, rows_copied=4200, lag_changes=12,
        lag_seconds=0.8, started_at=timezone.now())
    done = MigrationRun.objects.create(
        tenant=idle, kind="move", source_placement="shared", target_placement="schema", status="succeeded",
        rows_total=10, rows_copied=10, freeze_seconds=0.046, writes_refused_seconds=0.046,
        started_at=timezone.now() - timedelta(minutes=3), finished_at=timezone.now(),
        health={"switched_at": timezone.now().isoformat(), "smoke_ms": 12.5, "regressed": True,
                "smoke": {"ok": True, "tables": {}, "total_ms": 12.5, "error": None}})
    MigrationRun.objects.create(  # ended long ago: not a label any more
        tenant=idle, kind="move", source_placement="shared", target_placement="schema", status="failed",
        created_at=timezone.now() - timedelta(days=3), finished_at=timezone.now() - timedelta(days=3))

    token = make_token(staff_user("prom", ["monitoring.view_metrics"]), scope="read")
    body = scrape(token).content.decode()
    found = samples(body)
    tenant = frozenset({("tenant", "busy")})
    assert found[("tenant_requests", tenant)] == 7
    assert found[("tenant_request_errors", tenant)] == 0
    assert found[("tenant_request_error_ratio", tenant)] == 0
    p50 = found[("tenant_request_latency_seconds", frozenset({("tenant", "busy"), ("quantile", "0.5")}))]
    p95 = found[("tenant_request_latency_seconds", frozenset({("tenant", "busy"), ("quantile", "0.95")}))]
    assert 0 < p50 <= p95 < 10
    assert not any(("tenant", "idle") in labels for _, labels in found if _.startswith("tenant_request"))
    assert found[("tenant_health_window_seconds", frozenset())] == settings.TENANT_METRICS_WINDOW_MINUTES * 60

    run = lambda r, t: frozenset({("run", str(r.pk)), ("tenant", t), ("kind", "move")})  # noqa: E731
    assert found[("tenant_move_run_status", run(running, "busy") | {("status", "running")})] == 1
    assert found[("tenant_move_rows_copied", run(running, "busy"))] == 4200
    assert found[("tenant_move_rows_total", run(running, "busy"))] == 5000
    assert found[("tenant_move_lag_changes", run(running, "busy"))] == 12
    assert found[("tenant_move_lag_seconds", run(running, "busy"))] == 0.8
    assert found[("tenant_move_freeze_seconds", run(done, "idle"))] == 0.046
    assert found[("tenant_move_writes_refused_seconds", run(done, "idle"))] == 0.046
    assert found[("tenant_move_smoke_check_seconds", run(done, "idle"))] == 0.0125
    assert found[("tenant_move_smoke_check_ok", run(done, "idle"))] == 1
    assert found[("tenant_move_health_regressed", run(done, "idle"))] == 1
    assert ("tenant_move_health_regressed", run(running, "busy")) not in found  # not judged: absent
    assert found[("tenant_move_runs", frozenset({("status", "failed")}))] == 1
    assert found[("tenant_move_runs", frozenset({("status", "cancelled")}))] == 0
    assert sum(1 for name, _ in found if name == "tenant_move_run_status") == 2  # the old run is not a label
    # Never a secret: the database password, the encryption key, the token itself.
    for secret in (settings.DATABASES["default"].get("PASSWORD"), settings.TENANT_ENCRYPTION_KEY, token):
        assert not secret or secret not in body


def test_tenant_labels_are_bounded_to_the_busiest(settings, monkeypatch, make_tenant):
    settings.TENANT_METRICS_MAX_TENANTS = 2
    tenants = [make_tenant(f"t{i}") for i in range(4)]
    last_minute = (timezone.now() - timedelta(minutes=1)).timestamp()
    aggregator = Aggregator(clock=lambda: last_minute)
    monkeypatch.setattr(middleware, "aggregator", aggregator)
    for i, tenant in enumerate(tenants):
        for _ in range(i + 1):
            Client().get("/shop/summary/", HTTP_HOST=tenant_host(tenant.slug))
    aggregator.flush()
    found = samples(scrape(make_token(staff_user("prom", ["monitoring.view_metrics"]))).content.decode())
    requests = {dict(labels)["tenant"]: value for (name, labels), value in found.items() if name == "tenant_requests"}
    assert requests == {"t3": 4, "t2": 3}
