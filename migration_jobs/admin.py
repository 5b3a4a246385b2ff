"""Staff admin of tenant moves.

- Actions on the tenant list (appended to tenancy.admin.TenantAdmin.actions, which is left
  empty for this): move to a dedicated schema / database, move back to shared, verify,
  suspend, reactivate. Moves and suspension go through a confirmation page first (like
  Django's delete confirmation); on `confirm=yes` the request goes to migration_jobs.services
  (which refuses bad requests, one tenant at a time, changing nothing) and the run is handed
  to django-q2. The user gets a link to each new run.
- Run history (MigrationRun) is read-only: nobody adds, edits or deletes a run here. Its
  page shows the steps and the report; interrupted runs can be resumed or rolled back.

Nothing secret is rendered: runs and steps hold none, and credential objects are never shown.
"""
from __future__ import annotations

import json

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from migration_jobs import services
from migration_jobs.models import MigrationRun, MigrationStep, RunStatus
from migration_jobs.runs.executor import lock_is_free
from tenancy.admin import TenantAdmin
from tenancy.admin_mixins import ReadOnlyAdmin
from tenancy.models import DatabaseServer, Placement, Status

CONFIRM_TEMPLATE = "admin/migration_jobs/confirm_action.html"


# --- Small display helpers ----------------------------------------------------------------

def human_duration(value) -> str:
    if value is None:
        return "—"
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def run_url(run: MigrationRun) -> str:
    return reverse("admin:migration_jobs_migrationrun_change", args=[run.pk])


def run_link(run: MigrationRun):
    return format_html('<a href="{}">run {}</a>', run_url(run), run.pk)


LEVELS = {RunStatus.SUCCEEDED: messages.SUCCESS, RunStatus.QUEUED: messages.INFO, RunStatus.RUNNING: messages.INFO,
          RunStatus.CANCELLED: messages.WARNING}


def confirmed(request) -> bool:
    return request.method == "POST" and request.POST.get("confirm") == "yes"


def online_requested(request) -> bool:
    return request.POST.get("online") == "yes"


def hold_requested(request) -> bool:
    return request.POST.get("hold_cutover") == "yes"


def confirmation_page(modeladmin, request, queryset, *, action: str, title: str, intro: str, items,
                      consequences=(), servers=None, offer_online: bool = False, offer_hold: bool = False,
                      submit: str = "Yes, go ahead"):
    """An intermediate page that posts the same action and selection back with confirm=yes."""
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title, "intro": intro, "consequences": consequences, "items": items,
        "queryset": queryset, "action": action, "servers": servers, "offer_online": offer_online, "offer_hold": offer_hold,
        "submit": submit,
        "opts": opts, "app_label": opts.app_label, "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media,
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, CONFIRM_TEMPLATE, context)


def _report_run(modeladmin, request, tenant, run: MigrationRun, task_id=None) -> None:
    run.refresh_from_db()
    what = f"{run.source_placement} → {run.target_placement}"
    if run.status in (RunStatus.QUEUED, RunStatus.RUNNING):
        note = "queued for the task cluster" if run.status == RunStatus.QUEUED else "running"
        text = format_html("{}: {} ({}) {}.", tenant.slug, run_link(run), what, note)
    elif run.status == RunStatus.SUCCEEDED:
        text = format_html("{}: {} ({}) succeeded.", tenant.slug, run_link(run), what)
    else:
        text = format_html("{}: {} ({}) {}: {}", tenant.slug, run_link(run), what,
                           run.get_status_display().lower(), run.error.splitlines()[0][:300] if run.error else "")
    modeladmin.message_user(request, text, LEVELS.get(run.status, messages.ERROR))


def _refused(modeladmin, request, tenant, exc) -> None:
    modeladmin.message_user(request, f"{tenant.slug}: refused: {exc}", messages.ERROR)


# --- Tenant actions -----------------------------------------------------------------------

MOVE_STEPS_TEXT = ("Each tenant is checked first (preflight); then it is frozen (writes are refused for the "
                   "duration, reads go on; with \"online\" only for a short measured cutover), exported to a "
                   "backup file, copied, verified table by table (row counts and checksums, and no other "
                   "tenant's rows), switched to its new place and reactivated. Any failure rolls the run back "
                   "and leaves the tenant where it is.")


