"""Service functions behind the admin actions, the management commands and the API.

Everything that validates a request lives here, so every entry point refuses the same bad
input with the same one-line message (`Refused`) and changes nothing when it does.
"""
from __future__ import annotations

import re

import psycopg
from django.conf import settings
from django.db import IntegrityError, transaction

from migration_jobs.exceptions import Refused, StepFailed
from migration_jobs.models import ACTIVE_STATUSES, MigrationRun, RunKind, RunStatus
from migration_jobs.runs.executor import closing_connections, lock_is_free
from migration_jobs.runs.executor import execute as run_execute
from migration_jobs.runs.executor import rollback as run_rollback
from migration_jobs.runs.plans import create_steps
from tenancy.models import DatabaseServer, Placement, Status, Tenant

TARGETS = (Placement.SCHEMA, Placement.DATABASE)
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def get_tenant(slug_or_id) -> Tenant:
    lookup = {"pk": int(slug_or_id)} if str(slug_or_id).isdigit() else {"slug": slug_or_id}
    try:
        return Tenant.objects.get(**lookup)
    except Tenant.DoesNotExist:
        raise Refused(f"unknown tenant {slug_or_id!r}") from None


def get_server(name: str | None) -> DatabaseServer:
    from tenancy.servers import ensure_default_server

    if not name:
        return ensure_default_server()
    try:
        return DatabaseServer.objects.get(name=name)
    except DatabaseServer.DoesNotExist:
        known = ", ".join(DatabaseServer.objects.values_list("name", flat=True)) or "none"
        raise Refused(f"unknown database server {name!r} (known: {known})") from None


def active_run(tenant: Tenant) -> MigrationRun | None:
    return tenant.migration_runs.filter(status__in=ACTIVE_STATUSES).first()


def check_reachable(server: DatabaseServer) -> None:
    try:
        with psycopg.connect(**{**server.conninfo(), "connect_timeout": 5}) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        # The class and the server, never the message: it could quote connection details.
        raise Refused(f"database server {server.name!r} ({server.host}:{server.port}) is unreachable: "
                      f"{type(exc).__name__}") from None


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


def request_move(tenant: Tenant, target: str, *, server_name: str | None = None, online: bool = False,
                 hold_cutover: bool = False, dry_run: bool = False, requested_by=None,
                 via: str = "command") -> MigrationRun:
    """Create (not start) a run that moves a pooled tenant to a dedicated schema or database."""
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
    fields = {"kind": RunKind.MOVE, "source_placement": Placement.SHARED, "target_placement": target,
              "online": online, "hold_cutover": hold_cutover, "dry_run": dry_run, "requested_by": requested_by,
              "requested_via": via}
    if target == Placement.SCHEMA:
        if server_name:
            raise Refused("--server applies to database targets only: a schema lives in the shared database")
        fields["target_schema"] = tenant.schema_name
        if not _IDENTIFIER.match(tenant.schema_name):
            raise Refused(f"schema name {tenant.schema_name!r} is not a plain lower-case identifier")
    else:
        server = get_server(server_name)
        check_reachable(server)
        fields["target_server"] = server
        fields["target_database"] = tenant.database_name
    return _create_run(tenant, **fields)


def request_move_back(tenant: Tenant, *, online: bool = False, dry_run: bool = False, requested_by=None,
                      via: str = "command") -> MigrationRun:
    """Create a run that moves a dedicated tenant back into the shared tables."""
    if tenant.placement == Placement.SHARED:
        raise Refused(f"tenant {tenant.slug} is already in shared placement")
    if tenant.status in (Status.SUSPENDED, Status.MIGRATING):
        raise Refused(f"tenant {tenant.slug} is {tenant.status}; reactivate it first")
    if online and tenant.status != Status.ACTIVE:
        raise Refused(f"tenant {tenant.slug} is {tenant.status}: an online move needs an active tenant")
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


def execute(run: MigrationRun, *, resume: bool = False) -> MigrationRun:
    with closing_connections():
        return run_execute(run.pk, resume=resume)


