"""Fleet moves: THE entry point for plans of many moves (admin, commands, API, tasks).

- check_plan / create_plan: every input checked before anything is written (bad input is one
  `Refused` line and nothing is created); the tenants are counted, ordered and estimated.
- start / pause / resume / cancel: what staff do to a plan. Each is refused, changing nothing,
  when it does not apply (cancelling twice, pausing a draft...).
- advance: what the plan's task does, whenever a run of the plan ends, when the plan starts
  or resumes, and every minute (a django-q2 Schedule): follow the runs, apply the failure
  policy, start the next moves (never more than max_parallel, never two for one tenant, only
  inside the window and only when the estimate fits in what is left of it), hand a run whose
  worker died (a restart of every worker leaves runs running with no one) or whose task was
  lost to a worker again. It works under
  the plan's row lock, from the database alone: any worker on any machine may run it, twice
  at once or after every worker restarted, and it does the right thing once.
- progress / estimate: the figures of the plan page, `plan_control show` and `--dry-run`.

Each tenant's move is an ordinary MigrationRun made by migration_jobs.services.request_move
and executed by its task: the same steps, history and rollback as a move from the admin.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone
from functools import partial

from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.tasks import async_task

from fleet import notices
from fleet.estimates import Rate, measured_rate, wall_seconds, writes_refused_seconds
from fleet.models import (ADVANCING_STATUSES, OPEN_ITEM_STATUSES, ItemStatus, MovePlan, MovePlanItem, OnFailure,
                          Order, PlanStatus, Selection)
from fleet.selection import candidate_tenants, shared_tenants, tenant_rows
from migration_jobs import services
from migration_jobs.exceptions import BadRequest, NotFound, Refused
from migration_jobs.models import ACTIVE_STATUSES, MigrationRun, RunKind, RunStatus
from migration_jobs.services.validation import BIGINT_MAX, TARGETS, is_id
from tenancy.models import DatabaseServer, Placement, Tenant

log = logging.getLogger(__name__)
ADVANCE_TIMEOUT = 300  # seconds: an advance is a few queries and a few run creations
RESUME_AFTER = timedelta(minutes=10)  # an interrupted run of a plan is resumed again after this long


# --- Reading input ------------------------------------------------------------------------

def _choice(value, choices, what: str) -> str:
    names = [c.value for c in choices]
    if value is None or str(value) not in names:
        raise BadRequest(f"unknown {what} {value!r}: use {', '.join(names[:-1])} or {names[-1]}")
    return str(value)


MAX_PARALLEL = 2_147_483_647  # MovePlan.max_parallel, a PositiveIntegerField


def max_parallel_of(value) -> int:
    """The maximum number of moves at once: a whole number, at least 1, that the plan's column holds."""
    text = str(value).strip() if value is not None else ""
    number = int(text) if text.lstrip("-").isascii() and text.lstrip("-").isdigit() and len(text) < 20 else None
    if number is None or not 1 <= number <= MAX_PARALLEL:
        shown = value if isinstance(value, int) and abs(value) < 10**20 else str(value)[:40]
        raise BadRequest(f"the maximum number of moves at once must be a whole number from 1 to {MAX_PARALLEL}, "
                         f"got {shown!r}")
    return number


