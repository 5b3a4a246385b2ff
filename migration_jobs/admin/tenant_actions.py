"""The tenant-list actions: move to a dedicated schema / database, move back to shared,
retire legacy rows, verify, suspend, reactivate. Each asks migration_jobs.services and
hands the run it creates to django-q2 (through the services)."""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import OuterRef, Subquery
from django.db.models.functions import JSONObject
from django.urls import path
from django.utils.html import format_html

from migration_jobs import services
from migration_jobs.services import capacity
from migration_jobs.admin.candidates import candidates_view
from migration_jobs.admin.servers import capacity_note
from migration_jobs.admin.common import (confirmation_page, confirmed, hold_requested, online_requested, report_refused,
                                         request_runs, run_url, split_by_check)
from migration_jobs.models import ACTIVE_STATUSES, MigrationRun
from tenancy.admin import TenantAdmin
from tenancy.models import DatabaseServer, Placement, Status
from tenancy.servers import ensure_default_server

# --- Tenant actions -----------------------------------------------------------------------

MOVE_STEPS_TEXT = ("Each tenant is checked first (preflight); then it is frozen (writes are refused for the "
                   "duration, reads go on; with \"online\" only for a short measured cutover), copied (the "
                   "backup file written from the same stream), verified table by table (row counts and "
                   "checksums, and no other tenant's rows), switched to its new place and reactivated. Any "
                   "failure rolls the run back and leaves the tenant where it is.")


def _online_note(tenant) -> str:
    return "" if tenant.status == Status.ACTIVE else \
        f" (online not possible: it is {tenant.get_status_display().lower()}; untick Online to move it offline)"


def _move(modeladmin, request, queryset, target: str):
    action = f"move_to_{target}"
    if confirmed(request):
        server_name = (request.POST.get("server") or None) if target == Placement.DATABASE else None
        request_runs(modeladmin, request, queryset, lambda tenant: services.request_move(
            tenant, target, server_name=server_name, online=online_requested(request),
            hold_cutover=hold_requested(request), requested_by=request.user, via="admin"))
        return None
    servers = None
    if target == Placement.SCHEMA:
        where = "its own schema (tenant_<slug>) in the shared database"
        place = lambda t: f"schema {t.schema_name}"  # noqa: E731
    else:
        # Preselected: the least loaded server that can take a database (the default when none can).
        found = capacity.capacities(DatabaseServer.objects.order_by("-is_default", "name"), timeout=2)
        ranked = capacity.rank(found)
        chosen = ranked[0].server.pk if ranked else ensure_default_server().pk
        servers = [(c.server.name, f"{c.server.name} ({c.server.host}:{c.server.port}) — {capacity_note(c)}"
                    + (" — least loaded" if ranked and c.server.pk == chosen and len(found) > 1 else ""),
                    c.server.pk == chosen) for c in found]
        where = "its own database, with its own login role, on the server chosen below"
        place = lambda t: f"database {t.database_name}"  # noqa: E731
    items, refused = split_by_check(
        queryset, lambda t: services.check_move(t, target),
        lambda t: f"{t.get_placement_display()}, {t.get_status_display().lower()} → {place(t)}{_online_note(t)}")
    return confirmation_page(
        modeladmin, request, queryset, action=action, title=f"Move tenants to a dedicated {target}",
        intro=f"Move the selected tenants out of the shared database into {where}?",
        items=items, refused=refused, servers=servers, offer_online=True, offer_hold=True, online_default=True,
        submit=f"Yes, move to a dedicated {target}",
        consequences=[MOVE_STEPS_TEXT,
                      "The copied rows stay in the shared tables (legacy rows) until they are retired."])


@admin.action(description="Move to dedicated schema", permissions=["move"])
def move_to_schema(modeladmin, request, queryset):
    return _move(modeladmin, request, queryset, Placement.SCHEMA)


