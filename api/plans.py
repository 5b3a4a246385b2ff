"""Fleet routes of the staff API: the tenants that should move, and move plans (create, read,
start, pause, resume, cancel). Thin over migration_jobs.services.candidates and fleet.services,
as the admin and the commands are; the same permissions as the admin (acting on plans needs
tenancy.move_tenant)."""
from __future__ import annotations

from django.http import JsonResponse
from django.urls import reverse

from api.auth import api_view, json_body
from fleet import services as plans
from fleet.models import MovePlan
from migration_jobs import services
from migration_jobs.exceptions import BadRequest
from migration_jobs.services import candidates as found

VIEW, MOVE = "tenancy.view_tenant", "tenancy.move_tenant"
VIEW_PLAN = "fleet.view_moveplan"
PLAN_FIELDS = ("tenants", "selection", "to", "servers", "online", "max_parallel", "order", "window_start",
               "window_end", "on_failure", "name", "dry_run", "start")


def plan_json(plan: MovePlan) -> dict:
    return {"id": plan.pk, "name": plan.name, "status": plan.status, "selection": plan.selection,
            "target": plan.target, "servers": [s.name for s in plan.servers.all()], "online": plan.online,
            "max_parallel": plan.max_parallel, "order": plan.order, "on_failure": plan.on_failure,
            "window_start": plan.window_start.isoformat() if plan.window_start else None,
            "window_end": plan.window_end.isoformat() if plan.window_end else None,
            "created_at": plan.created_at.isoformat(), "status_url": reverse("api:plan-detail", args=[plan.pk])}


def plan_report(plan: MovePlan) -> dict:
    """The plan, its progress (done / running / waiting / failed, rows, rate, ETA) and its items."""
    items = [{"tenant": e.item.tenant.slug, "position": e.item.position, "status": e.item.status,
              "rows": e.rows, "estimate_seconds": round(e.seconds, 1), "run": e.item.run_id,
              "error": e.item.error or None} for e in plans.estimate(plan)]
    return {**plan_json(plan), "progress": plans.progress(plan), "items": items}


def _names(value, what: str) -> list[str]:
    """A list of names or ids (or one comma-separated text)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    raise BadRequest(f"{what} must be a list of names or ids, got {value!r}")


def _max_parallel(value) -> int:
    try:
        return plans.max_parallel_of(value)
    except BadRequest as exc:
        raise BadRequest(f"max_parallel: {exc}") from None


def _plan(request, plan_id) -> MovePlan:
    plan = plans.get_plan(plan_id)
    request.api_call["detail"] = f"plan {plan.pk}"
    return plan


@api_view(GET=[VIEW])
def candidate_list(request):
    """?exact=1 counts rows exactly (slower); ?all=1 lists every tenant."""
    exact = services.boolean(request.GET.get("exact", False), "exact")
    include_all = services.boolean(request.GET.get("all", False), "all")
    items = found.candidates(exact=exact, include_all=include_all)
    return JsonResponse({"threshold_rows": found.threshold_rows(), "exact": exact,
                         "tenants": [c.as_dict() for c in items]})


@api_view(GET=[VIEW, VIEW_PLAN], POST=[VIEW, MOVE])
def plan_list(request):
    if request.method == "GET":
        return JsonResponse({"plans": [plan_json(p) for p in MovePlan.objects.prefetch_related("servers")[:100]]})
    body = json_body(request)
    services.known_fields(body, PLAN_FIELDS)
    name = body.get("name") or ""
    if not isinstance(name, str):
        raise BadRequest(f"name must be a text, got {name!r}")
    options = dict(tenants=_names(body.get("tenants"), "tenants"), selection=body.get("selection", "chosen"),
                   target=body.get("to"), servers=[services.server_name(n) for n in _names(body.get("servers"), "servers")],
                   online=body.get("online", True), max_parallel=_max_parallel(body.get("max_parallel", 1)),
                   order=body.get("order", "biggest_first"), window_start=body.get("window_start"),
                   window_end=body.get("window_end"), on_failure=body.get("on_failure", "stop"), name=name)
    if services.boolean(body.get("dry_run", False), "dry_run"):
        draft = plans.check_plan(**options)
        return JsonResponse({"dry_run": True, "name": draft.name, "target": draft.target,
                             "total_rows": draft.total_rows, "wall_seconds": round(draft.wall_seconds, 1),
                             "items": [{"tenant": i.tenant.slug, "rows": i.rows, "estimate_seconds": round(i.seconds, 1)}
                                       for i in draft.items]})
    start = services.boolean(body.get("start", False), "start")
    plan = plans.create_plan(**options, created_by=request.user, start=start)
    request.api_call["detail"] = f"plan {plan.pk} created ({plan.status})"
    return JsonResponse(plan_report(plan), status=201)


@api_view(GET=[VIEW, VIEW_PLAN])
def plan_detail(request, plan_id):
    return JsonResponse(plan_report(_plan(request, plan_id)))


def _act(action):
    @api_view(POST=[VIEW, MOVE])
    def view(request, plan_id):
        plan = action(_plan(request, plan_id))
        request.api_call["detail"] = f"plan {plan.pk} {plan.status}"
        return JsonResponse(plan_report(plan))

    view.__name__ = view.__qualname__ = f"plan_{action.__name__}"
    return view


plan_start = _act(plans.start_plan)
plan_pause = _act(plans.pause)
plan_resume = _act(plans.resume)
plan_cancel = _act(plans.cancel)