def when_of(value, what: str) -> datetime | None:
    """A time given as ISO 8601 text (no zone: UTC) or a datetime; None for nothing."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise BadRequest(f"{what} must be an ISO date and time like 2026-12-01T22:00Z, got {value!r}") from None
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=dt_timezone.utc)


def human_time(moment: datetime | None) -> str:
    return moment.astimezone(dt_timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def get_plan(plan_id) -> MovePlan:
    """A plan by its id (ASCII digits), or NotFound."""
    if not is_id(plan_id) or int(plan_id) > BIGINT_MAX:
        raise NotFound(f"unknown plan {str(plan_id)!r}")
    plan = MovePlan.objects.filter(pk=int(plan_id)).first()
    if plan is None:
        raise NotFound(f"unknown plan {plan_id}")
    return plan


def _tenants_of(given) -> list[Tenant]:
    """Tenants from slugs, ids, Tenant objects or a comma-separated text; refuses repeats."""
    if isinstance(given, str):
        given = [part for part in given.split(",") if part.strip()]
    found, seen = [], set()
    for item in given or ():
        tenant = item if isinstance(item, Tenant) else services.get_tenant(str(item).strip())
        if tenant.pk in seen:
            raise BadRequest(f"tenant {tenant.slug} is listed twice")
        seen.add(tenant.pk)
        found.append(tenant)
    return found


# --- Servers and their capacity -------------------------------------------------------------

def server_load(server: DatabaseServer) -> int:
    """Tenant databases on the server: those in use, and those active moves are making."""
    placed = Tenant.objects.filter(placement=Placement.DATABASE, credential__server=server).count()
    coming = MigrationRun.objects.filter(kind=RunKind.MOVE, target_placement=Placement.DATABASE,
                                         target_server=server, status__in=ACTIVE_STATUSES).count()
    return placed + coming


def _free_places(server: DatabaseServer) -> int | None:
    if server.max_tenant_databases is None:
        return None
    return max(server.max_tenant_databases - server_load(server), 0)


def check_capacity(servers: list[DatabaseServer], tenants: int) -> None:
    """Refused when the servers cannot take that many more tenant databases."""
    free = [_free_places(s) for s in servers]
    if any(f is None for f in free) or sum(free) >= tenants:
        return
    if len(servers) == 1:
        server = servers[0]
        raise Refused(f"server {server.name} is over capacity: it holds {server_load(server)} of at most "
                      f"{server.max_tenant_databases} tenant databases; the plan adds {tenants}")
    raise Refused(f"servers {', '.join(s.name for s in servers)} are over capacity: {sum(free)} free places "
                  f"(max_tenant_databases) for {tenants} tenants")


def pick_server(plan: MovePlan) -> DatabaseServer:
    """The least loaded of the plan's servers that has room (the default server without any)."""
    servers = list(plan.servers.order_by("name")) or [services.get_server(None)]
    loads = [(server_load(s), s.name, s) for s in servers]
    room = [item for item in loads if item[2].max_tenant_databases is None or item[0] < item[2].max_tenant_databases]
    if not room:
        raise Refused(f"every server of plan {plan.pk} is at capacity (max_tenant_databases)")
    return min(room, key=lambda item: item[:2])[2]


# --- Making a plan --------------------------------------------------------------------------

@dataclass
class DraftItem:
    tenant: Tenant
    rows: int
    seconds: float


@dataclass
class PlanDraft:
    """A checked plan, not saved: what --dry-run prints and create_plan writes."""
    name: str
    selection: str
    target: str
    servers: list[DatabaseServer]
    online: bool
    max_parallel: int
    order: str
    window_start: datetime | None
    window_end: datetime | None
    on_failure: str
    rate: Rate
    items: list[DraftItem] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(i.rows for i in self.items)

    @property
    def serial_seconds(self) -> float:
        return sum(i.seconds for i in self.items)

    @property
    def wall_seconds(self) -> float:
        return wall_seconds([i.seconds for i in self.items], self.max_parallel)


def _open_item(tenant: Tenant) -> MovePlanItem | None:
    return MovePlanItem.objects.filter(tenant=tenant, status__in=OPEN_ITEM_STATUSES).select_related("plan").first()


def _check_tenant(tenant: Tenant, target: str, online: bool) -> None:
    services.check_move(tenant, target, online=online)  # shared placement, a status that moves, no active run
    item = _open_item(tenant)
    if item is not None:
        raise Refused(f"tenant {tenant.slug} is already in plan {item.plan_id} ({item.plan.status})")