@admin.action(description="Move to dedicated database", permissions=["move"])
def move_to_database(modeladmin, request, queryset):
    return _move(modeladmin, request, queryset, Placement.DATABASE)


@admin.action(description="Move back to shared", permissions=["move"])
def move_back_to_shared(modeladmin, request, queryset):
    if confirmed(request):
        request_runs(modeladmin, request, queryset, lambda tenant: services.request_move_back(
            tenant, online=online_requested(request), requested_by=request.user, via="admin"))
        return None
    items, refused = split_by_check(
        queryset, services.check_move_back,
        lambda t: f"{t.get_placement_display()}, {t.get_status_display().lower()} → shared tables{_online_note(t)}")
    return confirmation_page(
        modeladmin, request, queryset, action="move_back_to_shared", title="Move tenants back to shared",
        intro="Move the selected tenants from their dedicated schema or database back into the shared tables?",
        items=items, refused=refused, submit="Yes, move back to shared", offer_online=True, online_default=True,
        consequences=["Preflight refuses the move if any of the tenant's keys is used by another tenant's row "
                      "in the shared tables (nothing is written then).",
                      "Online (the default), the tenant keeps working while its rows are copied back; its "
                      "writes pause only for a short cutover. Offline, its writes are refused for the whole "
                      "move. Either way every row is copied back in one transaction, verified before commit.",
                      "The dedicated schema or database is kept (not dropped) until it is retired."])


@admin.action(description="Retire legacy rows", permissions=["move"])
def retire_legacy(modeladmin, request, queryset):
    if confirmed(request):
        request_runs(modeladmin, request, queryset,
                      lambda tenant: services.request_retire(tenant, requested_by=request.user, via="admin"))
        return None
    checked = {}
    items, refused = split_by_check(
        queryset, lambda t: checked.__setitem__(t.pk, services.check_retire(t)),
        lambda t: f"{t.get_placement_display()}: {services.legacy_of(checked[t.pk])}, left by run "
                  f"{checked[t.pk].pk}")
    return confirmation_page(
        modeladmin, request, queryset, action="retire_legacy", title="Retire legacy rows",
        intro="Remove what the selected tenants' past moves left behind?",
        items=items, refused=refused, submit="Yes, retire the legacy rows",
        consequences=["The tenant's live copy is verified first; the legacy rows are archived to a file, then "
                      "deleted in small batches (other tenants are not locked out), or the dedicated place a "
                      "move back left is dropped whole.",
                      "Not before TENANT_LEGACY_GRACE_DAYS have passed since the move.",
                      "Afterwards a move back (or out again) copies every row again from where the tenant "
                      "lives."])


@admin.action(description="Verify", permissions=["view"])
def verify(modeladmin, request, queryset):
    for tenant in queryset:
        try:
            task_id, report = services.verify_via_cluster(tenant)
        except Exception as exc:  # noqa: BLE001 - sync mode raises the task's own error here
            modeladmin.message_user(request, f"{tenant.slug}: verification failed ({type(exc).__name__})",
                                    messages.ERROR)
            continue
        if report is None:
            modeladmin.message_user(request, f"{tenant.slug}: verification queued (task {task_id}); its report will be under "
                                             "Django Q, Successful tasks (or Failed tasks), or run "
                                             f"`manage.py verify_tenant {tenant.slug}`.", messages.INFO)
        elif not isinstance(report, dict):
            modeladmin.message_user(request, f"{tenant.slug}: verification failed.", messages.ERROR)
        elif report["ok"]:
            modeladmin.message_user(
                request, f"{tenant.slug}: verified in {report.get('place')}: {report['total_rows']} rows in "
                         f"{len(report['tables'])} tables, every table present, no foreign rows, sequences ok.",
                messages.SUCCESS)
        else:
            problems = report["problems"]
            modeladmin.message_user(
                request, f"{tenant.slug}: {len(problems)} problems: {'; '.join(problems[:5])}"
                         f"{' …' if len(problems) > 5 else ''}", messages.ERROR)


