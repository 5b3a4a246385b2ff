"""The plans' admin: the plan list, a plan's page (done / running / waiting / failed, rows
moved, rate, ETA, its items, buttons), the add form (with a preview of the estimate; `?tenants=
1,2,3` prefills it) and start / pause / resume / cancel with confirmation pages. The tenant
list gets "Plan moves for selected tenants", which opens the add form. Everything that decides
is fleet.services; acting needs tenancy.move_tenant, reading is for staff."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import F, Func, OuterRef, Subquery
from django.http import Http404, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode

from fleet import services
from fleet.models import OPEN_ITEM_STATUSES, ItemStatus, MovePlan, MovePlanItem, OnFailure, Order, PlanStatus, Selection
from migration_jobs.admin.common import confirmation_page, confirmed, human_duration, run_link
from migration_jobs.admin.runs import StaffViewOnly  # history: read with the view permission
from migration_jobs.services.validation import is_id
from tenancy.admin import TenantAdmin
from tenancy.models import DatabaseServer, Tenant

MOVE_PERMISSION = "tenancy.move_tenant"


def can_move(request) -> bool:
    return request.user.has_perm(MOVE_PERMISSION)


class MovePlanItemInline(StaffViewOnly, admin.TabularInline):
    model = MovePlanItem
    view_permission = "fleet.view_moveplan"
    extra = 0
    can_delete = False
    fields = ["position", "tenant", "rows", "estimate", "status", "run_link", "started_at", "finished_at", "error"]
    readonly_fields = fields
    ordering = ["position"]

    @admin.display(description="estimate")
    def estimate(self, item):
        return human_duration(item.estimate_seconds)

    @admin.display(description="run")
    def run_link(self, item):
        return run_link(item.run) if item.run_id else "—"


class PlanForm(forms.Form):
    name = forms.CharField(required=False, max_length=200, help_text="Optional; made from the plan otherwise.")
    selection = forms.ChoiceField(choices=Selection.choices, initial=Selection.CHOSEN)
    tenants = forms.ModelMultipleChoiceField(Tenant.objects.order_by("slug"), required=False,
                                             widget=forms.SelectMultiple(attrs={"size": 12}),
                                             help_text="For \"chosen tenants\" only.")
    target = forms.ChoiceField(choices=[("database", "Dedicated database"), ("schema", "Dedicated schema")])
    servers = forms.ModelMultipleChoiceField(DatabaseServer.objects.order_by("name"), required=False,
                                             help_text="Database targets: several spread the tenants, least loaded "
                                                       "first; none: the default server.")
    online = forms.BooleanField(required=False, initial=True,
                                help_text="Keep each tenant writable during its copy (short cutover freeze).")
    # Bounded by the plan's column: a bigger number is a form error, not a failed save.
    max_parallel = forms.IntegerField(initial=1, label="Moves at once",
                                      validators=MovePlan._meta.get_field("max_parallel").validators)
    order = forms.ChoiceField(choices=Order.choices, initial=Order.BIGGEST_FIRST)
    window_start = forms.DateTimeField(required=False, help_text="UTC, e.g. 2026-12-05 22:00. Empty: at once.")
    window_end = forms.DateTimeField(required=False, help_text="No move starts that would not finish by then.")
    on_failure = forms.ChoiceField(choices=OnFailure.choices, initial=OnFailure.STOP)
    start = forms.BooleanField(required=False, initial=False, label="Start now",
                               help_text="Otherwise the plan is saved as a draft, started from its page.")

    def options(self) -> dict:
        data = dict(self.cleaned_data)
        data.pop("start")
        data["tenants"] = list(data["tenants"])
        data["servers"] = list(data["servers"])
        return data


@admin.register(MovePlan)
class MovePlanAdmin(StaffViewOnly, admin.ModelAdmin):
    list_display = ["id", "name", "status", "progress", "target", "online", "max_parallel", "window",
                    "created_by", "created_at"]
    list_display_links = ["id", "name"]
    list_filter = ["status", "target", "online"]
    inlines = [MovePlanItemInline]
    actions = ["start_plans", "pause_plans", "resume_plans", "cancel_plans"]
    change_form_template = "admin/fleet/moveplan/change_form.html"
    fields = ["name", "status", "selection", "target", "servers", "online", "max_parallel", "order", "window_start",
              "window_end", "on_failure", "error", "created_by", "created_at", "started_at", "finished_at"]
    readonly_fields = fields

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def has_add_permission(self, request):
        return can_move(request)

    def has_move_permission(self, request):
        return can_move(request)

    def get_queryset(self, request):
        # The list's progress column in the page's one query.
        items = MovePlanItem.objects.filter(plan=OuterRef("pk")).order_by().values("plan")
        count = Func(F("pk"), function="COUNT")
        return super().get_queryset(request).select_related("created_by").annotate(
            n_items=Subquery(items.annotate(n=count).values("n")),
            n_finished=Subquery(items.exclude(status__in=OPEN_ITEM_STATUSES).annotate(n=count).values("n")),
            n_failed=Subquery(items.filter(status=ItemStatus.FAILED).annotate(n=count).values("n")))

    @admin.display(description="progress")
    def progress(self, plan):
        text = f"[{plan.n_finished or 0}/{plan.n_items or 0}]"
        return f"{text} {plan.n_failed} failed" if plan.n_failed else text

    @admin.display(description="window")
    def window(self, plan):
        if not (plan.window_start or plan.window_end):
            return "—"
        return f"{services.human_time(plan.window_start)} .. {services.human_time(plan.window_end)}"

    # --- the plan page ---

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [path("<int:plan_id>/live/", self.admin_site.admin_view(self.live_view), name="%s_%s_live" % info),
                *super().get_urls()]

    def live_view(self, request, plan_id):
        if not self.has_view_permission(request):
            raise PermissionDenied
        plan = MovePlan.objects.filter(pk=plan_id).first()
        if plan is None:
            raise Http404
        return JsonResponse(plan_figures(plan))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        plan = MovePlan.objects.filter(pk=object_id).first() if is_id(object_id) else None
        if plan is not None:
            extra_context = {**(extra_context or {}), "plan_page": plan_figures(plan),
                             "plan_actions": plan_actions(plan) if can_move(request) else [],
                             "changelist_url": reverse("admin:fleet_moveplan_changelist")}
        return super().change_view(request, object_id, form_url, extra_context)

    # --- the add form: through fleet.services, with a preview ---

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        draft = None
        if request.method == "POST":
            form = PlanForm(request.POST)
            if form.is_valid():
                try:
                    if "_preview" in request.POST:
                        draft = services.check_plan(**form.options())
                    else:
                        plan = services.create_plan(**form.options(), created_by=request.user,
                                                    start=form.cleaned_data["start"])
                        self.message_user(request, f"plan {plan.pk} created ({plan.status}): {plan.name}.",
                                          messages.SUCCESS)
                        return HttpResponseRedirect(reverse("admin:fleet_moveplan_change", args=[plan.pk]))
                except services.Refused as exc:
                    form.add_error(None, str(exc))
        else:
            ids = [part for part in request.GET.get("tenants", "").split(",") if is_id(part)]
            form = PlanForm(initial={"tenants": list(Tenant.objects.filter(pk__in=ids))} if ids else None)
        context = {**self.admin_site.each_context(request), "title": "Plan moves", "form": form, "draft": draft,
                   "draft_rows": [(i.tenant.slug, i.rows, human_duration(i.seconds)) for i in draft.items]
                   if draft else [],
                   "draft_total": f"{len(draft.items)} tenants, {draft.total_rows:,} rows, "
                                  f"{human_duration(draft.serial_seconds)} one at a time, "
                                  f"~{human_duration(draft.wall_seconds)} with {draft.max_parallel} at once; rate: "
                                  f"{draft.rate.describe()}" if draft else "",
                   "opts": self.opts, "app_label": self.opts.app_label, "has_view_permission": True,
                   "media": self.media + form.media}
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/fleet/moveplan/add_form.html", context)

    # --- actions (the plan page's buttons post them too) ---

    def _act(self, request, queryset, *, action, verb, do, title, intro, consequences):
        if not confirmed(request):
            items = [(plan, f"{plan.status}, {services.progress(plan)['progress']} finished") for plan in queryset]
            return confirmation_page(self, request, queryset, action=action, title=title, intro=intro,
                                     items=items, consequences=consequences, submit=f"Yes, {verb}")
        for plan in queryset:
            try:
                plan = do(plan)
            except services.Refused as exc:
                self.message_user(request, f"plan {plan.pk}: not done: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"plan {plan.pk}: {verb} done; now {plan.status}.", messages.SUCCESS)
        if queryset.count() == 1:
            return HttpResponseRedirect(reverse("admin:fleet_moveplan_change", args=[queryset.first().pk]))
        return None

    @admin.action(description="Start selected plans", permissions=["move"])
    def start_plans(self, request, queryset):
        return self._act(request, queryset, action="start_plans", verb="start", do=services.start_plan,
                         title="Start plans", intro="Start the selected plans?", consequences=[
                             "Each plan waits for its window to open, then moves its tenants in order, never "
                             "more at once than its limit.",
                             "Every tenant with a contact address is told by e-mail when its move happens."])

    @admin.action(description="Pause selected plans", permissions=["move"])
    def pause_plans(self, request, queryset):
        return self._act(request, queryset, action="pause_plans", verb="pause", do=services.pause,
                         title="Pause plans", intro="Pause the selected plans?", consequences=[
                             "No new move starts; the moves running now finish."])

    @admin.action(description="Resume selected plans", permissions=["move"])
    def resume_plans(self, request, queryset):
        return self._act(request, queryset, action="resume_plans", verb="resume", do=services.resume,
                         title="Resume plans", intro="Resume the selected plans?", consequences=[
                             "The next moves start, within the window and the limit."])

    @admin.action(description="Cancel selected plans", permissions=["move"])
    def cancel_plans(self, request, queryset):
        return self._act(request, queryset, action="cancel_plans", verb="cancel", do=services.cancel,
                         title="Cancel plans", intro="Cancel the selected plans?", consequences=[
                             "No new move starts; the tenants waiting stay where they are.",
                             "Running moves stop at their next safe point and are rolled back: their tenants stay "
                             "in the shared database, writable. A move already past its cutover finishes."])


PLAN_ACTIONS = {"start_plans": ("Start", (PlanStatus.DRAFT,)),
                "pause_plans": ("Pause", (PlanStatus.SCHEDULED, PlanStatus.RUNNING)),
                "resume_plans": ("Resume", (PlanStatus.PAUSED,)),
                "cancel_plans": ("Cancel", (PlanStatus.DRAFT, PlanStatus.SCHEDULED, PlanStatus.RUNNING,
                                            PlanStatus.PAUSED))}


def plan_actions(plan: MovePlan) -> list[tuple[str, str]]:
    """(action, label) of the buttons that apply to the plan now."""
    return [(action, label) for action, (label, statuses) in PLAN_ACTIONS.items() if plan.status in statuses]


def plan_figures(plan: MovePlan) -> dict:
    """The plan page's header, as plain data (also its JSON for the live refresh)."""
    figures = services.progress(plan)
    rate = figures["rows_per_second"]
    return {**figures, "live": plan.status in (PlanStatus.SCHEDULED, PlanStatus.RUNNING, PlanStatus.PAUSED,
                                               PlanStatus.CANCELLING),
            "rate": f"{rate:,.0f} rows/s" if rate else "—",
            "eta": human_duration(figures["eta_seconds"]) if figures["eta_seconds"] is not None else "—",
            "rows": f"{figures['rows_moved']:,} of {figures['rows_to_move']:,}"}


# --- The tenant list: "Plan moves for selected tenants" ---------------------------------------

@admin.action(description="Plan moves for selected tenants", permissions=["move"])
def plan_moves_for_selected(modeladmin, request, queryset):
    ids = ",".join(str(pk) for pk in queryset.order_by("slug").values_list("pk", flat=True))
    return HttpResponseRedirect(f"{reverse('admin:fleet_moveplan_add')}?{urlencode({'tenants': ids})}")


# tenancy.admin leaves TenantAdmin.actions to the apps that act on tenants (as migration_jobs does).
if plan_moves_for_selected not in TenantAdmin.actions:
    TenantAdmin.actions = [*TenantAdmin.actions, plan_moves_for_selected]
if not hasattr(TenantAdmin, "has_move_permission"):
    TenantAdmin.has_move_permission = lambda self, request: can_move(request)
