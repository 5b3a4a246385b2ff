"""Health after a move in the admin: the run page's before / after table (context variable
`run_health`, template admin/migration_jobs/migrationrun/health.html) and the tenant list's
"health" column (the verdict on the tenant's last move, read by one annotation: no query per
row)."""
from __future__ import annotations

from django.contrib import admin
from django.db.models import F, OuterRef, Subquery
from django.db.models.functions import JSONObject
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html

from migration_jobs.admin.common import run_url
from migration_jobs.models import MigrationRun, RunStatus
from migration_jobs.services.health import SWITCHING_KINDS, run_health
from tenancy.admin import TenantAdmin


def _ms(value) -> str:
    return "—" if value is None else f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _rate(value) -> str:
    return "—" if value is None else f"{value * 100:.2f} %"


def _verdict(health: dict) -> str:
    if health.get("smoke_ok") is False:
        return "smoke check failed"
    if health.get("regressed") is True:
        return "regressed"
    if health.get("regressed") is False:
        return "no regression" if health.get("final") else "no regression so far"
    return "not enough requests to judge" if health.get("final") else "judging (the hour after is not over)"


def run_health_context(run: MigrationRun) -> dict | None:
    """What health.html shows, or None for a run that switched nothing."""
    health = run_health(run)
    if health is None:
        return None
    before, after = health.get("before") or {}, health.get("after") or {}
    rows = [("requests", before.get("requests", 0), after.get("requests", 0)),
            ("errors (5xx)", before.get("errors", 0), after.get("errors", 0)),
            ("error rate", _rate(before.get("error_rate")), _rate(after.get("error_rate"))),
            ("p50 latency", _ms(before.get("p50_ms")), _ms(after.get("p50_ms"))),
            ("p95 latency", _ms(before.get("p95_ms")), _ms(after.get("p95_ms")))]
    smoke = health.get("smoke") or {}
    tables = [(name, t.get("rows"), _ms(t.get("ms")), t.get("error", "")) for name, t in
              (smoke.get("tables") or {}).items()]
    return {**health, "rows": rows, "verdict": _verdict(health),
            "flagged": health.get("regressed") is True or health.get("smoke_ok") is False,
            "smoke_time": _ms(health.get("smoke_ms")), "smoke_tables": tables,
            "smoke_error": smoke.get("error") or "", "after_minutes": health.get("after_minutes", 0),
            "switched": parse_datetime(health["switched_at"]) if health.get("switched_at") else None}


# --- The tenant list ------------------------------------------------------------------------

def last_move_health():
    """An expression: the health verdict of the tenant's last finished move (out or back)."""
    last = (MigrationRun.objects.filter(tenant_id=OuterRef("pk"), kind__in=SWITCHING_KINDS,
                                        status=RunStatus.SUCCEEDED, dry_run=False)
            .order_by("-finished_at", "-pk"))
    return Subquery(last.values(verdict=JSONObject(
        id="pk", regressed=F("health__regressed"), smoke_ok=F("health__smoke__ok"), final=F("health__final"),
        reason=F("health__reason")))[:1])


@admin.display(description="health")
def move_health(tenant):
    data = getattr(tenant, "last_move_health", None)
    if not data:
        return "—"
    url = run_url(MigrationRun(pk=data["id"]))
    if data.get("smoke_ok") is False:
        return format_html('<a href="{}" style="color: #ba2121; font-weight: bold">smoke check failed (run {})</a>',
                           url, data["id"])
    if data.get("regressed") is True:
        return format_html('<a href="{}" title="{}" style="color: #ba2121; font-weight: bold">regressed '
                           '(run {})</a>', url, data.get("reason") or "", data["id"])
    if data.get("regressed") is False:
        return format_html('<a href="{}" title="{}">ok</a>', url, data.get("reason") or "")
    return format_html('<a href="{}">{}</a>', url, "not judged" if data.get("final") else "judging")


TenantAdmin.list_annotations = {**TenantAdmin.list_annotations, "last_move_health": last_move_health}
if move_health not in TenantAdmin.list_display:
    names = [getattr(c, "__name__", c) for c in TenantAdmin.list_display]
    # After the current run (tenant_actions puts it right after the status), else after the status.
    anchor = "current_run" if "current_run" in names else "status"
    at = names.index(anchor) + 1 if anchor in names else len(names)
    TenantAdmin.list_display = [*TenantAdmin.list_display[:at], move_health, *TenantAdmin.list_display[at:]]
