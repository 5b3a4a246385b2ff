"""Runs: asking for a move, a move back or a retirement (a run is created, not started),
executing or enqueueing it, resuming, rolling back or cancelling an interrupted one, the
gradual read switch and the held cutover of an online move, and setting a tenant's status
by hand. Every function refuses a request it cannot honour with `Refused`, changing nothing.
"""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.conf import Conf
from django_q.status import Stat
from django_q.tasks import async_task

from migration_jobs.runs import executor, pickup
from migration_jobs.runs.plans import create_steps
from migration_jobs.engine import provision
from migration_jobs.exceptions import BadRequest, Refused, StepFailed
from migration_jobs.models import ACTIVE_STATUSES, MigrationRun, RunKind, RunStatus
from migration_jobs.services.validation import IDENTIFIER, READ_SHARES, TARGETS, check_reachable, reachable_server
from tenancy.models import Placement, Status, Tenant
from tenancy.routing import set_read_switch


def active_run(tenant: Tenant) -> MigrationRun | None:
    return tenant.migration_runs.filter(status__in=ACTIVE_STATUSES).first()


def _create_run(tenant: Tenant, **fields) -> MigrationRun:
    existing = active_run(tenant)
    if existing:
        raise Refused(f"tenant {tenant.slug} already has an active run (run {existing.pk}, {existing.status})")
    try:
        with transaction.atomic():
            run = MigrationRun.objects.create(tenant=tenant, **fields)
            create_steps(run)
    except IntegrityError:
        # Lost a race with another request: the partial unique index said no.
        existing = active_run(tenant)
        raise Refused(f"tenant {tenant.slug} already has an active run"
                      f"{f' (run {existing.pk})' if existing else ''}") from None
    return run


def _check_no_active_run(tenant: Tenant) -> None:
    existing = active_run(tenant)
    if existing:
        raise Refused(f"tenant {tenant.slug} already has an active run (run {existing.pk}, {existing.status})")