def check_plan(*, tenants=None, selection=Selection.CHOSEN, target=None, servers=(), online=True, max_parallel=1,
               order=Order.BIGGEST_FIRST, window_start=None, window_end=None, on_failure=OnFailure.STOP,
               name: str = "") -> PlanDraft:
    """Check a plan completely and estimate it; nothing is written. Refused (one line) for
    anything that would not do: no tenant, a tenant that cannot move or is already in an open
    plan, an unknown or full server, a window that already ended, a limit below 1..."""
    selection = _choice(selection, Selection, "tenant selection")
    if target is None or str(target) not in TARGETS:
        raise BadRequest(f"unknown target {target!r}: use schema or database")
    target = str(target)
    online = services.boolean(online, "online")
    max_parallel = max_parallel_of(max_parallel)
    order = _choice(order, Order, "order")
    on_failure = _choice(on_failure, OnFailure, "failure policy")
    start, end = when_of(window_start, "the window start"), when_of(window_end, "the window end")
    if start and end and start >= end:
        raise BadRequest(f"the window must start before it ends ({human_time(start)} >= {human_time(end)})")
    if end and end <= timezone.now():
        raise Refused(f"the window ended at {human_time(end)}: it is already past")
    name = (name or "").strip()
    if len(name) > 200:
        raise BadRequest("the plan's name may have at most 200 characters")

    chosen = _tenants_of(tenants)
    if selection == Selection.CHOSEN:
        found = chosen
        empty = "no tenant chosen"
    elif chosen:
        raise BadRequest(f"tenants are chosen by the selection {selection!r}: name none, or choose 'chosen'")
    elif selection == Selection.CANDIDATES:
        found = candidate_tenants()
        empty = "no shared tenant is a candidate (TENANT_DEDICATED_THRESHOLD_ROWS or a dedicated reason)"
    else:
        found = shared_tenants()
        empty = "no tenant is in shared placement"
    if not found:
        raise Refused(f"the plan has no tenants: {empty}")

    names = [s for s in (servers or ()) if s not in (None, "")]
    if names and target != Placement.DATABASE:
        raise BadRequest("servers apply to database targets only: a schema lives in the shared database")
    picked = []
    for item in names:
        server = item if isinstance(item, DatabaseServer) else services.get_server(str(item))
        if server.pk not in {s.pk for s in picked}:
            picked.append(server)
    for tenant in found:
        _check_tenant(tenant, target, online)
    if target == Placement.DATABASE:
        targets = picked or [services.get_server(None)]
        for server in targets:
            services.check_reachable(server)
        check_capacity(targets, len(found))

    rows = tenant_rows(found)
    if order == Order.BIGGEST_FIRST:
        found = sorted(found, key=lambda t: (-rows[t.pk], t.slug))
    elif order == Order.SMALLEST_FIRST:
        found = sorted(found, key=lambda t: (rows[t.pk], t.slug))
    rate = measured_rate(target, online)
    items = [DraftItem(t, rows[t.pk], rate.seconds(rows[t.pk])) for t in found]
    name = name or f"{len(items)} tenant{'s' if len(items) != 1 else ''} to {target}"
    return PlanDraft(name, selection, target, picked, online, max_parallel, order, start, end, on_failure, rate,
                     items)


def create_plan(*, created_by=None, start: bool = False, **options) -> MovePlan:
    """Check (check_plan) and save a plan, a draft unless `start`."""
    draft = check_plan(**options)
    try:
        with transaction.atomic():
            # Two requests planning the same tenant: the second waits here, then sees the first's plan.
            list(Tenant.objects.select_for_update().filter(pk__in=[i.tenant.pk for i in draft.items]).order_by("pk"))
            for item in draft.items:
                taken = _open_item(item.tenant)
                if taken is not None:
                    raise Refused(f"tenant {item.tenant.slug} is already in plan {taken.plan_id} ({taken.plan.status})")
            plan = MovePlan.objects.create(
                name=draft.name, selection=draft.selection, target=draft.target, online=draft.online,
                max_parallel=draft.max_parallel, order=draft.order, window_start=draft.window_start,
                window_end=draft.window_end, on_failure=draft.on_failure, created_by=created_by)
            plan.servers.set(draft.servers)
            MovePlanItem.objects.bulk_create([
                MovePlanItem(plan=plan, tenant=item.tenant, position=n, rows=item.rows, estimate_seconds=item.seconds)
                for n, item in enumerate(draft.items, 1)])
    except IntegrityError:
        raise Refused("a tenant of this plan was just put in another plan; nothing was created") from None
    if start:
        plan = start_plan(plan)
    return plan