def _move(modeladmin, request, queryset, target: str):
    action = f"move_to_{target}"
    if confirmed(request):
        server_name = (request.POST.get("server") or None) if target == Placement.DATABASE else None
        for tenant in queryset:
            try:
                run = services.request_move(tenant, target, server_name=server_name, online=online_requested(request),
                                            hold_cutover=hold_requested(request), requested_by=request.user,
                                            via="admin")
            except services.Refused as exc:
                _refused(modeladmin, request, tenant, exc)
                continue
            services.enqueue(run)
            _report_run(modeladmin, request, tenant, run)
        return None
    servers = None
    if target == Placement.SCHEMA:
        items = [(t, f"{t.get_placement_display()}, {t.get_status_display().lower()} → schema {t.schema_name}")
                 for t in queryset]
        where = "its own schema (tenant_<slug>) in the shared database"
    else:
        from tenancy.servers import ensure_default_server

        default = ensure_default_server()
        servers = [(s.name, f"{s.name} ({s.host}:{s.port})", s.pk == default.pk)
                   for s in DatabaseServer.objects.order_by("-is_default", "name")]
        items = [(t, f"{t.get_placement_display()}, {t.get_status_display().lower()} → database "
                     f"{t.database_name}") for t in queryset]
        where = "its own database, with its own login role, on the server chosen below"
    return confirmation_page(
        modeladmin, request, queryset, action=action, title=f"Move tenants to a dedicated {target}",
        intro=f"Move the selected tenants out of the shared database into {where}?",
        items=items, servers=servers, offer_online=True, offer_hold=True, submit=f"Yes, move to a dedicated {target}",
        consequences=[MOVE_STEPS_TEXT,
                      "The copied rows stay in the shared tables (legacy rows) until they are retired.",
                      "Tenants already in a dedicated place, suspended or being moved are refused."])


@admin.action(description="Move to dedicated schema", permissions=["change"])
def move_to_schema(modeladmin, request, queryset):
    return _move(modeladmin, request, queryset, Placement.SCHEMA)


@admin.action(description="Move to dedicated database", permissions=["change"])
def move_to_database(modeladmin, request, queryset):
    return _move(modeladmin, request, queryset, Placement.DATABASE)


@admin.action(description="Move back to shared", permissions=["change"])
def move_back_to_shared(modeladmin, request, queryset):
    if confirmed(request):
        for tenant in queryset:
            try:
                run = services.request_move_back(tenant, online=online_requested(request), requested_by=request.user,
                                                 via="admin")
            except services.Refused as exc:
                _refused(modeladmin, request, tenant, exc)
                continue
            services.enqueue(run)
            _report_run(modeladmin, request, tenant, run)
        return None
    return confirmation_page(
        modeladmin, request, queryset, action="move_back_to_shared", title="Move tenants back to shared",
        intro="Move the selected tenants from their dedicated schema or database back into the shared tables?",
        items=[(t, f"{t.get_placement_display()}, {t.get_status_display().lower()} → shared database")
               for t in queryset],
        submit="Yes, move back to shared", offer_online=True,
        consequences=["Preflight refuses the move if any of the tenant's keys is used by another tenant's row "
                      "in the shared tables (nothing is written then).",
                      "The tenant is read-only during the move; its legacy rows in the shared tables are "
                      "replaced and every row is copied back in one transaction, verified before commit.",
                      "The dedicated schema or database is kept (not dropped).",
                      "Tenants already in shared placement are refused."])


@admin.action(description="Retire legacy rows", permissions=["change"])
def retire_legacy(modeladmin, request, queryset):
    if confirmed(request):
        for tenant in queryset:
            try:
                run = services.request_retire(tenant, requested_by=request.user, via="admin")
            except services.Refused as exc:
                _refused(modeladmin, request, tenant, exc)
                continue
            services.enqueue(run)
            _report_run(modeladmin, request, tenant, run)
        return None
    return confirmation_page(
        modeladmin, request, queryset, action="retire_legacy", title="Retire legacy rows",
        intro="Delete the selected tenants' old rows from the shared tables?",
        items=[(t, f"{t.get_placement_display()}: legacy rows in the shared tables") for t in queryset],
        submit="Yes, retire the legacy rows",
        consequences=["The dedicated copy is verified first; then the legacy rows are archived to a file and "
                      "deleted in small batches (other tenants are not locked out).",
                      "Refused before TENANT_LEGACY_GRACE_DAYS have passed since the move, and for tenants "
                      "in shared placement.",
                      "Afterwards a move back copies every row again from the dedicated place."])


@admin.action(description="Verify", permissions=["view"])
def verify(modeladmin, request, queryset):
    from django_q.tasks import async_task, result

    for tenant in queryset:
        try:
            task_id = async_task("migration_jobs.tasks.verify_tenant", tenant.pk,
                                 task_name=f"tenant-verify-{tenant.pk}", group="tenant-verify")
        except Exception as exc:  # noqa: BLE001 - sync mode raises the task's own error here
            modeladmin.message_user(request, f"{tenant.slug}: verification failed ({type(exc).__name__})",
                                    messages.ERROR)
            continue
        report = result(task_id)
        if report is None:
            modeladmin.message_user(request, f"{tenant.slug}: verification queued (task {task_id}).", messages.INFO)
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
            _refused(modeladmin, request, tenant, exc)
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


