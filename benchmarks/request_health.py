"""What recording request health costs a request: the same tenant requests through Django's
whole stack (Client, every middleware, the shop view and its two queries) (a) without the
monitoring middleware, (b) with it as configured (figures in memory, one upsert per flush),
and (c) with a write on every request (what a row per request would cost), in one process,
interleaved in rounds so that the machine's load hits every method alike. A throwaway tenant
`bench_health` is made and deleted with its figures."""
from __future__ import annotations

import statistics
import time

from django.conf import settings
from django.test import Client, override_settings

from monitoring import middleware
from monitoring.middleware import Aggregator
from monitoring.models import RequestMinute
from tenancy.models import Domain, Tenant, tenant_host

SLUG = "bench_health"
MIDDLEWARE_PATH = "monitoring.middleware.RequestHealthMiddleware"
METHODS = {
    "a": "(a) no health middleware",
    "b": "(b) health middleware, one upsert per flush",
    "c": "(c) health middleware, a write per request",
}


def _requests(host: str, count: int) -> tuple[float, int]:
    """Seconds for `count` requests on a fresh Client (its handler loads MIDDLEWARE now)."""
    client = Client()
    started = time.perf_counter()
    for _ in range(count):
        response = client.get("/shop/summary/", HTTP_HOST=host)
        if response.status_code != 200:
            raise RuntimeError(f"tenant request failed: {response.status_code}")
    return time.perf_counter() - started, count


def run_request_health_benchmark(requests: int = 1000, rounds: int = 3) -> dict:
    if Tenant.objects.filter(slug=SLUG).exists():
        raise RuntimeError(f"tenant {SLUG} exists (left by an interrupted run?): delete it first")
    tenant = Tenant.objects.create(slug=SLUG, name="Benchmark: request health", placement="shared")
    Domain.objects.create(domain=tenant_host(SLUG), tenant=tenant, is_primary=True)
    host = tenant_host(SLUG)
    without = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE_PATH]
    with_it = list(settings.MIDDLEWARE) if MIDDLEWARE_PATH in settings.MIDDLEWARE else \
        [*without[:without.index("tenancy.middleware.TenantMiddleware") + 1], MIDDLEWARE_PATH,
         *without[without.index("tenancy.middleware.TenantMiddleware") + 1:]]
    configs = {"a": (without, settings.MONITORING_FLUSH_SECONDS or 5.0),
               "b": (with_it, settings.MONITORING_FLUSH_SECONDS or 5.0),
               "c": (with_it, 1e-9)}
    seconds = {key: [] for key in METHODS}
    rows = {key: 0 for key in METHODS}
    original = middleware.aggregator
    try:
        _requests(host, 50)  # warm up: routes, connections
        for _ in range(rounds):
            for key, (stack, flush) in configs.items():
                middleware.aggregator = Aggregator()
                with override_settings(MIDDLEWARE=stack, MONITORING_FLUSH_SECONDS=flush):
                    elapsed, _ = _requests(host, requests)
                    middleware.aggregator.flush()
                    seconds[key].append(elapsed)
                    rows[key] += middleware.aggregator.rows_written
    finally:
        middleware.aggregator = original
        RequestMinute.objects.filter(tenant=tenant).delete()
        Tenant.objects.filter(pk=tenant.pk).delete()
    base = statistics.median(seconds["a"])
    return {"requests": requests, "rounds": rounds, "methods": {
        key: {"label": METHODS[key], "seconds": statistics.median(seconds[key]),
              "us_per_request": statistics.median(seconds[key]) / requests * 1e6,
              "overhead_us": (statistics.median(seconds[key]) - base) / requests * 1e6,
              "ratio": statistics.median(seconds[key]) / base, "row_writes": rows[key]}
        for key in METHODS}}


def format_report(report: dict) -> str:
    lines = [f"{report['requests']} tenant requests per method, median of {report['rounds']} rounds", "",
             "| method | µs/request | overhead vs (a) µs | ratio vs (a) | rows written (all rounds) |",
             "|---|---|---|---|---|"]
    for m in report["methods"].values():
        lines.append(f"| {m['label']} | {m['us_per_request']:,.0f} | {m['overhead_us']:+,.0f} | "
                     f"{m['ratio']:.3f} | {m['row_writes']:,} |")
    return "\n".join(lines)