# --- What staff do to a plan ----------------------------------------------------------------

def enqueue_advance(plan_id: int) -> str:
    """Hand the plan to the django-q2 cluster: its task advances it (a no-op when nothing is due)."""
    return async_task("fleet.tasks.advance_plan", plan_id, task_name=f"fleet-plan-{plan_id}-advance",
                      group="fleet-plans", timeout=ADVANCE_TIMEOUT)


def _locked(plan) -> MovePlan:
    return MovePlan.objects.select_for_update().get(pk=getattr(plan, "pk", plan))


def _status_after_window(plan: MovePlan) -> str:
    return PlanStatus.SCHEDULED if plan.window_start and timezone.now() < plan.window_start else PlanStatus.RUNNING


def start_plan(plan) -> MovePlan:
    """Start a draft: scheduled until its window opens, else running. The tenants are told."""
    with transaction.atomic():
        plan = _locked(plan)
        if plan.status != PlanStatus.DRAFT:
            raise Refused(f"plan {plan.pk} is {plan.status}: only a draft can be started")
        if plan.window_end and plan.window_end <= timezone.now():
            raise Refused(f"plan {plan.pk}'s window ended at {human_time(plan.window_end)}: it is already past")
        plan.status, plan.started_at = _status_after_window(plan), timezone.now()
        plan.save(update_fields=["status", "started_at", "updated_at"])
        transaction.on_commit(partial(_announce, plan.pk))
    return MovePlan.objects.get(pk=plan.pk)


def _announce(plan_id: int) -> None:
    plan = MovePlan.objects.get(pk=plan_id)
    notices.plan_scheduled(plan, estimate(plan))
    enqueue_advance(plan_id)


def pause(plan) -> MovePlan:
    """No new move starts; the running ones finish."""
    with transaction.atomic():
        plan = _locked(plan)
        if plan.status == PlanStatus.PAUSED:
            raise Refused(f"plan {plan.pk} is already paused")
        if plan.status not in (PlanStatus.SCHEDULED, PlanStatus.RUNNING):
            raise Refused(f"plan {plan.pk} is {plan.status}: only a scheduled or running plan can be paused")
        plan.status = PlanStatus.PAUSED
        plan.save(update_fields=["status", "updated_at"])
    return plan


def resume(plan) -> MovePlan:
    with transaction.atomic():
        plan = _locked(plan)
        if plan.status != PlanStatus.PAUSED:
            raise Refused(f"plan {plan.pk} is {plan.status}: only a paused plan can be resumed")
        plan.status = _status_after_window(plan)
        plan.save(update_fields=["status", "updated_at"])
        transaction.on_commit(partial(enqueue_advance, plan.pk))
    return MovePlan.objects.get(pk=plan.pk)