def enqueue(run: MigrationRun, *, resume: bool = False) -> str:
    """Hand the run to the django-q2 cluster; the task is a no-op if the run is taken or over."""
    from django_q.tasks import async_task

    return async_task("migration_jobs.tasks.execute_run", run.pk, resume,
                      task_name=f"tenant-move-run-{run.pk}{'-resume' if resume else ''}",
                      timeout=settings.MIGRATION_TASK_TIMEOUT, group="tenant-moves")


def resumable_run(tenant: Tenant) -> MigrationRun:
    """The tenant's unfinished run whose worker is gone, or Refused."""
    run = tenant.migration_runs.filter(status=RunStatus.RUNNING).first()
    if run is None:
        raise Refused(f"tenant {tenant.slug} has no interrupted run to resume")
    if not lock_is_free(run.pk):
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
        return run_rollback(run.pk, reason="rolled back on request (interrupted run)")
    except StepFailed as exc:
        raise Refused(str(exc)) from None


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
    from datetime import timedelta

    from django.utils import timezone

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
    # source_placement: where the legacy rows are; target_placement: where the tenant lives.
    legacy_in = moved.source_placement if moved.kind == RunKind.MOVE_BACK else Placement.SHARED
    return _create_run(tenant, kind=RunKind.RETIRE, source_placement=legacy_in,
                       target_placement=tenant.placement, target_schema=moved.target_schema,
                       target_database=moved.target_database, target_server=moved.target_server,
                       requested_by=requested_by, requested_via=via)


def _dedicated_place_exists(run: MigrationRun) -> bool:
    """Whether the schema or database a move back came from is still there."""
    from migration_jobs.engine import provision

    if run.source_placement == Placement.SCHEMA:
        return provision.schema_exists(run.target_schema)
    return provision.database_exists(run.target_server, run.target_database)


READ_SHARES = (0, 10, 50, 100)


def set_read_share(run: MigrationRun, percent: int) -> MigrationRun:
    """The gradual read switch: serve this share of the tenant's read-only requests from the
    target of an online move while it is kept in sync (0 -> 10 -> 50 -> 100)."""
    from tenancy.routing import notify_change

    if percent not in READ_SHARES:
        raise Refused(f"read share must be one of {', '.join(map(str, READ_SHARES))}")
    if not (run.online and run.kind == RunKind.MOVE and run.status in ACTIVE_STATUSES):
        raise Refused(f"run {run.pk} is not an active online move: reads can only switch during one")
    with transaction.atomic():
        MigrationRun.objects.filter(pk=run.pk).update(read_percent=percent, hold_cutover=True if percent < 100
                                                      else run.hold_cutover)
        notify_change(run.tenant_id)
    run.refresh_from_db()
    return run


def release_cutover(run: MigrationRun) -> MigrationRun:
    """Let a held online move cut over (at its next catch-up round)."""
    if not (run.online and run.status in ACTIVE_STATUSES):
        raise Refused(f"run {run.pk} is not an active online move")
    MigrationRun.objects.filter(pk=run.pk).update(hold_cutover=False)
    run.refresh_from_db()
    return run


def run_report(run: MigrationRun) -> dict:
    """What `--json` prints and the API returns: never a password."""
    run.refresh_from_db()
    verify = run.report.get("verify", {}).get("tables", {})
    return {
        "run_id": run.pk, "tenant": run.tenant.slug, "kind": run.kind, "status": run.status,
        "source": run.source_placement, "target": run.target_placement,
        "server": run.target_server.name if run.target_server_id else None,
        "database": run.target_database or None, "schema": run.target_schema or None,
        "dry_run": run.dry_run, "error": run.error or None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "seconds": run.duration.total_seconds() if run.duration else None,
        "rows_copied": run.rows_copied, "bytes_copied": run.bytes_copied,
        "rows_per_second": round(run.rows_per_second, 1) if run.rows_per_second else None,
        "online": run.online, "freeze_seconds": run.freeze_seconds,
        "lag": {"changes": run.lag_changes, "oldest_seconds": run.lag_seconds} if run.online else None,
        "tables": {name: {"rows": t.get("target_rows"), "checksum": t.get("target_checksum"), "ok": t.get("ok")}
                   for name, t in verify.items()},
        "steps": [{"name": s.name, "status": s.status, "rows": s.rows, "message": s.message,
                   "seconds": s.duration.total_seconds() if s.duration else None} for s in run.steps.all()],
        "preflight": run.report.get("preflight"),
    }