def check_move(tenant: Tenant, target: str, *, online: bool = False, hold_cutover: bool = False,
               active: bool = True) -> None:
    """Refused if this tenant cannot be moved to `target` as asked (no server is contacted:
    a confirmation page calls it for every selected tenant). `active`: check for a run too."""
    if target not in TARGETS:
        raise Refused(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    if tenant.placement != Placement.SHARED:
        raise Refused(f"tenant {tenant.slug} is already in {tenant.placement} placement; move it back first")
    if tenant.status in (Status.SUSPENDED, Status.MIGRATING):
        raise Refused(f"tenant {tenant.slug} is {tenant.status}; reactivate it first")
    if online and tenant.status != Status.ACTIVE:
        raise Refused(f"tenant {tenant.slug} is {tenant.status}: an online move needs an active tenant")
    if hold_cutover and not online:
        raise Refused("holding the cutover (for a gradual read switch) needs an online move")
    if target == Placement.SCHEMA and not IDENTIFIER.match(tenant.schema_name):
        raise Refused(f"schema name {tenant.schema_name!r} is not a plain lower-case identifier")
    if active:
        _check_no_active_run(tenant)


def check_move_back(tenant: Tenant, *, online: bool = False, active: bool = True) -> None:
    """Refused if this dedicated tenant cannot be moved back as asked (no server contacted)."""
    if tenant.placement == Placement.SHARED:
        raise Refused(f"tenant {tenant.slug} is already in shared placement")
    if tenant.status in (Status.SUSPENDED, Status.MIGRATING):
        raise Refused(f"tenant {tenant.slug} is {tenant.status}; reactivate it first")
    if online and tenant.status != Status.ACTIVE:
        raise Refused(f"tenant {tenant.slug} is {tenant.status}: an online move needs an active tenant")
    if active:
        _check_no_active_run(tenant)


def request_move(tenant: Tenant, target: str, *, server_name: str | None = None, online: bool = False,
                 hold_cutover: bool = False, dry_run: bool = False, requested_by=None,
                 via: str = "command") -> MigrationRun:
    """Create (not start) a run that moves a pooled tenant to a dedicated schema or database."""
    check_move(tenant, target, online=online, hold_cutover=hold_cutover, active=False)
    fields = {"kind": RunKind.MOVE, "source_placement": Placement.SHARED, "target_placement": target,
              "online": online, "hold_cutover": hold_cutover, "dry_run": dry_run, "requested_by": requested_by,
              "requested_via": via}
    if target == Placement.SCHEMA:
        if server_name:
            raise Refused("--server applies to database targets only: a schema lives in the shared database")
        fields["target_schema"] = tenant.schema_name
    else:
        server = reachable_server(server_name)
        fields["target_server"] = server
        fields["target_database"] = tenant.database_name
    return _create_run(tenant, **fields)


def request_move_back(tenant: Tenant, *, online: bool = False, dry_run: bool = False, requested_by=None,
                      via: str = "command") -> MigrationRun:
    """Create a run that moves a dedicated tenant back into the shared tables."""
    check_move_back(tenant, online=online, active=False)
    fields = {"kind": RunKind.MOVE_BACK, "source_placement": tenant.placement,
              "target_placement": Placement.SHARED, "online": online, "dry_run": dry_run,
              "requested_by": requested_by, "requested_via": via}
    if tenant.placement == Placement.SCHEMA:
        fields["target_schema"] = tenant.schema_name
    else:
        credential = tenant.credential
        check_reachable(credential.server)
        fields["target_server"] = credential.server
        fields["target_database"] = credential.database
    return _create_run(tenant, **fields)


def execute(run: MigrationRun | int, *, resume: bool = False, park_when_held: bool = False) -> MigrationRun:
    """Execute a run (or resume it) in this process; a no-op when a live worker holds it.
    `park_when_held` (the cluster's tasks): a held online move is parked between its catch-up
    rounds and this returns; otherwise (a command) this process keeps it to its end."""
    with executor.closing_connections():
        return executor.execute(getattr(run, "pk", run), resume=resume, park_when_held=park_when_held)


def enqueue(run: MigrationRun, *, resume: bool = False) -> str:
    """Hand the run to the django-q2 cluster; the task is a no-op if the run is taken or over."""
    return async_task("migration_jobs.tasks.execute_run", run.pk, resume,
                      task_name=f"tenant-move-run-{run.pk}{'-resume' if resume else ''}",
                      timeout=settings.MIGRATION_TASK_TIMEOUT, group="tenant-moves")


def request_placement(tenant: Tenant, target: str, *, server_name: str | None = None, dry_run: bool = False,
                      requested_by=None, via: str = "command") -> MigrationRun:
    """A run that brings the tenant to `target` (schema, database or shared): a move or a move back."""
    if server_name and target != Placement.DATABASE:
        raise BadRequest("server applies to a move to a dedicated database only")
    if target == Placement.SHARED:
        return request_move_back(tenant, dry_run=dry_run, requested_by=requested_by, via=via)
    return request_move(tenant, target, server_name=server_name, dry_run=dry_run, requested_by=requested_by,
                        via=via)


def resumable_run(tenant: Tenant) -> MigrationRun:
    """The tenant's unfinished run whose worker is gone, or Refused."""
    run = tenant.migration_runs.filter(status=RunStatus.RUNNING).first()
    if run is None:  # or one that failed after its cutover: a resume finishes it
        run = tenant.migration_runs.filter(status=RunStatus.FAILED).order_by("-created_at").first()
        if run is None or not executor.finishes_on_resume(run):
            raise Refused(f"tenant {tenant.slug} has no interrupted run to resume")
    if not executor.lock_is_free(run.pk):
        raise Refused(f"run {run.pk} of tenant {tenant.slug} is still being executed by a live worker")
    return run


def rollback_unfinished(tenant: Tenant) -> MigrationRun | None:
    """Roll back the tenant's interrupted run, if it has one. Refused while a worker holds it."""
    # A failed run is one whose own rollback did not finish: rolling back again completes it.
    run = tenant.migration_runs.filter(status__in=[RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.FAILED]
                                       ).exclude(kind=RunKind.RETIRE).order_by("-created_at").first()
    if run is None:
        return None
    try:
        return executor.rollback(run.pk, reason="rolled back on request (interrupted run)")
    except StepFailed as exc:
        raise Refused(str(exc)) from None


def interrupted_runs(runs, *, allow_queued: bool,
                     finishing: bool = False) -> tuple[list[MigrationRun], list[tuple[MigrationRun, str]]]:
    """Split runs into (those that can be resumed, or with allow_queued rolled back / cancelled,
    now) and [(run, why not)]: a run is taken while a live worker holds its lock. `finishing`
    (a resume): a run that failed after its cutover is taken too, a resume finishes it."""
    ok, skipped = [], []
    statuses = [RunStatus.RUNNING, RunStatus.QUEUED] if allow_queued else [RunStatus.RUNNING]
    for run in runs:
        if finishing and executor.finishes_on_resume(run):
            ok.append(run)  # failed runs hold no lock: nothing executes them
        elif run.status not in statuses:
            skipped.append((run, f"it is {run.get_status_display().lower()}"))
        elif executor.is_parked(run):
            skipped.append((run, "it is held in sync between catch-up rounds (not interrupted): cut it over or "
                                 "cancel it"))
        elif run.status == RunStatus.RUNNING and not executor.lock_is_free(run.pk):
            skipped.append((run, "a live worker is still executing it"))
        else:
            ok.append(run)
    return ok, skipped


def roll_back(run: MigrationRun | int, reason: str = "rolled back on request") -> MigrationRun:
    """Undo an unfinished run now, newest step first; a queued run is cancelled. StepFailed
    while a live worker holds it, or when it is finished or past its cutover."""
    with executor.closing_connections():
        return executor.rollback(getattr(run, "pk", run), reason=reason)


def why_not_cancel(run: MigrationRun) -> str | None:
    """Why this run cannot be cancelled now (for a confirmation page), or None."""
    if run.status not in ACTIVE_STATUSES:
        return f"it is {run.get_status_display().lower()}"
    if run.cancel_requested:
        return "cancel already requested"
    if run.status == RunStatus.RUNNING and (run.current_step == "cutover" or executor._past_point_of_no_return(run)):
        return "past its point of no return (cutover)"
    return None


def cancel(run: MigrationRun | int, reason: str = "cancelled on request") -> MigrationRun:
    """Cancel a run. Queued: `cancelled` at once (its queued task then finds nothing to do).
    Running or held: the owning worker is asked to stop at its next safe point (between steps,
    after a copied table or a catch-up round) and roll back; with no live worker (it died),
    the run is rolled back here. Refused once the cutover has begun, or when the run is over."""
    run_id = getattr(run, "pk", run)
    with transaction.atomic():
        locked = MigrationRun.objects.select_for_update(of=("self",)).select_related("tenant").get(pk=run_id)
        if locked.status not in ACTIVE_STATUSES:
            raise Refused(f"run {run_id} is {locked.get_status_display().lower()}: nothing to cancel")
        if locked.cancel_requested:
            raise Refused(f"run {run_id}: cancel already requested; its worker stops at the next safe point")
        if locked.status == RunStatus.QUEUED:
            # Under the row lock: the executor's claim waits for this commit and then sees it.
            locked.status, locked.finished_at, locked.error = RunStatus.CANCELLED, timezone.now(), reason
            locked.cancel_requested = True
            locked.save(update_fields=["status", "finished_at", "error", "cancel_requested"])
            return locked
        if locked.current_step == "cutover" or executor._past_point_of_no_return(locked):
            raise Refused(f"run {run_id} is past its point of no return (cutover): too late to cancel; "
                          f"let it finish, then move the tenant back")
        locked.cancel_requested = True
        locked.save(update_fields=["cancel_requested"])
    if executor.is_parked(locked):  # held, between rounds: a worker rolls it back now
        enqueue(locked, resume=True)
    elif executor.lock_is_free(run_id):  # nobody is executing it: roll it back now
        with executor.closing_connections():
            try:
                return executor.rollback(run_id, reason=reason, cancel=True)
            except StepFailed:
                pass  # a worker took it meanwhile: it sees the flag
    return MigrationRun.objects.select_related("tenant").get(pk=run_id)


def worker_connections():
    """For a task: start and end with healthy ORM connections (workers reuse processes)."""
    return executor.closing_connections()


def enqueue_rollback(run: MigrationRun) -> str:
    """Hand the rollback (or cancellation) of an unfinished run to the django-q2 cluster."""
    return async_task("migration_jobs.tasks.rollback_run", run.pk, task_name=f"tenant-move-run-{run.pk}-rollback",
                      group="tenant-moves")


def undo_move(tenant: Tenant, *, online: bool = False, requested_by=None, via: str = "command"
              ) -> tuple[MigrationRun, str | None]:
    """Undo a tenant's move: roll back its unfinished run (queued, or running with its worker
    gone) and return (that run, its status before); otherwise, for a dedicated tenant, create
    a move back and return (the new run, None) for the caller to execute or enqueue."""
    unfinished = tenant.migration_runs.filter(status__in=ACTIVE_STATUSES).first()
    run = rollback_unfinished(tenant) if unfinished is not None else None
    if run is not None:
        return run, unfinished.status
    if tenant.placement == Placement.SHARED:
        raise Refused(f"tenant {tenant.slug} is already in shared placement: nothing to roll back")
    return request_move_back(tenant, online=online, requested_by=requested_by, via=via), None


def set_status(tenant: Tenant, status: str) -> Tenant:
    """Suspend / reactivate by hand. Refused while a run owns the tenant's status."""
    if status not in (Status.ACTIVE, Status.SUSPENDED, Status.READ_ONLY):
        raise Refused(f"cannot set status {status!r} by hand")
    run = active_run(tenant)
    if run:
        raise Refused(f"tenant {tenant.slug} is being moved by run {run.pk}; its status is managed by that run")
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        tenant.status = status
        tenant.save()
    return tenant


def request_retire(tenant: Tenant, *, ignore_grace: bool = False, requested_by=None, via: str = "command"
                   ) -> MigrationRun:
    """Create a run that retires a tenant's legacy rows, after the grace period
    (TENANT_LEGACY_GRACE_DAYS) since the move that left them: a dedicated tenant's rows in the
    shared tables (archived, deleted in batches), or, for a tenant that moved back, the
    dedicated schema or database it left (archived, dropped)."""
    moved = check_retire(tenant, ignore_grace=ignore_grace, active=False)
    # source_placement: where the legacy rows are; target_placement: where the tenant lives.
    legacy_in = moved.source_placement if moved.kind == RunKind.MOVE_BACK else Placement.SHARED
    return _create_run(tenant, kind=RunKind.RETIRE, source_placement=legacy_in,
                       target_placement=tenant.placement, target_schema=moved.target_schema,
                       target_database=moved.target_database, target_server=moved.target_server,
                       requested_by=requested_by, requested_via=via)


def legacy_of(run: MigrationRun) -> str:
    """Where the legacy rows of the move `run` are, in words."""
    if run.kind == RunKind.MOVE_BACK:
        place = f"schema {run.target_schema}" if run.source_placement == Placement.SCHEMA else \
            f"database {run.target_database}"
        return f"the dedicated {place} it left when it moved back (dropped whole)"
    return "its old rows in the shared tables (deleted in batches)"


def check_retire(tenant: Tenant, *, ignore_grace: bool = False, active: bool = True) -> MigrationRun:
    """The move whose legacy rows a retirement would remove, or Refused."""
    if active:
        _check_no_active_run(tenant)
    if tenant.placement == Placement.SHARED:
        moved = tenant.migration_runs.filter(kind=RunKind.MOVE_BACK, status=RunStatus.SUCCEEDED).order_by(
            "-finished_at").first()
        if moved is None or not _dedicated_place_exists(moved):
            raise Refused(f"tenant {tenant.slug} lives in the shared tables and no dedicated place of it is "
                          "left: it has no legacy rows")
    else:
        moved = tenant.migration_runs.filter(kind=RunKind.MOVE, status=RunStatus.SUCCEEDED).order_by(
            "-finished_at").first()
    if moved is None:
        raise Refused(f"tenant {tenant.slug} has no successful move: nothing is known to be legacy")
    ready_at = moved.finished_at + timedelta(days=settings.TENANT_LEGACY_GRACE_DAYS)
    if not ignore_grace and timezone.now() < ready_at:
        raise Refused(f"tenant {tenant.slug} moved at {moved.finished_at:%Y-%m-%d %H:%M}; its legacy rows may be "
                      f"retired from {ready_at:%Y-%m-%d %H:%M} (TENANT_LEGACY_GRACE_DAYS="
                      f"{settings.TENANT_LEGACY_GRACE_DAYS:g})")
    return moved


def _dedicated_place_exists(run: MigrationRun) -> bool:
    """Whether the schema or database a move back came from is still there."""
    if run.source_placement == Placement.SCHEMA:
        return provision.schema_exists(run.target_schema)
    return provision.database_exists(run.target_server, run.target_database)


def set_read_share(run: MigrationRun, percent: int) -> MigrationRun:
    """The gradual read switch: serve this share of the tenant's read-only requests from the
    target of an online move while it is kept in sync (0 -> 10 -> 50 -> 100)."""
    if percent not in READ_SHARES:
        raise Refused(f"read share must be one of {', '.join(map(str, READ_SHARES))}")
    if not (run.online and run.kind == RunKind.MOVE and run.status in ACTIVE_STATUSES):
        raise Refused(f"run {run.pk} is not an active online move: reads can only switch during one")
    with transaction.atomic():
        # The run's row lock orders this with the runner's step changes (executor._run_step).
        locked = MigrationRun.objects.select_for_update().get(pk=run.pk)
        locked.read_percent, locked.hold_cutover = percent, True if percent < 100 else locked.hold_cutover
        locked.save(update_fields=["read_percent", "hold_cutover"])
        catching_up = locked.status == RunStatus.RUNNING and locked.current_step == "catch_up"
        set_read_switch(run.tenant_id, percent if catching_up else 0, run.target_placement, run.target_schema)
    if percent and executor.is_parked(locked):  # reads now come from the target: sync it at once, and on
        enqueue(locked, resume=True)            # (a run serving reads keeps its worker, steps/online.py)
    run.refresh_from_db()
    return run


def release_cutover(run: MigrationRun) -> MigrationRun:
    """Let a held online move cut over: at its next catch-up round when a worker has it, at
    once (enqueued now) when it is parked between rounds."""
    if not (run.online and run.status in ACTIVE_STATUSES):
        raise Refused(f"run {run.pk} is not an active online move")
    with transaction.atomic():  # the row lock orders this with a worker parking the run
        locked = MigrationRun.objects.select_for_update(of=("self",)).get(pk=run.pk)
        locked.hold_cutover = False
        locked.save(update_fields=["hold_cutover"])
    if executor.is_parked(locked):
        enqueue(locked, resume=True)
    run.refresh_from_db()
    return run


def is_parked(run: MigrationRun) -> bool:
    """A held online move waiting in the database between catch-up rounds (no worker has it)."""
    return executor.is_parked(run)


def worker_count() -> int:
    """Task workers: those of the clusters django-q2 reports alive (visible when its cache is
    shared, e.g. Redis), else Q_CLUSTER["workers"] of the settings."""
    try:
        stats = [stat for stat in Stat.get_all() if stat.status not in (Conf.STOPPED, Conf.STOPPING)]
    except Exception:  # noqa: BLE001 - no cache or broker to ask: the settings say
        stats = []
    found = sum(len(stat.workers) for stat in stats)
    return found or int(settings.Q_CLUSTER.get("workers") or 1)


def why_waiting(run: MigrationRun) -> str | None:
    """Why a run that needs a worker has none yet, in words ("2 of 2 workers busy: runs 5, 6",
    "waiting for a worker to pick it up (1 of 2 workers busy: run 5)"); None when it does not
    wait for one (it is executing, finished, or parked until its next round)."""
    if not (run.status == RunStatus.QUEUED or (executor.is_parked(run) and pickup.due(run))):
        return None
    busy = sorted(MigrationRun.objects.filter(status=RunStatus.RUNNING, pk__in=executor.executing_run_ids())
                  .exclude(pk=run.pk).values_list("pk", flat=True))
    workers = worker_count()
    text = f"{len(busy)} of {workers} worker{'s' if workers != 1 else ''} busy"
    if busy:
        text += f": run{'s' if len(busy) != 1 else ''} {', '.join(map(str, busy))}"
    return text if len(busy) >= workers else f"waiting for a worker to pick it up ({text})"
