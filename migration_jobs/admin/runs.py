"""Run history (read-only) and the actions on runs: resume or roll back interrupted runs, the
gradual read switch and the held cutover of an online move."""
from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect, JsonResponse
from django.urls import path, reverse
from django.utils.html import format_html

from migration_jobs import services
from migration_jobs.admin.common import (confirmation_page, confirmed, human_duration, human_time, link_runs,
                                         report_run, run_link)
from migration_jobs.admin.run_page import freeze_text, lag_text, live_json, run_page_context
from migration_jobs.models import MigrationRun, RunStatus
from migration_jobs.admin.health import run_health_context
from migration_jobs.services.validation import is_id
from tenancy.admin_mixins import ReadOnlyAdmin


def _read_share_action(percent: int):
    """The admin action that serves `percent` of a held online move's reads from its target."""
    @admin.action(description=f"Serve {percent}%% of reads from the target", permissions=["move"])
    def action(modeladmin, request, queryset):
        modeladmin._read_share(request, queryset, percent)

    action.__name__ = f"read_share_{percent}"
    return action


def _moment(field: str, description: str, sortable: bool = True):
    """A display of the run's datetime `field` to the second."""
    @admin.display(description=description, ordering=field if sortable else None)
    def display(modeladmin, run):
        return human_time(getattr(run, field))

    return display


# --- Run history --------------------------------------------------------------------------

class StaffViewOnly(ReadOnlyAdmin):
    """History: nobody adds, changes or deletes it here. Readable by active staff users with the
    model's view permission, as the API asks (migration_jobs.view_migrationrun,
    fleet.view_moveplan), or with tenancy.move_tenant (who starts a run or plan watches it)."""
    # An inline shows with its parent: the parent's view permission (app.codename) then.
    view_permission: str | None = None

    def has_view_permission(self, request, obj=None):
        user = request.user
        if not (user.is_active and user.is_staff):
            return False
        if user.has_perm("tenancy.move_tenant"):
            return True
        if self.view_permission:
            return user.has_perm(self.view_permission)
        return super().has_view_permission(request, obj)


