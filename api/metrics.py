"""GET /metrics: the Prometheus text format, for the dashboards operators already have.

A collector reads the database at scrape time (nothing is kept in this process, so any
number of web processes answer the same): per tenant, its requests, 5xx errors, error ratio
and p50/p95 latency over the last TENANT_METRICS_WINDOW_MINUTES complete minutes
(monitoring); per run, active or ended within TENANT_METRICS_RECENT_HOURS, its status, rows
copied, lag, freeze, writes refused, smoke check and health verdict; and how many runs are in
each status. Labels stay bounded: tenant slugs of the TENANT_METRICS_MAX_TENANTS busiest
tenants with traffic in the window, and at most RUN_LIMIT runs. No secret is ever a label or
a value.

It needs a token like every staff API call (api/auth.py: `Authorization: Bearer <token>`, 401
without a valid one) whose user and creator hold `monitoring.view_metrics` (403 otherwise);
every scrape is recorded as an API call. Mounted at /metrics by project/urls.py.
"""
from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from django.urls import path
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.core import GaugeMetricFamily

from api.auth import api_view
from migration_jobs.services.health import run_counts, runs_for_metrics
from monitoring.health import busiest_tenants

RUN_LIMIT = 200
PERMISSION = "monitoring.view_metrics"


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class TenantMovesCollector:
    """Everything /metrics exports, read from the database when Prometheus scrapes."""

    def collect(self):
        yield from self.tenant_metrics()
        yield from self.run_metrics()

    def describe(self):
        return []  # registering must not query: collect() is called per scrape only

    @staticmethod
    def tenant_metrics():
        minutes = settings.TENANT_METRICS_WINDOW_MINUTES
        window = _gauge("tenant_health_window_seconds",
                        "Length of the window the tenant_request* figures cover (complete minutes)", [])
        window.add_metric([], minutes * 60)
        yield window
        where = f" in the last {minutes} complete minutes"
        requests = _gauge("tenant_requests", "Requests served for the tenant" + where, ["tenant"])
        errors = _gauge("tenant_request_errors", "Responses with a 5xx status" + where, ["tenant"])
        ratio = _gauge("tenant_request_error_ratio", "5xx responses / requests" + where, ["tenant"])
        latency = _gauge("tenant_request_latency_seconds",
                         "Request latency quantiles (estimated from per-minute buckets)" + where,
                         ["tenant", "quantile"])
        for slug, figures in busiest_tenants(minutes, settings.TENANT_METRICS_MAX_TENANTS):
            requests.add_metric([slug], figures.requests)
            errors.add_metric([slug], figures.errors)
            ratio.add_metric([slug], figures.error_rate or 0.0)
            for q in (0.5, 0.95):
                value = figures.quantile_ms(q)
                if value is not None:
                    latency.add_metric([slug, str(q)], value / 1000.0)
        yield from (requests, errors, ratio, latency)

    @staticmethod
    def run_metrics():
        counts = _gauge("tenant_move_runs", "Migration runs by status (all time)", ["status"])
        for status, n in run_counts().items():
            counts.add_metric([status], n)
        yield counts
        labels = ["run", "tenant", "kind"]
        status = _gauge("tenant_move_run_status", "1 for the run's current status (active and recent runs)",
                        labels + ["status"])
        values = {
            "rows_copied": _gauge("tenant_move_rows_copied", "Rows copied so far", labels),
            "rows_total": _gauge("tenant_move_rows_total", "Rows to copy (estimated by preflight)", labels),
            "lag_changes": _gauge("tenant_move_lag_changes", "Online move: captured changes not applied yet",
                                  labels),
            "lag_seconds": _gauge("tenant_move_lag_seconds", "Online move: age of the oldest unapplied change",
                                  labels),
            "freeze_seconds": _gauge("tenant_move_freeze_seconds", "Online move: length of the cutover's freeze",
                                     labels),
            "writes_refused_seconds": _gauge("tenant_move_writes_refused_seconds",
                                             "How long the tenant's writes were refused (so far)", labels),
            "smoke_seconds": _gauge("tenant_move_smoke_check_seconds",
                                    "Time of the smoke check after the switch", labels),
        }
        flags = {
            "smoke_ok": _gauge("tenant_move_smoke_check_ok", "1 if the smoke check after the switch read every "
                                                             "table, 0 if it failed", labels),
            "regressed": _gauge("tenant_move_health_regressed", "1 if the tenant's p95 or error rate regressed "
                                                                "after the switch, 0 if not (absent: not judged)",
                                labels),
        }
        for run in runs_for_metrics(settings.TENANT_METRICS_RECENT_HOURS, RUN_LIMIT):
            key = [str(run["run"]), run["tenant"], run["kind"]]
            status.add_metric(key + [run["status"]], 1)
            for name, family in values.items():
                if run[name] is not None:
                    family.add_metric(key, float(run[name]))
            for name, family in flags.items():
                if run[name] is not None:
                    family.add_metric(key, 1.0 if run[name] else 0.0)
        yield status
        yield from values.values()
        yield from flags.values()


def exposition() -> bytes:
    """The whole /metrics body: a registry of this one collector, collected now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TenantMovesCollector())
    return generate_latest(registry)


@api_view(GET=[PERMISSION])
def metrics(request):
    # The classic text format (names escaped to the legacy charset): every Prometheus version reads it.
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


# project/urls.py: path("metrics", include("api.metrics"))
urlpatterns = [path("", metrics, name="metrics")]