def cancel(plan) -> MovePlan:
    """No new move starts; the running ones are cancelled (rolled back at their next safe
    point, as migration_jobs.services.cancel does); the plan ends `cancelled` once they did."""
    with transaction.atomic():
        plan = _locked(plan)
        if plan.status == PlanStatus.CANCELLED:
            raise Refused(f"plan {plan.pk} is already cancelled")
        if plan.status == PlanStatus.CANCELLING:
            raise Refused(f"plan {plan.pk} is already being cancelled: its running moves are rolling back")
        if plan.status not in (PlanStatus.DRAFT, *ADVANCING_STATUSES):
            raise Refused(f"plan {plan.pk} is {plan.status}: nothing to cancel")
        items = list(plan.items.select_for_update(of=("self",)).select_related("run"))
        ended = _close_waiting(plan, items, ItemStatus.CANCELLED, "cancelled with the plan")
        runs = [i.run for i in items if i.status == ItemStatus.RUNNING and i.run is not None]
        plan.status = PlanStatus.CANCELLING if runs else PlanStatus.CANCELLED
        plan.finished_at = None if runs else timezone.now()
        plan.error = plan.error or "cancelled on request"
        plan.save()
        transaction.on_commit(partial(_cancel_runs, plan.pk, [r.pk for r in runs], ended))
    return MovePlan.objects.get(pk=plan.pk)


def _cancel_runs(plan_id: int, run_ids: list[int], ended: list[int]) -> None:
    for run_id in run_ids:
        try:
            services.cancel(run_id, reason=f"cancelled with plan {plan_id}")
        except Refused as exc:  # over meanwhile, or past its cutover: it finishes, advance records it
            log.info("plan %s: run %s not cancelled: %s", plan_id, run_id, exc)
    _notify(ended)
    if run_ids:
        enqueue_advance(plan_id)


# --- Advancing a plan -----------------------------------------------------------------------

RUN_END = {RunStatus.SUCCEEDED: ItemStatus.DONE, RunStatus.CANCELLED: ItemStatus.CANCELLED,
           RunStatus.ROLLED_BACK: ItemStatus.FAILED, RunStatus.FAILED: ItemStatus.FAILED}


def _end(item: MovePlanItem, status: str, error: str = "") -> None:
    item.status, item.finished_at = status, timezone.now()
    if error:
        item.error = " ".join(error.split())[:1000]
    item.save()


def _close_waiting(plan: MovePlan, items, status: str, why: str) -> list[int]:
    """End every waiting item; the ids of those whose tenant is to be told."""
    closed = []
    for item in items:
        if item.status == ItemStatus.WAITING:
            _end(item, status, why)
            closed.append(item.pk)
    return _to_notify(plan, closed)


def _to_notify(plan: MovePlan, item_ids: list[int]) -> list[int]:
    """Of these ended items, those whose tenant was told of the plan and not yet of the end."""
    if plan.started_at is None or not item_ids:
        return []
    ids = list(MovePlanItem.objects.filter(pk__in=item_ids, notified=False).values_list("pk", flat=True))
    MovePlanItem.objects.filter(pk__in=ids).update(notified=True)
    return ids


def _notify(item_ids: list[int]) -> None:
    for item in MovePlanItem.objects.filter(pk__in=item_ids).select_related("plan", "tenant", "run"):
        notices.item_ended(item)


def _stop(plan: MovePlan, items, failed: MovePlanItem) -> list[int]:
    plan.error = f"stopped after {failed.tenant.slug} failed: {failed.error}"[:2000]
    return _close_waiting(plan, items, ItemStatus.SKIPPED, f"not started: the plan stopped after {failed.tenant.slug} "
                                                           "failed")


def _request_run(plan: MovePlan, item: MovePlanItem) -> MigrationRun:
    server = pick_server(plan).name if plan.target == Placement.DATABASE else None
    return services.request_move(item.tenant, plan.target, server_name=server, online=plan.online,
                                 requested_by=plan.created_by, via=f"plan {plan.pk}")