# --- Run history --------------------------------------------------------------------------

class StaffViewOnly(ReadOnlyAdmin):
    """Readable by any active staff user; nobody adds, changes or deletes history here."""

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff


class MigrationStepInline(StaffViewOnly, admin.TabularInline):
    model = MigrationStep
    extra = 0
    can_delete = False
    ordering = ["order"]
    fields = ["order", "name", "status", "started_at", "finished_at", "step_duration", "rows", "message"]
    readonly_fields = fields
    show_change_link = False

    @admin.display(description="duration")
    def step_duration(self, step):
        return human_duration(step.duration)


@admin.register(MigrationRun)
class MigrationRunAdmin(StaffViewOnly, admin.ModelAdmin):
    list_display = ["id", "tenant", "kind", "move", "status", "progress", "run_duration", "rows_copied",
                    "rate", "created_at"]
    list_display_links = ["id"]
    list_filter = ["status", "kind", "target_placement", "online", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["tenant__slug"]
    list_select_related = ["tenant"]
    inlines = [MigrationStepInline]
    actions = ["resume_runs", "roll_back_runs", "read_share_0", "read_share_10", "read_share_50", "read_share_100",
               "cut_over_now"]
    fieldsets = [
        (None, {"fields": ["tenant", "kind", "move", "status", "current_step", "dry_run", "online", "error"]}),
        ("Target", {"fields": ["target_server", "target_database", "target_schema"]}),
        ("Progress", {"fields": ["progress", "rows_total", "rows_copied", "bytes_copied", "rate"]}),
        ("Freeze and catch-up", {"fields": ["freeze_seconds", "freeze_started_at", "freeze_ended_at", "lag_changes",
                                            "lag_seconds", "hold_cutover", "read_percent"]}),
        ("Timing", {"fields": ["created_at", "started_at", "finished_at", "run_duration", "heartbeat_at",
                               "worker"]}),
        ("Request", {"fields": ["requested_by", "requested_via", "previous_status"]}),
        ("Report", {"fields": ["pretty_report"]}),
    ]
    readonly_fields = [name for _, section in fieldsets for name in section["fields"]]

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff

    def has_move_permission(self, request):
        return request.user.has_perm("tenancy.change_tenant")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tenant", "target_server", "requested_by")

    @admin.display(description="move")
    def move(self, run):
        suffix = " (dry run)" if run.dry_run else " (online)" if run.online else ""
        return f"{run.source_placement} → {run.target_placement}{suffix}"

    @admin.display(description="progress")
    def progress(self, run):
        percent = run.progress_percent
        text = "—" if percent is None or run.dry_run else f"{percent:.0f}%"
        if run.online and run.current_step == "catch_up" and run.lag_changes is not None:
            text += f", lag {run.lag_changes} changes / {run.lag_seconds or 0:.1f}s"
            if run.read_percent:
                text += f", {run.read_percent}% reads on target"
        return f"{text} ({run.current_step})" if run.current_step else text

    @admin.display(description="duration")
    def run_duration(self, run):
        return human_duration(run.duration)

    @admin.display(description="rows/s", ordering="rows_per_second")
    def rate(self, run):
        return f"{run.rows_per_second:,.0f}" if run.rows_per_second else "—"

    @admin.display(description="report")
    def pretty_report(self, run):
        if not run.report:
            return "—"
        return format_html('<pre style="white-space: pre-wrap; max-height: 40em; overflow: auto">{}</pre>',
                           json.dumps(run.report, indent=2, sort_keys=True, default=str))

    # --- interrupted runs ---

    def _interrupted(self, request, queryset, *, allow_queued: bool):
        """Split the selection into (runs that can be acted on, [(run, why not)])."""
        ok, skipped = [], []
        statuses = [RunStatus.RUNNING, RunStatus.QUEUED] if allow_queued else [RunStatus.RUNNING]
        for run in queryset.select_related("tenant"):
            if run.status not in statuses:
                skipped.append((run, f"it is {run.get_status_display().lower()}"))
            elif run.status == RunStatus.RUNNING and not lock_is_free(run.pk):
                skipped.append((run, "a live worker is still executing it"))
            else:
                ok.append(run)
        return ok, skipped

    def _confirm_runs(self, request, queryset, *, action, title, intro, consequences, submit, allow_queued):
        ok, skipped = self._interrupted(request, queryset, allow_queued=allow_queued)
        items = [(run, f"{run.tenant.slug}: {run.source_placement} → {run.target_placement}, {run.status}"
                       f"{f' at {run.current_step}' if run.current_step else ''}") for run in ok]
        items += [(run, f"{run.tenant.slug}: skipped, {why}") for run, why in skipped]
        return confirmation_page(self, request, queryset, action=action, title=title, intro=intro, items=items,
                                 consequences=consequences, submit=submit)

    @admin.action(description="Resume interrupted runs", permissions=["move"])
    def resume_runs(self, request, queryset):
        if not confirmed(request):
            return self._confirm_runs(
                request, queryset, action="resume_runs", title="Resume interrupted runs",
                intro="Resume the selected runs from their first unfinished step?", submit="Yes, resume",
                consequences=["Only runs left running by a worker that is gone can be resumed; others are "
                              "skipped."], allow_queued=False)
        ok, skipped = self._interrupted(request, queryset, allow_queued=False)
        for run, why in skipped:
            self.message_user(request, format_html("{}: not resumed, {}.", run_link(run), why), messages.WARNING)
        for run in ok:
            services.enqueue(run, resume=True)
            _report_run(self, request, run.tenant, run)
        return None

    @admin.action(description="Roll back interrupted runs", permissions=["move"])
    def roll_back_runs(self, request, queryset):
        if not confirmed(request):
            return self._confirm_runs(
                request, queryset, action="roll_back_runs", title="Roll back interrupted runs",
                intro="Undo what the selected runs did, newest step first?", submit="Yes, roll back",
                consequences=["Queued runs are cancelled; runs whose worker is gone are rolled back (the target "
                              "is dropped unless the tenant already lives there, its status restored).",
                              "Runs still executed by a live worker, and finished runs, are skipped."],
                allow_queued=True)
        from django_q.tasks import async_task

        ok, skipped = self._interrupted(request, queryset, allow_queued=True)
        for run, why in skipped:
            self.message_user(request, format_html("{}: not rolled back, {}.", run_link(run), why),
                              messages.WARNING)
        for run in ok:
            try:
                async_task("migration_jobs.tasks.rollback_run", run.pk, task_name=f"tenant-move-run-{run.pk}-rollback",
                           group="tenant-moves")
            except Exception as exc:  # noqa: BLE001 - sync mode raises the task's error here
                self.message_user(request, format_html("{}: roll back failed ({}).", run_link(run),
                                                       type(exc).__name__), messages.ERROR)
                continue
            run.refresh_from_db()
            level = messages.SUCCESS if run.status in (RunStatus.ROLLED_BACK, RunStatus.CANCELLED) else (
                messages.INFO if run.is_active else messages.ERROR)
            note = "roll back queued" if run.is_active else run.get_status_display().lower()
            self.message_user(request, format_html("{}: {} ({}): {}.", run.tenant.slug, run_link(run), note,
                                                   run.tenant.placement), level)
        return None

    # --- online moves: the gradual read switch and the held cutover ---

    def _read_share(self, request, queryset, percent: int):
        for run in queryset.select_related("tenant"):
            try:
                services.set_read_share(run, percent)
            except services.Refused as exc:
                self.message_user(request, format_html("{}: {}", run_link(run), str(exc)), messages.ERROR)
                continue
            self.message_user(request, format_html(
                "{}: {}% of {}'s read-only requests now served from its {} (cutover held until released).",
                run_link(run), percent, run.tenant.slug, run.target_placement), messages.SUCCESS)

    @admin.action(description="Serve 0%% of reads from the target", permissions=["move"])
    def read_share_0(self, request, queryset):
        self._read_share(request, queryset, 0)

    @admin.action(description="Serve 10%% of reads from the target", permissions=["move"])
    def read_share_10(self, request, queryset):
        self._read_share(request, queryset, 10)

    @admin.action(description="Serve 50%% of reads from the target", permissions=["move"])
    def read_share_50(self, request, queryset):
        self._read_share(request, queryset, 50)

    @admin.action(description="Serve 100%% of reads from the target", permissions=["move"])
    def read_share_100(self, request, queryset):
        self._read_share(request, queryset, 100)

    @admin.action(description="Cut over now (release a held online move)", permissions=["move"])
    def cut_over_now(self, request, queryset):
        for run in queryset.select_related("tenant"):
            try:
                services.release_cutover(run)
            except services.Refused as exc:
                self.message_user(request, format_html("{}: {}", run_link(run), str(exc)), messages.ERROR)
                continue
            self.message_user(request, format_html("{}: cutover released; it happens at the next catch-up round.",
                                                   run_link(run)), messages.SUCCESS)


__all__ = ["MigrationRunAdmin", "MigrationStepInline", "TENANT_ACTIONS"]