@admin.register(MigrationRun)
class MigrationRunAdmin(StaffViewOnly, admin.ModelAdmin):
    # Rows copied are on the run page (and in the progress); when it was queued, in the date filter.
    list_display = ["id", "tenant", "kind", "move", "state", "progress", "run_duration", "writes_frozen", "rate",
                    "started", "finished"]
    list_display_links = ["id"]
    list_filter = ["status", "kind", "target_placement", "online", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["tenant__slug"]
    list_select_related = ["tenant"]
    # No inline: the page shows the steps as a timeline (admin/run_page.py), live.
    change_form_template = "admin/migration_jobs/migrationrun/change_form.html"
    actions = ["cancel_runs", "resume_runs", "roll_back_runs", "read_share_0", "read_share_10", "read_share_50",
               "read_share_100", "cut_over_now"]
    # The live header above shows status, step and figures as they change; the record below is
    # as of the page's load (it reloads once when the run ends), so its live parts are folded.
    fieldsets = [
        (None, {"fields": ["tenant", "kind", "move", "dry_run", "online", "error"]}),
        ("Target", {"fields": ["target_server", "target_database", "target_schema"], "classes": ["collapse"]}),
        ("Progress", {"fields": ["status", "current_step", "progress", "rows_total", "rows_copied", "bytes_copied",
                                 "rate"], "classes": ["collapse"]}),
        ("Freeze and catch-up", {"fields": ["writes_frozen", "freeze_ms", "freeze_started", "freeze_ended", "lag",
                                            "hold_cutover", "read_percent"], "classes": ["collapse"]}),
        ("Timing", {"fields": ["created", "started", "finished", "run_duration", "heartbeat", "worker"],
                    "classes": ["collapse"]}),
        ("Request", {"fields": ["requested_by", "requested_via", "previous_status", "cancel_requested"],
                     "classes": ["collapse"]}),
    ]
    readonly_fields = [name for _, section in fieldsets for name in section["fields"]]

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def has_move_permission(self, request):
        return request.user.has_perm("tenancy.move_tenant")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tenant", "target_server", "requested_by")

    # --- the run page: a live header, the controls that apply now, the steps, the report ---

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<int:run_id>/live/", self.admin_site.admin_view(self.live_view), name="%s_%s_live" % info),
            path("<int:run_id>/control/", self.admin_site.admin_view(self.control_view),
                 name="%s_%s_control" % info),
            *super().get_urls(),
        ]

    def live_view(self, request, run_id):
        """What the run page polls while the run is live, as JSON: the header's figures, the
        steps, the samples, the buttons that apply now, and the page's fragments."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        run = MigrationRun.objects.select_related("tenant").filter(pk=run_id).first()
        if run is None:
            raise Http404
        return JsonResponse(live_json(run, self.has_move_permission(request), request))

    def control_view(self, request, run_id):
        """The run page's buttons: cancel, cut over, read share, resume, roll back."""
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:migration_jobs_migrationrun_change", args=[run_id]))
        if not self.has_move_permission(request):
            raise PermissionDenied
        queryset = MigrationRun.objects.filter(pk=run_id)
        run = queryset.select_related("tenant").first()
        if run is None:
            raise Http404
        op = request.POST.get("op", "")
        if op == "cancel":
            self._cancel(request, run)
        elif op == "cut_over":
            self.cut_over_now(request, queryset)
        elif op.startswith("read_share_") and is_id(op[len("read_share_"):]):
            self._read_share(request, queryset, int(op[len("read_share_"):]))
        elif op in ("resume", "roll_back"):
            ok, skipped = self._interrupted(request, queryset, allow_queued=op == "roll_back")
            for skipped_run, why in skipped:
                self.message_user(request, format_html("{}: not done, {}.", run_link(skipped_run), why),
                                  messages.WARNING)
            if ok:
                post = request.POST.copy()
                post["confirm"] = "yes"
                request.POST = post
                (self.resume_runs if op == "resume" else self.roll_back_runs)(request, queryset)
        else:
            self.message_user(request, f"unknown action {op!r}", messages.ERROR)
        return HttpResponseRedirect(reverse("admin:migration_jobs_migrationrun_change", args=[run_id]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = MigrationRun.objects.select_related("tenant").filter(pk=object_id).first() \
            if is_id(object_id) else None
        if run is not None:
            extra_context = {**(extra_context or {}), **run_page_context(run, self.has_move_permission(request)),
                             "run_health": run_health_context(run)}  # health after the switch (or None)
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="move")
    def move(self, run):
        suffix = " (dry run)" if run.dry_run else " (online)" if run.online else ""
        return f"{run.source_placement} → {run.target_placement}{suffix}"

    @admin.display(description="progress")
    def progress(self, run):
        percent = run.progress_percent
        text = "—" if percent is None or run.dry_run else f"{percent:.0f}%"
        if run.online and run.current_step == "catch_up" and run.lag_changes is not None:
            text += f", lag {lag_text(run)}"
            if run.read_percent:
                text += f", {run.read_percent}% reads on target"
        return f"{text} ({run.current_step})" if run.current_step else text

    @admin.display(description="writes frozen", ordering="writes_refused_seconds")
    def writes_frozen(self, run):
        return services.human_refusal(services.writes_refused(run), "—")

    @admin.display(description="cutover freeze")
    def freeze_ms(self, run):
        return freeze_text(run)

    @admin.display(description="lag")
    def lag(self, run):
        return lag_text(run)

    # Moments to the second (the admin's own date format has none).
    created, started, finished = (_moment(f"{name}_at", name) for name in ("created", "started", "finished"))
    heartbeat = _moment("heartbeat_at", "heartbeat", sortable=False)
    freeze_started = _moment("freeze_started_at", "freeze started", sortable=False)
    freeze_ended = _moment("freeze_ended_at", "freeze ended", sortable=False)

    @admin.display(description="state", ordering="status")
    def state(self, run):
        return services.run_state(run)

    @admin.display(description="duration")
    def run_duration(self, run):
        return human_duration(run.duration)

    @admin.display(description="rows/s", ordering="rows_per_second")
    def rate(self, run):
        return f"{run.rows_per_second:,.0f}" if run.rows_per_second else "—"

    # --- interrupted runs ---

    def _interrupted(self, request, queryset, *, allow_queued: bool, finishing: bool = False):
        """Split the selection into (runs that can be acted on, [(run, why not)])."""
        return services.interrupted_runs(queryset.select_related("tenant"), allow_queued=allow_queued,
                                         finishing=finishing)

    def _confirm_runs(self, request, queryset, *, action, title, intro, consequences, submit, allow_queued,
                      finishing=False):
        ok, skipped = self._interrupted(request, queryset, allow_queued=allow_queued, finishing=finishing)
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
                consequences=["Only runs left running by a worker that is gone, or that failed after their "
                              "cutover (the resume finishes them), can be resumed; others are skipped."],
                allow_queued=False, finishing=True)
        ok, skipped = self._interrupted(request, queryset, allow_queued=False, finishing=True)
        for run, why in skipped:
            self.message_user(request, format_html("{}: not resumed, {}.", run_link(run), why), messages.WARNING)
        for run in ok:
            services.enqueue(run, resume=True)
            report_run(self, request, run.tenant, run)
        return None

    # --- cancel ---

    @staticmethod
    def _cancellable(queryset):
        """(runs that can be cancelled now, [(run, why not)])."""
        ok, skipped = [], []
        for run in queryset.select_related("tenant"):
            why = services.why_not_cancel(run)
            (skipped.append((run, why)) if why else ok.append(run))
        return ok, skipped

    def _cancel(self, request, run) -> None:
        try:
            run = services.cancel(run)
        except services.Refused as exc:
            self.message_user(request, format_html("{}: not cancelled: {}", run_link(run), link_runs(exc)),
                              messages.ERROR)
            return
        if run.is_active:
            self.message_user(request, format_html(
                "{}: cancel requested; its worker rolls it back at the next safe point (now at {}).",
                run_link(run), run.current_step or "start"), messages.INFO)
        else:
            self.message_user(request, format_html("{}: {} ({} stays in {}).", run_link(run),
                                                   run.get_status_display().lower(), run.tenant.slug,
                                                   run.tenant.placement),
                              messages.SUCCESS if run.status == RunStatus.CANCELLED else messages.ERROR)

    @admin.action(description="Cancel runs (queued, running or held)", permissions=["move"])
    def cancel_runs(self, request, queryset):
        if not confirmed(request):
            ok, skipped = self._cancellable(queryset)
            items = [(run, f"{run.tenant.slug}: {run.source_placement} → {run.target_placement}, "
                           f"{self.state(run)}") for run in ok]
            items += [(run, f"{run.tenant.slug}: cannot be cancelled: {why}") for run, why in skipped]
            return confirmation_page(
                self, request, queryset, action="cancel_runs", title="Cancel runs",
                intro="Cancel the selected runs?", items=items, submit="Yes, cancel",
                consequences=["A queued run is cancelled at once; it will not start.",
                              "A running or held run stops at its next safe point (between steps, after a "
                              "copied table or a catch-up round) and is rolled back: the tenant stays where it "
                              "was, writable, and the target is dropped.",
                              "A run that has begun its cutover cannot be cancelled."])
        for run in queryset.select_related("tenant"):
            self._cancel(request, run)
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
        ok, skipped = self._interrupted(request, queryset, allow_queued=True)
        for run, why in skipped:
            self.message_user(request, format_html("{}: not rolled back, {}.", run_link(run), why),
                              messages.WARNING)
        for run in ok:
            if run.status == RunStatus.QUEUED:  # at once, before its queued task can start it
                self._cancel(request, run)
                continue
            try:
                services.enqueue_rollback(run)
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
                self.message_user(request, format_html("{}: {}", run_link(run), link_runs(exc)), messages.ERROR)
                continue
            self.message_user(request, format_html(
                "{}: {}% of {}'s read-only requests now served from its {} (cutover held until released).",
                run_link(run), percent, run.tenant.slug, run.target_placement), messages.SUCCESS)

    read_share_0, read_share_10, read_share_50, read_share_100 = map(_read_share_action, services.READ_SHARES)

    @admin.action(description="Cut over now (release a held online move)", permissions=["move"])
    def cut_over_now(self, request, queryset):
        for run in queryset.select_related("tenant"):
            try:
                services.release_cutover(run)
            except services.Refused as exc:
                self.message_user(request, format_html("{}: {}", run_link(run), link_runs(exc)), messages.ERROR)
                continue
            self.message_user(request, format_html("{}: cutover released; it happens at the next catch-up round.",
                                                   run_link(run)), messages.SUCCESS)