def _start_next(plan: MovePlan, items, now, started: list[MigrationRun]) -> list[int]:
    """Start waiting items while there is room and they fit in the window; the ids to notify."""
    notify = []
    if plan.window_end and now >= plan.window_end:
        return _close_waiting(plan, items, ItemStatus.SKIPPED, f"not started: the window ended at "
                                                               f"{human_time(plan.window_end)}")
    room = plan.max_parallel - sum(1 for i in items if i.status == ItemStatus.RUNNING)
    rate = measured_rate(plan.target, plan.online)
    for item in items:
        if room <= 0 or plan.error:
            break
        if item.status != ItemStatus.WAITING:
            continue
        item.estimate_seconds = rate.seconds(item.rows)
        left = (plan.window_end - now).total_seconds() if plan.window_end else None
        if left is not None and item.estimate_seconds > left:
            item.error = (f"waiting: its move (~{services.human_duration(item.estimate_seconds)}) does not fit in "
                          f"what is left of the window ({services.human_duration(left)})")
            item.save(update_fields=["estimate_seconds", "error"])
            continue
        try:
            with transaction.atomic():
                run = _request_run(plan, item)
        except Refused as exc:
            _end(item, ItemStatus.FAILED if plan.on_failure == OnFailure.STOP else ItemStatus.SKIPPED,
                 f"not started: {exc}")
            notify += _to_notify(plan, [item.pk])
            if plan.on_failure == OnFailure.STOP:
                notify += _stop(plan, items, item)
            continue
        item.run, item.status, item.started_at, item.error = run, ItemStatus.RUNNING, now, ""
        item.save()
        started.append(run)
        room -= 1
    if plan.window_end and not any(i.status == ItemStatus.RUNNING for i in items):
        # Nothing runs and what waits does not fit: it never will in this window (only less is left).
        notify += _close_waiting(plan, items, ItemStatus.SKIPPED, "not started: its move does not fit in the "
                                                                  f"window ending {human_time(plan.window_end)}")
    return notify


def advance(plan_id: int) -> str:
    """Bring the plan up to date and start what is due. Under the plan's row lock: safe to
    run from several workers at once, and as often as wanted."""
    started: list[MigrationRun] = []
    notify: list[int] = []
    resumed: list[int] = []
    with transaction.atomic():
        plan = MovePlan.objects.select_for_update().filter(pk=plan_id).first()
        if plan is None:
            return f"plan {plan_id}: no such plan"
        if plan.status not in ADVANCING_STATUSES:
            return f"plan {plan_id} is {plan.status}: nothing to do"
        now = timezone.now()
        items = list(plan.items.select_for_update(of=("self",)).select_related("tenant", "run").order_by("position"))
        failed = None
        for item in items:  # follow the runs
            if item.status != ItemStatus.RUNNING:
                continue
            if item.run is not None and item.run.status in ACTIVE_STATUSES:
                if _lost(item, now):
                    item.resumed_at = now
                    item.save(update_fields=["resumed_at"])
                    resumed.append(item.run_id)
                continue
            run = item.run
            status = RUN_END.get(run.status, ItemStatus.FAILED) if run else ItemStatus.FAILED
            _end(item, status, "" if status == ItemStatus.DONE else (run.error if run else "its run was deleted"))
            notify += _to_notify(plan, [item.pk])
            if status == ItemStatus.FAILED:
                failed = failed or item
        if failed is not None and plan.on_failure == OnFailure.STOP and plan.status != PlanStatus.CANCELLING \
                and not plan.error:
            notify += _stop(plan, items, failed)
        if plan.status in (PlanStatus.SCHEDULED, PlanStatus.RUNNING):
            plan.status = _status_after_window(plan)
            if plan.status == PlanStatus.RUNNING:
                notify += _start_next(plan, items, now, started)
        if not any(i.status in OPEN_ITEM_STATUSES for i in items):
            plan.status = (PlanStatus.CANCELLED if plan.status == PlanStatus.CANCELLING else
                           PlanStatus.FAILED if plan.error else PlanStatus.DONE)
            plan.finished_at = now
        plan.save()
        transaction.on_commit(partial(_after_advance, [r.pk for r in started], notify, resumed))
    return f"plan {plan_id} {plan.status}: {len(started)} move(s) started" + \
        (f", {len(resumed)} interrupted one(s) handed to a worker again" if resumed else "")


