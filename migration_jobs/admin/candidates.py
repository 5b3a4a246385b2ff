"""The tenant list's "Candidates" page (admin/tenancy/tenant/candidates/): the tenants that
should move, as `manage.py tenant_candidates` lists them, with checkboxes and "Plan moves for
selected" (to fleet's move plan form, `admin:fleet_moveplan_add?tenants=<ids>`, when it
exists). Seeing the page needs tenancy.view_tenant; the button, tenancy.move_tenant."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse

from migration_jobs.services import candidates as found
from migration_jobs.services.validation import is_id

TEMPLATE = "admin/migration_jobs/candidates.html"
PLAN_URL_NAME = "admin:fleet_moveplan_add"


def plan_url() -> str | None:
    """Where "Plan moves for selected" goes, or None while no app provides that page."""
    try:
        return reverse(PLAN_URL_NAME)
    except NoReverseMatch:
        return None


def candidates_view(modeladmin, request):
    if not modeladmin.has_view_permission(request):
        raise PermissionDenied
    may_plan = request.user.has_perm("tenancy.move_tenant")
    target = plan_url() if may_plan else None
    if "plan" in request.GET:
        if target is None:
            raise PermissionDenied
        ids = [value for value in request.GET.getlist("tenant") if is_id(value)]
        if ids:
            return HttpResponseRedirect(f"{target}?tenants={','.join(str(int(i)) for i in ids)}")
        modeladmin.message_user(request, "Select at least one tenant to plan moves for.", level="warning")
    exact = request.GET.get("exact") == "1"
    include_all = request.GET.get("all") == "1"
    items = found.candidates(exact=exact, include_all=include_all)
    rows = [{"c": c, "rows": None if c.rows is None else f"{'≈' if c.estimated else ''}{c.rows:,}",
             "size": None if c.size_bytes is None else f"{'≈' if c.estimated else ''}{found.human_bytes(c.size_bytes)}",
             "growth": found.human_growth(c),
             "change_url": reverse("admin:tenancy_tenant_change", args=[c.tenant.pk])} for c in items]
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Tenants that should move", "opts": opts, "app_label": opts.app_label,
        "rows": rows, "exact": exact, "include_all": include_all, "threshold": f"{found.threshold_rows():,}",
        "footnote": found.FOOTNOTE if any(c.estimated for c in items) else "",
        "plan_url": target, "should_move": sum(c.should_move for c in items),
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, TEMPLATE, context)