def _set_status(modeladmin, request, queryset, status):
    for tenant in queryset:
        try:
            services.set_status(tenant, status)
        except services.Refused as exc:
            report_refused(modeladmin, request, tenant, exc)
            continue
        modeladmin.message_user(request, f"{tenant.slug}: {Status(status).label.lower()}.", messages.SUCCESS)


@admin.action(description="Suspend", permissions=["change"])
def suspend(modeladmin, request, queryset):
    if confirmed(request):
        _set_status(modeladmin, request, queryset, Status.SUSPENDED)
        return None
    return confirmation_page(
        modeladmin, request, queryset, action="suspend", title="Suspend tenants",
        intro="Suspend the selected tenants?",
        items=[(t, f"{t.get_status_display()} → suspended") for t in queryset], submit="Yes, suspend",
        consequences=["Their site and API answer 503 (with Retry-After) and every write is refused until "
                      "they are reactivated.",
                      "Tenants being moved are refused: their status belongs to the run."])


@admin.action(description="Reactivate", permissions=["change"])
def reactivate(modeladmin, request, queryset):
    _set_status(modeladmin, request, queryset, Status.ACTIVE)


TENANT_ACTIONS = [move_to_schema, move_to_database, move_back_to_shared, retire_legacy, verify, suspend,
                  reactivate]
# tenancy.admin leaves TenantAdmin.actions empty for the apps that act on tenants.
TenantAdmin.actions = [*TenantAdmin.actions, *[a for a in TENANT_ACTIONS if a not in TenantAdmin.actions]]


# --- The tenant list: the run that owns a tenant now ----------------------------------------

RUN_FIELDS = ("status", "current_step", "online", "hold_cutover", "cancel_requested")


def active_run_json():
    """An expression: the tenant's queued or running run as a small JSON object, or NULL."""
    active = MigrationRun.objects.filter(tenant_id=OuterRef("pk"), status__in=ACTIVE_STATUSES).order_by()
    return Subquery(active.values(run=JSONObject(id="pk", **{f: f for f in RUN_FIELDS}))[:1])


@admin.display(description="current run")
def current_run(tenant):
    data = getattr(tenant, "active_run", None)
    if not data:
        return "—"
    run = MigrationRun(pk=data["id"], **{f: data[f] for f in RUN_FIELDS})
    return format_html('<a href="{}">run {}</a>: {}', run_url(run), run.pk, services.run_state(run))


def status_owner(tenant) -> str | None:
    run = services.active_run(tenant)
    return f"run {run.pk} is moving the tenant and manages its status" if run else None


TenantAdmin.list_annotations = {**TenantAdmin.list_annotations, "active_run": active_run_json}
if current_run not in TenantAdmin.list_display:
    at = TenantAdmin.list_display.index("status") + 1 if "status" in TenantAdmin.list_display else None
    TenantAdmin.list_display = [*TenantAdmin.list_display[:at], current_run, *TenantAdmin.list_display[at:]] \
        if at else [*TenantAdmin.list_display, current_run]
TenantAdmin.status_owner = status_owner
# Moves, moves back and retirements need tenancy.move_tenant, as in the API (has_move_permission).
TenantAdmin.has_move_permission = lambda self, request: request.user.has_perm("tenancy.move_tenant")


# --- The tenant list's "Candidates" page (migration_jobs.admin.candidates) -------------------

def _with_candidates_url(get_urls):
    def urls(self):
        view = self.admin_site.admin_view(lambda request: candidates_view(self, request))
        return [path("candidates/", view, name="tenancy_tenant_candidates"), *get_urls(self)]
    urls.adds_candidates = True
    return urls


if not getattr(TenantAdmin.get_urls, "adds_candidates", False):
    TenantAdmin.get_urls = _with_candidates_url(TenantAdmin.get_urls)