def _lost(item: MovePlanItem, now) -> bool:
    """Its run needs its task again: running with no live worker holding it (every worker was
    restarted), or queued for RESUME_AFTER (its task was lost between the commit that made the
    run and the enqueue). At most every RESUME_AFTER: a task may wait for a free worker, and an
    extra one is a no-op (the executor claims a run once). A held online move waiting in the
    database for its next round is not lost."""
    run = item.run
    if item.resumed_at and now - item.resumed_at < RESUME_AFTER:
        return False
    if run.status == RunStatus.QUEUED:
        return now - run.created_at >= RESUME_AFTER
    if run.hold_cutover or run.next_round_at is not None:
        return False
    ok, _ = services.interrupted_runs([run], allow_queued=False)
    return bool(ok)


def _after_advance(run_ids: list[int], notify: list[int], resumed: list[int] = ()) -> None:
    _notify(notify)
    for run in MigrationRun.objects.filter(pk__in=run_ids).order_by("pk"):
        services.enqueue(run)
    for run in MigrationRun.objects.filter(pk__in=resumed).order_by("pk"):
        services.enqueue(run, resume=run.status == RunStatus.RUNNING)


def advance_open_plans() -> list[str]:
    """Advance every plan that may have something to do (the periodic task)."""
    return [advance(pk) for pk in MovePlan.objects.filter(status__in=ADVANCING_STATUSES).order_by("pk")
            .values_list("pk", flat=True)]


# --- Figures ------------------------------------------------------------------------------

@dataclass
class ItemEstimate:
    item: MovePlanItem
    rows: int
    seconds: float
    writes_refused: float


def estimate(plan: MovePlan) -> list[ItemEstimate]:
    """Per tenant: rows counted when planned, the move's duration at the rate measured now and
    how long its writes would be refused."""
    rate = measured_rate(plan.target, plan.online)
    return [ItemEstimate(item, item.rows, rate.seconds(item.rows),
                         writes_refused_seconds(rate, rate.seconds(item.rows), plan.online))
            for item in plan.items.select_related("tenant", "run").order_by("position")]


def progress(plan: MovePlan) -> dict:
    """done / running / waiting / failed (and skipped, cancelled), rows moved, rate, ETA."""
    items = list(plan.items.select_related("tenant", "run").order_by("position"))
    counts = {status.value: 0 for status in ItemStatus}
    for item in items:
        counts[item.status] += 1
    runs = [i.run for i in items if i.run is not None and i.status in (ItemStatus.DONE, ItemStatus.RUNNING)]
    moved = sum(r.rows_copied for r in runs)
    to_move = sum(i.rows for i in items if i.status in OPEN_ITEM_STATUSES or i.status == ItemStatus.DONE)
    began = min((r.started_at for r in runs if r.started_at), default=None)
    now = timezone.now()
    end = plan.finished_at or now
    elapsed = (end - began).total_seconds() if began else 0.0
    rate = moved / elapsed if elapsed > 0 and moved else None
    eta = None
    if plan.status in (PlanStatus.SCHEDULED, PlanStatus.RUNNING, PlanStatus.PAUSED):
        rate_now = measured_rate(plan.target, plan.online)
        running = [max(rate_now.seconds(i.rows) - (now - i.started_at).total_seconds(), 0.0)
                   for i in items if i.status == ItemStatus.RUNNING and i.started_at]
        waiting = [rate_now.seconds(i.rows) for i in items if i.status == ItemStatus.WAITING]
        if plan.status != PlanStatus.PAUSED or not waiting:
            eta = wall_seconds(running + waiting, plan.max_parallel) if running or waiting else 0.0
            if plan.window_start and now < plan.window_start:
                eta += (plan.window_start - now).total_seconds()
    finished = len(items) - counts[ItemStatus.WAITING] - counts[ItemStatus.RUNNING]
    return {"plan": plan.pk, "status": plan.status, "total": len(items), "finished": finished, "counts": counts,
            "rows_moved": moved, "rows_to_move": to_move, "rows_per_second": rate, "eta_seconds": eta,
            "progress": f"[{finished}/{len(items)}]", "error": plan.error}
