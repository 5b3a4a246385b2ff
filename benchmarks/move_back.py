"""Move-back benchmark: what reusing the legacy rows saves. One generated tenant moves to a
dedicated database, a few of its rows change there, and it moves back: (a) with its legacy
rows still in the shared tables (only the buckets of keys that differ are copied), then,
after moving out again and retiring the legacy rows, (b) with nothing left to reuse (every
row copied): the baseline, in the same process, on the same data."""
from __future__ import annotations

import random

from django.db import connection

from migration_jobs import services
from shop.models import Customer
from tenancy.context import tenant_context
from tenancy.models import Tenant

from .bench_tenants import check_can_run, create_bench_tenant, drop_bench_tenant


def _moved(run):
    run.refresh_from_db()
    if run.status != "succeeded":
        raise RuntimeError(f"run {run.pk} ({run.kind}) {run.status}: {run.error}")
    return run


def _change_rows(tenant, changes: int, seed: int) -> None:
    """Update `changes` random customers of the tenant where it lives now."""
    with tenant_context(tenant):
        ids = list(Customer.objects.values_list("pk", flat=True))
        picked = random.Random(seed).sample(ids, min(changes, len(ids)))
        Customer.objects.filter(pk__in=picked).update(loyalty_points=424242)
    connection.close()


def _copy_back_result(run, label: str) -> dict:
    step = run.steps.get(name="copy_back")
    seconds = (step.finished_at - step.started_at).total_seconds()
    details = step.details
    return {"label": label, "run": run.pk, "seconds": seconds, "copied": details["rows"],
            "reused": details["legacy_rows_reused"], "replaced": details["legacy_rows_replaced"],
            "rows": details["rows"] + details["legacy_rows_reused"]}


def run_move_back_benchmark(rows: int, *, changes: int = 100, say=print) -> dict:
    for leftover in check_can_run([rows]):
        drop_bench_tenant(leftover)
    say(f"creating a tenant of {rows:,} rows ...")
    tenant, _ = create_bench_tenant(rows)
    results = []
    try:
        say("moving it to a dedicated database, changing rows there, moving it back (legacy rows reused) ...")
        _moved(services.execute(services.request_move(tenant, "database", via="bench")))
        _change_rows(Tenant.objects.get(pk=tenant.pk), changes, seed=rows)
        back = _moved(services.execute(services.request_move_back(Tenant.objects.get(pk=tenant.pk), via="bench")))
        results.append(_copy_back_result(back, f"(a) {changes} rows changed, legacy rows reused"))
        say("moving it out again, retiring its legacy rows, moving it back (every row copied) ...")
        _moved(services.execute(services.request_move(Tenant.objects.get(pk=tenant.pk), "database", via="bench")))
        _change_rows(Tenant.objects.get(pk=tenant.pk), changes, seed=rows + 1)
        _moved(services.execute(services.request_retire(Tenant.objects.get(pk=tenant.pk), ignore_grace=True,
                                                        via="bench")))
        back = _moved(services.execute(services.request_move_back(Tenant.objects.get(pk=tenant.pk), via="bench")))
        results.append(_copy_back_result(back, f"(b) {changes} rows changed, legacy rows retired"))
    finally:
        connection.set_schema_to_public()
        drop_bench_tenant(Tenant.objects.get(pk=tenant.pk))
    return {"rows": rows, "changes": changes, "results": results}


def format_report(report: dict) -> str:
    base = report["results"][-1]["seconds"]
    header = f"{'copy back':<44} {'rows':>10} {'copied':>10} {'reused':>10} {'seconds':>8} {'vs (b)':>7}"
    lines = [f"Move back of a {report['rows']:,}-row tenant from a dedicated database (offline; copy_back step)",
             "", header, "-" * len(header)]
    for r in report["results"]:
        lines.append(f"{r['label']:<44} {r['rows']:>10,} {r['copied']:>10,} {r['reused']:>10,} "
                     f"{r['seconds']:>8.1f} {base / r['seconds'] if r['seconds'] else float('inf'):>6.1f}x")
    return "\n".join(lines)
