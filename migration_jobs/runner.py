"""Runs a MigrationRun: its steps in order, each recorded, each idempotent, each with a
compensating rollback.

- Exactly one worker executes a run: it holds a PostgreSQL advisory lock keyed by the run
  for as long as it works. A worker that dies loses its connection and so its lock, which
  is how a resume knows the previous worker is really gone.
- A step that raises triggers the rollback of every step done so far, newest first, and
  the run ends `rolled_back` with the reason. A crash (the process killed) leaves the run
  `running` with no lock holder: `resume` goes on from the first unfinished step,
  `rollback` undoes what was done. The shared database is never what gets repaired.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from migration_jobs.engine import provision
from migration_jobs.engine.places import Place, database_place, schema_place, shared_place
from migration_jobs.engine.tables import TableSpec, tenant_tables
from migration_jobs.exceptions import StepFailed
from migration_jobs.models import MigrationRun, MigrationStep, RunKind, RunStatus, StepStatus
from tenancy.models import DatabaseCredential, Placement, Status, Tenant
from tenancy.routing import set_read_switch

log = logging.getLogger(__name__)
RUN_LOCK_NAMESPACE = 74_211  # first key of pg_advisory_lock(int, int) for runs


class WorkerKilled(BaseException):
    """Test hook: behaves like the process dying (no rollback, lock released)."""


# Fault injection for tests: names of checkpoints ("before:copy", "after:verify",
# "copy:shop_repair") mapped to the exception to raise there.
FAULTS: dict[str, BaseException | type[BaseException]] = {}


def checkpoint(name: str) -> None:
    fault = FAULTS.get(name)
    if fault is not None:
        raise fault if isinstance(fault, BaseException) else fault(f"injected fault at {name}")


# --- Secrets never leave in messages ------------------------------------------------------

def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def known_secrets(run: MigrationRun) -> list[str]:
    found = []
    try:
        found.append(run.tenant.credential.password())
    except Exception:  # noqa: BLE001 - no credential, or undecryptable: nothing to hide
        pass
    for server in {run.target_server, getattr(getattr(run.tenant, "credential", None), "server", None)} - {None}:
        try:
            found.append(server.admin_password())
        except Exception:  # noqa: BLE001
            pass
    found.append(settings.DATABASES["default"].get("PASSWORD") or "")
    return found


# --- Context ------------------------------------------------------------------------------

@dataclass
class RunContext:
    run: MigrationRun
    tables: list[TableSpec] = field(default_factory=tenant_tables)

    @property
    def tenant(self) -> Tenant:
        return self.run.tenant

    def refresh_tenant(self) -> Tenant:
        self.run.tenant = Tenant.objects.select_related().get(pk=self.run.tenant_id)
        return self.run.tenant

    @property
    def retires_dedicated(self) -> bool:
        """A retirement of the dedicated place a move back left (not of legacy shared rows)."""
        return self.run.kind == RunKind.RETIRE and self.run.target_placement == Placement.SHARED

    @property
    def reads_dedicated(self) -> bool:
        """The rows are read from the dedicated place: a move back, or retiring the place it left."""
        return self.run.kind == RunKind.MOVE_BACK or self.retires_dedicated

    @property
    def dedicated(self) -> Place:
        """The dedicated side: the target of a move out, the source of a move back."""
        run = self.run
        kind = run.source_placement if self.reads_dedicated else run.target_placement
        if kind == Placement.SCHEMA:
            return schema_place(run.target_schema)
        return database_place(run.target_server, run.target_database)

    @property
    def source(self) -> Place:
        """Where the rows are read from (for a retirement: the legacy rows)."""
        return self._share(self.dedicated if self.reads_dedicated else shared_place())

    @property
    def target(self) -> Place:
        return self._share(self.dedicated if self.run.kind == RunKind.MOVE else shared_place())

    def _share(self, place: Place) -> Place:
        # An online move shares the servers with the tenant's and everyone else's traffic.
        return place.gentle() if self.run.online else place

    @property
    def copy_workers(self) -> int:
        """Parallel table copies: fewer online, where the copy's length costs no downtime but
        every core it takes is missed by the other tenants' requests."""
        return settings.MIGRATION_ONLINE_COPY_WORKERS if self.run.online else settings.MIGRATION_COPY_WORKERS

    def step(self, name: str) -> MigrationStep:
        return self.run.steps.get(name=name)

    def save_details(self, step: MigrationStep, **details) -> None:
        step.details = {**step.details, **details}
        MigrationStep.objects.filter(pk=step.pk).update(details=step.details)

    def progress(self, rows: int | None = None, bytes_: int | None = None) -> None:
        fields = {"heartbeat_at": timezone.now()}
        if rows is not None:
            fields["rows_copied"] = rows
            started = self.run.started_at or timezone.now()
            elapsed = max((timezone.now() - started).total_seconds(), 1e-6)
            fields["rows_per_second"] = rows / elapsed
        if bytes_ is not None:
            fields["bytes_copied"] = bytes_
        MigrationRun.objects.filter(pk=self.run.pk).update(**fields)
        for key, value in fields.items():
            setattr(self.run, key, value)


# --- The lock that makes one worker the owner of a run ------------------------------------

@contextmanager
def run_lock(run_id: int):
    """Hold the run's advisory lock on a connection of its own; yields False if taken."""
    db = settings.DATABASES["default"]
    info = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "dbname": db["NAME"]}
    if db.get("PASSWORD"):
        info["password"] = db["PASSWORD"]
    conn = psycopg.connect(**info, autocommit=True, application_name=f"tenant-move-run-{run_id}")
    got = False
    try:
        got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (RUN_LOCK_NAMESPACE, run_id)).fetchone()[0]
        yield got
    finally:
        # Unlock explicitly: closing also releases it, but only once the server backend has
        # exited, and a worker that looks right after (lock_is_free, then execute) must not
        # find it still taken.
        if got and not conn.closed:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (RUN_LOCK_NAMESPACE, run_id))
            except psycopg.Error:
                pass  # connection lost: the server releases the lock with the session
        conn.close()


def lock_is_free(run_id: int) -> bool:
    with run_lock(run_id) as got:
        return got


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- Draining in-flight writes --------------------------------------------------------------

def wait_for_older_transactions(since, timeout: float) -> int:
    """Wait until no transaction that began before `since` is open in the shared database."""
    deadline = time.monotonic() + timeout
    while True:
        with connection.cursor() as cur:
            cur.execute("""SELECT count(*) FROM pg_stat_activity
                            WHERE datname = current_database() AND pid <> pg_backend_pid()
                              AND backend_type = 'client backend'  -- not autovacuum workers
                              AND xact_start < %s AND state <> 'idle'
                              AND application_name NOT LIKE 'tenant-move%%'""", [since])
            left = cur.fetchone()[0]
        if left == 0 or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


# --- Steps --------------------------------------------------------------------------------

class Step:
    name = ""
    label = ""
    point_of_no_return = False  # once it succeeded, the tenant writes to the target: never undo

    def run(self, ctx: RunContext, step: MigrationStep) -> str:
        raise NotImplementedError

    def rollback(self, ctx: RunContext, step: MigrationStep) -> str:
        return "nothing to undo"


def _set_tenant(tenant_id: int, **fields) -> Tenant:
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant_id)
        for key, value in fields.items():
            setattr(tenant, key, value)
        tenant.save()  # signals notify every process's route cache at commit
    return tenant


class Preflight(Step):
    name, label = "preflight", "Preflight checks"

    def run(self, ctx, step):
        from migration_jobs.engine import preflight as pf

        run, tenant = ctx.run, ctx.refresh_tenant()
        report = pf.PreflightReport()
        expected = run.source_placement
        report.add("placement", tenant.placement == expected, f"tenant is in {tenant.placement} placement",
                   f"the tenant must be in {expected} placement for this run")
        report.add("status", tenant.status in (Status.ACTIVE, Status.READ_ONLY) or (
            tenant.status == Status.MIGRATING and run.previous_status), f"tenant status is {tenant.status}",
                   "reactivate the tenant (or finish the run that froze it) first")
        workers = ctx.copy_workers
        with ctx.source.connect() as conn:
            pf.check_source(conn, ctx.source, tenant.pk, ctx.tables, report)
            pf.check_server(conn, "source server", report, need_create_db=False, connections_needed=workers + 2)
        if ctx.dedicated.kind == "database" and run.kind == RunKind.MOVE:
            self._check_target_server(ctx, report, workers)
        if run.kind == RunKind.MOVE_BACK:
            from migration_jobs.engine.collisions import find_collisions

            collisions = find_collisions(ctx.dedicated, shared_place(), tenant.pk, ctx.tables)
            report.add("key collisions", not collisions,
                       f"{collisions or 'none'}",
                       "rows in the shared tables of other tenants use the same keys; "
                       "renumber them before moving this tenant back")
        run.rows_total = report.total_rows
        run.report = {**run.report, "preflight": report.as_dict()}
        run.save(update_fields=["rows_total", "report"])
        self_details = report.as_dict()
        ctx.save_details(step, **self_details)
        if not report.ok:
            raise StepFailed("preflight failed: " + report.summary())
        return report.summary()

    def _check_target_server(self, ctx, report, workers):
        from migration_jobs.engine import preflight as pf

        server, database = ctx.run.target_server, ctx.run.target_database
        try:
            with provision.admin_connection(server) as conn:
                pf.check_server(conn, f"server {server.name}", report, need_create_db=True,
                                connections_needed=workers + 2)
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        except psycopg.OperationalError as exc:
            report.add(f"server {server.name}: reachable", False, type(exc).__name__,
                       "check the server's host, port, admin user and password, and that it accepts connections")
            return
        report.add(f"server {server.name}: reachable", True, f"{server.host}:{server.port}")
        if exists:
            with psycopg.connect(**server.conninfo(database)) as conn:
                # Tenant tables come from the configured tenant apps, never from an app's name.
                others = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                                      "AND tablename <> ALL(%s) AND tablename <> 'django_migrations' "
                                      "AND tablename <> 'tenant_move_fence'",
                                      ([t.name for t in tenant_tables()],)).fetchone()[0]
            report.add("target database", others == 0,
                       f"database {database} exists (left by an earlier run); it will be emptied and reused"
                       if not others else f"database {database} exists and holds {others} unrelated tables",
                       "choose another server or drop that database")


class Suspend(Step):
    name, label = "suspend", "Freeze the tenant's writes"

    def run(self, ctx, step):
        run = ctx.run
        tenant = ctx.refresh_tenant()
        if not run.previous_status:
            run.previous_status = tenant.status
            run.save(update_fields=["previous_status"])
        changed_at = timezone.now()
        if tenant.status != Status.MIGRATING:
            # Reads go on; writes get 503 + Retry-After (requests) or TenantWriteRefused (ORM).
            _set_tenant(tenant.pk, status=Status.MIGRATING)
        # And in the database itself, whatever a process with a stale route cache believes.
        freeze(ctx, f"being moved by run {run.pk}")
        left = wait_for_older_transactions(changed_at, settings.MIGRATION_DRAIN_TIMEOUT)
        if left:
            raise StepFailed(f"{left} transactions begun before the tenant was frozen are still open after "
                             f"{settings.MIGRATION_DRAIN_TIMEOUT}s")
        return f"tenant {tenant.slug} is migrating, writes refused (was {run.previous_status}); in-flight transactions drained"

    def rollback(self, ctx, step):
        previous = ctx.run.previous_status or Status.ACTIVE
        unfreeze(ctx)
        _set_tenant(ctx.run.tenant_id, status=previous)
        return f"fence removed, status restored to {previous}"


class Backup(Step):
    name, label = "backup", "Export the tenant"

    def run(self, ctx, step):
        from migration_jobs.engine.archive import read_manifest, write_archive

        path = settings.BACKUP_DIR / f"{ctx.tenant.slug}-run{ctx.run.pk}.tar"
        if path.exists():
            manifest = read_manifest(path)  # a resumed run keeps the export it made
        else:
            manifest = write_archive(ctx.source, ctx.tenant, ctx.tables, path)
        rows = sum(t["rows"] for t in manifest["tables"])
        ctx.save_details(step, path=str(path), rows=rows, bytes=path.stat().st_size)
        step.rows = rows
        step.bytes = path.stat().st_size
        return f"{rows} rows exported to {path.name} ({path.stat().st_size // 1024} KiB)"

    def rollback(self, ctx, step):
        return f"export kept at {step.details.get('path', '?')}"


def _guard_not_live(ctx: RunContext) -> None:
    """Never create over, empty or drop the place where the tenant lives now."""
    tenant = ctx.refresh_tenant()
    if ctx.run.kind == RunKind.MOVE and tenant.placement != Placement.SHARED:
        raise StepFailed(f"tenant {tenant.slug} is in {tenant.placement} placement: refusing to touch its target")


class Provision(Step):
    name, label = "provision", "Create the target schema or database"

    def run(self, ctx, step):
        _guard_not_live(ctx)
        run = ctx.run
        if run.target_placement == Placement.SCHEMA:
            with connection.cursor() as cur:
                from psycopg import sql

                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(run.target_schema)).as_string(connection.connection))
            ctx.save_details(step, schema=run.target_schema)
            return f"schema {run.target_schema} ready"
        server, database = run.target_server, run.target_database
        role = provision.role_name(database)
        credential = DatabaseCredential.objects.filter(tenant=ctx.tenant).first()
        if credential and (credential.server_id, credential.database, credential.role) == (server.pk, database, role):
            password = credential.password()  # resumed: keep the role's password
        else:
            password = provision.new_password()
        provision.ensure_role(server, role, password)
        provision.ensure_database(server, database, role)
        if credential is None:
            credential = DatabaseCredential(tenant=ctx.tenant)
        credential.server, credential.database, credential.role = server, database, role
        credential.set_password(password)
        credential.save()
        ctx.save_details(step, server=server.name, database=database, role=role, credential_id=credential.pk)
        return f"database {database} and role {role} ready on server {server.name}"

    def rollback(self, ctx, step):
        run = ctx.run
        tenant = ctx.refresh_tenant()
        if run.target_placement == Placement.SCHEMA:
            if tenant.placement == Placement.SCHEMA:
                return "tenant lives in the schema: kept"
            provision.drop_schema(run.target_schema)
            return f"schema {run.target_schema} dropped"
        if tenant.placement == Placement.DATABASE:
            return "tenant lives in the database: kept"
        provision.drop_database(run.target_server, run.target_database, provision.role_name(run.target_database))
        DatabaseCredential.objects.filter(tenant=tenant, database=run.target_database).delete()
        return f"database {run.target_database} and its role dropped, credential deleted"


class CreateTables(Step):
    name, label = "create_tables", "Apply migrations on the target"

    def run(self, ctx, step):
        _guard_not_live(ctx)
        run = ctx.run
        if run.target_placement == Placement.SCHEMA:
            provision.ensure_schema(run.target_schema)
        else:
            role = provision.role_name(run.target_database)
            provision.migrate_database(run.target_server, run.target_database)
            provision.grant_existing(run.target_server, run.target_database, role)
        _compare_columns(ctx.source, ctx.target, ctx.tables)
        from migration_jobs.engine import capture

        with ctx.target.connect() as conn:
            # A place the tenant left by moving back keeps a legacy fence on its rows; the copy
            # replaces those rows, and the tenant must be writable there after the switch.
            capture.remove_fence(conn, ctx.target, ctx.tenant.pk, ctx.tables)
        return f"{len(ctx.tables)} tables migrated on {ctx.target}"


def _compare_columns(source: Place, target: Place, tables) -> None:
    from migration_jobs.engine.archive import column_types

    with source.connect() as s, target.connect() as t:
        for table in tables:
            a, b = column_types(s, source, table), column_types(t, target, table)
            if a != b:
                raise StepFailed(f"{table.name}: columns differ between {source} and {target}; "
                                 "run `manage.py migrate` so both are at the same migration")


class Copy(Step):
    name, label = "copy", "Copy the rows"

    def run(self, ctx, step):
        from migration_jobs.engine import deferral
        from migration_jobs.engine.copy import copy_tenant

        _guard_not_live(ctx)
        source, target, tenant_id = ctx.source, ctx.target, ctx.tenant.pk
        done: dict = dict(step.details.get("tables", {}))
        deferred = step.details.get("deferred")
        if deferred is None:
            # Recorded before anything is dropped, so a crash in between can be repaired.
            with target.connect() as conn:
                deferred = [obj for t in ctx.tables for obj in deferral.secondary_objects(conn, target, t.name)]
            ctx.save_details(step, deferred=deferred)
        with target.connect(autocommit=True) as conn:
            deferral.drop_secondary(conn, target, deferred)
        lock = threading.Lock()
        copied = {"rows": sum(t["rows"] for t in done.values()), "bytes": sum(t["bytes"] for t in done.values())}

        def on_table_done(name, result):
            with lock:
                done[name] = {"rows": result.rows, "bytes": result.bytes, "seconds": round(result.seconds, 3)}
                copied["rows"] += result.rows
                copied["bytes"] += result.bytes
                ctx.save_details(step, tables=done)
                ctx.progress(copied["rows"], copied["bytes"])
                if threading.current_thread() is not threading.main_thread():
                    connection.close()  # this worker thread's ORM connection
            checkpoint(f"copy:{name}")

        copy_tenant(source, target, tenant_id, ctx.tables, skip=frozenset(done),
                    workers=ctx.copy_workers, on_table_done=on_table_done)
        checkpoint("copy:before-indexes")
        with target.connect(autocommit=True) as conn:
            deferral.restore_secondary(conn, target, deferred, workers=ctx.copy_workers,
                                       maintenance_work_mem=settings.MIGRATION_INDEX_MEMORY)
            # Fresh tables have no statistics: the tenant's first queries there would plan blind.
            from psycopg import sql

            conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(target.table(t.name) for t in ctx.tables)))
        step.rows, step.bytes = copied["rows"], copied["bytes"]
        ctx.progress(copied["rows"], copied["bytes"])
        return f"{copied['rows']} rows, {copied['bytes'] // 1024} KiB in {len(done)} tables"


class Sequences(Step):
    name, label = "sequences", "Set sequences past the copied keys"

    def run(self, ctx, step):
        from migration_jobs.engine.sequences import sequence_positions, set_sequences

        with ctx.source.connect() as s:
            floor = sequence_positions(s, ctx.source, ctx.tables)
        with ctx.target.connect() as t:
            values = set_sequences(t, ctx.target, ctx.tables, floor)
            t.commit()
        ctx.save_details(step, sequences=values)
        return f"{len(values)} sequences set"


class Verify(Step):
    name, label = "verify", "Verify every row"

    def run(self, ctx, step):
        from migration_jobs.engine.verify import verify_tenant

        report = verify_tenant(ctx.source, ctx.target, ctx.tenant.pk, ctx.tables,
                               target_is_dedicated=ctx.run.kind == RunKind.MOVE)
        data = report.as_dict()
        ctx.run.report = {**ctx.run.report, "verify": data}
        ctx.run.save(update_fields=["report"])
        ctx.save_details(step, **data)
        rows = sum(t["target_rows"] for t in data["tables"].values())
        step.rows = rows
        if not report.ok:
            raise StepFailed(f"verification failed for {', '.join(report.mismatches)}")
        return f"{rows} rows in {len(data['tables'])} tables match (counts and checksums); no foreign rows"


class Switch(Step):
    name, label = "switch", "Route the tenant to its new place"

    def run(self, ctx, step):
        tenant = ctx.refresh_tenant()
        if tenant.status != Status.MIGRATING:
            raise StepFailed(f"tenant status changed to {tenant.status} during the run; not switching")
        switch_placement(ctx)
        return f"placement {ctx.run.source_placement} -> {ctx.run.target_placement}; the old rows are fenced"

    def rollback(self, ctx, step):
        unswitch_placement(ctx)
        return f"placement back to {ctx.run.source_placement}"


# --- Fences around the moving tenant's rows (see engine/capture.py) -------------------------

def freeze(ctx: RunContext, reason: str) -> None:
    """Every write to the tenant's rows in the source fails from now on (database-enforced)."""
    from migration_jobs.engine import capture

    with ctx.source.connect() as conn:
        capture.install_fence(conn, ctx.source, ctx.tenant.pk, ctx.tenant.slug, ctx.tables)
        capture.close_fence(conn, ctx.source, ctx.tenant.pk, reason)


def unfreeze(ctx: RunContext) -> None:
    from migration_jobs.engine import capture

    with ctx.source.connect() as conn:
        capture.remove_fence(conn, ctx.source, ctx.tenant.pk, ctx.tables)


def switch_placement(ctx: RunContext, status: str | None = None, source_conn=None) -> None:
    """The target becomes the tenant's place; the source's rows stay fenced as legacy rows."""
    from migration_jobs.engine import capture

    run = ctx.run
    if run.kind == RunKind.MOVE_BACK:
        with ctx.target.connect() as conn:  # shared: its legacy fence from the move out goes
            capture.remove_fence(conn, ctx.target, run.tenant_id, ctx.tables)
    fields = {"placement": run.target_placement}
    if status:
        fields["status"] = status
    _set_tenant(run.tenant_id, **fields)
    reason = f"legacy rows: tenant moved to {run.target_placement} by run {run.pk}"
    if source_conn is not None:  # in the freeze: the fence objects exist already
        capture.close_fence(source_conn, ctx.source, run.tenant_id, reason, ensure=False)
        return
    with ctx.source.connect() as conn:
        capture.close_fence(conn, ctx.source, run.tenant_id, reason)


def unswitch_placement(ctx: RunContext) -> None:
    from migration_jobs.engine import capture

    run = ctx.run
    _set_tenant(run.tenant_id, placement=run.source_placement)
    if run.kind == RunKind.MOVE_BACK:
        with ctx.target.connect() as conn:
            capture.install_fence(conn, ctx.target, run.tenant_id, ctx.tenant.slug, ctx.tables)
            capture.close_fence(conn, ctx.target, run.tenant_id, f"legacy rows: tenant lives in {run.source_placement}")


class Reactivate(Step):
    name, label = "reactivate", "Reactivate the tenant"

    def run(self, ctx, step):
        status = ctx.run.previous_status or Status.ACTIVE
        _set_tenant(ctx.run.tenant_id, status=status)
        return f"status {status}"


class StartCapture(Step):
    name, label = "capture", "Start capturing the tenant's changes"

    def run(self, ctx, step):
        from migration_jobs.engine import capture

        tenant = ctx.refresh_tenant()
        with ctx.source.connect() as conn:
            capture.start_capture(conn, ctx.source, ctx.run.pk, tenant.pk, ctx.tables)
            # Installed now (inactive), so the cutover's freeze is a row insert, not DDL.
            capture.install_fence(conn, ctx.source, tenant.pk, tenant.slug, ctx.tables)
        return f"triggers on {len(ctx.tables)} tables of {ctx.source} log the tenant's changes"

    def rollback(self, ctx, step):
        from migration_jobs.engine import capture

        with ctx.source.connect() as conn:
            capture.stop_capture(conn, ctx.source, ctx.run.pk, ctx.tables)
            if ctx.refresh_tenant().placement == ctx.run.source_placement:
                capture.remove_fence(conn, ctx.source, ctx.run.tenant_id, ctx.tables)
        return "capture triggers, function and change log removed"


def _record_lag(ctx: RunContext) -> "object":
    from migration_jobs.engine import capture

    with ctx.source.connect() as conn:
        lag = capture.lag(conn, ctx.source, ctx.run.pk)
    MigrationRun.objects.filter(pk=ctx.run.pk).update(lag_changes=lag.changes, lag_seconds=lag.oldest_seconds,
                                                      heartbeat_at=timezone.now())
    ctx.run.lag_changes, ctx.run.lag_seconds = lag.changes, lag.oldest_seconds
    return lag


def _compare_round(ctx: RunContext, number: int):
    """A catch-up round that also compares every table at one consistent point."""
    from migration_jobs.engine import capture

    result = capture.apply_round(ctx.source, ctx.target, ctx.run.pk, ctx.tenant.pk, ctx.tables, number,
                                 compare=True)
    if result.mismatches:
        raise StepFailed(f"source and target diverge in {', '.join(result.mismatches)}")
    return result


class CatchUp(Step):
    name, label = "catch_up", "Apply captured changes until the lag is small"

    def run(self, ctx, step):
        from migration_jobs.engine import capture

        number = step.details.get("round", 0)
        applied = step.details.get("applied", 0)
        deadline = time.monotonic() + settings.MIGRATION_CATCHUP_TIMEOUT
        hold_deadline = time.monotonic() + settings.MIGRATION_HOLD_MAX_SECONDS
        last_compare = time.monotonic()
        while True:
            number += 1
            result = capture.apply_round(ctx.source, ctx.target, ctx.run.pk, ctx.tenant.pk, ctx.tables, number)
            applied += result.changes
            lag = _record_lag(ctx)
            ctx.save_details(step, round=number, applied=applied, last_round=result.changes)
            checkpoint("catch_up:round")
            hold = MigrationRun.objects.values_list("hold_cutover", flat=True).get(pk=ctx.run.pk)
            if hold:
                if time.monotonic() > hold_deadline:
                    raise StepFailed(f"cutover held for more than {settings.MIGRATION_HOLD_MAX_SECONDS:.0f}s")
                # Kept in sync for the gradual read switch: compare now and then.
                if time.monotonic() - last_compare >= settings.MIGRATION_DIVERGENCE_INTERVAL:
                    number += 1
                    _compare_round(ctx, number)
                    last_compare = time.monotonic()
                    ctx.save_details(step, round=number, compared_at_round=number,
                                     comparisons=step.details.get("comparisons", 0) + 1)
                time.sleep(settings.MIGRATION_CATCHUP_INTERVAL)
                continue
            if lag.changes <= settings.MIGRATION_CUTOVER_MAX_CHANGES:
                break
            if time.monotonic() > deadline:
                raise StepFailed(f"lag did not shrink below {settings.MIGRATION_CUTOVER_MAX_CHANGES} changes in "
                                 f"{settings.MIGRATION_CATCHUP_TIMEOUT:.0f}s (now {lag.changes})")
            if result.changes < settings.MIGRATION_CUTOVER_MAX_CHANGES:
                time.sleep(settings.MIGRATION_CATCHUP_INTERVAL)
        # A full comparison before the freeze; the freeze then only compares what changed since.
        number += 1
        _compare_round(ctx, number)
        verified = number
        # The comparison took a while and changes piled up: catch up again, so that the freeze
        # has only the last few to apply.
        for _ in range(50):
            number += 1
            applied += capture.apply_round(ctx.source, ctx.target, ctx.run.pk, ctx.tenant.pk, ctx.tables,
                                           number).changes
            if _record_lag(ctx).changes <= settings.MIGRATION_CUTOVER_MAX_CHANGES:
                break
        ctx.save_details(step, round=number, verified_round=verified)
        step.rows = applied
        return f"{applied} changes applied in {number} rounds; all tables compared at round {number}"


class Cutover(Step):
    name, label = "cutover", "Freeze, drain, apply the rest, verify, switch"
    point_of_no_return = True

    def run(self, ctx, step):
        from migration_jobs.engine import capture
        from migration_jobs.engine.sequences import sequence_positions, set_sequences
        from migration_jobs.engine.verify import fingerprint

        run, tenant = ctx.run, ctx.refresh_tenant()
        catch_up = ctx.step("catch_up")
        number = catch_up.details.get("round", 0)
        verified_round = catch_up.details.get("verified_round", 0)
        previous = run.previous_status or tenant.status
        if not run.previous_status:
            run.previous_status = previous
            run.save(update_fields=["previous_status"])
        # Before the freeze: sequences past the source's with a margin, so that in the freeze
        # they only need a check; connections opened, so that opening them is not part of it.
        _set_sequences(ctx, sequence_positions, set_sequences, margin=settings.MIGRATION_SEQUENCE_MARGIN)
        _checkpoint_servers(ctx)
        source_conn = ctx.source.connect()
        rounds = capture.round_connections(ctx.source, ctx.target)
        # Last rounds before the freeze, on the connections the freeze uses: they leave it only
        # the changes of the last few milliseconds, and warm those sessions' caches.
        for _ in range(10):
            number += 1
            if capture.apply_round(ctx.source, ctx.target, run.pk, tenant.pk, ctx.tables, number,
                                   connections=rounds).changes <= settings.MIGRATION_FREEZE_MAX_CHANGES:
                break
        frozen_at = timezone.now()
        started = time.monotonic()
        phases = {}

        def lap(name):
            phases[name] = round(1000 * (time.monotonic() - started) - sum(phases.values()), 1)

        try:
            _set_tenant(tenant.pk, status=Status.MIGRATING)  # requests: 503 + Retry-After
            capture.close_fence(source_conn, ctx.source, tenant.pk, f"cutover of run {run.pk}",  # and the database
                                ensure=False)  # its objects exist since the capture step
            lap("freeze")
            left = wait_for_older_transactions(frozen_at, settings.MIGRATION_DRAIN_TIMEOUT)
            if left:
                raise StepFailed(f"{left} transactions begun before the freeze did not finish")
            lap("drain")
            applied = []
            for _ in range(20):
                number += 1
                result = capture.apply_round(ctx.source, ctx.target, run.pk, tenant.pk, ctx.tables, number,
                                             connections=rounds)
                applied.append([result.changes, round(1000 * result.seconds, 1)])
                if result.changes == 0:
                    break
            else:
                raise StepFailed("changes kept arriving after the freeze")
            lap("apply")
            checkpoint("cutover:applied")
            self._check_sequences(ctx, *rounds, sequence_positions, set_sequences)
            lap("sequences")
            problems = self._verify_since(ctx, verified_round, fingerprint, *rounds)
            if problems:
                raise StepFailed(f"verification at cutover failed: {'; '.join(problems)}")
            lap("verify")
            checkpoint("cutover:before-switch")
            switch_placement(ctx, status=previous, source_conn=source_conn)
            lap("switch")
        except Exception:
            # Unfreeze where the tenant still lives; nothing was written anywhere else.
            with ctx.source.connect() as conn:
                capture.open_fence(conn, ctx.source, tenant.pk)
            _set_tenant(tenant.pk, status=previous)
            raise
        finally:
            for conn in (source_conn, *rounds):
                conn.close()
        seconds = time.monotonic() - started
        run.freeze_seconds, run.freeze_started_at, run.freeze_ended_at = seconds, frozen_at, timezone.now()
        run.save(update_fields=["freeze_seconds", "freeze_started_at", "freeze_ended_at"])
        ctx.save_details(step, freeze_seconds=seconds, final_round=number, phases_ms=phases,
                         final_rounds=applied)  # [changes, ms] of each round in the freeze
        return f"writes frozen for {seconds * 1000:.0f} ms; placement now {run.target_placement}"

    @staticmethod
    def _check_sequences(ctx, src, dst, sequence_positions, set_sequences) -> None:
        """In the freeze: raise a target sequence only if the source went past it (rare: the
        margin set before the freeze covers the writes the catch-up left). One query a side."""
        from migration_jobs.engine.sequences import all_positions

        source, target = all_positions(src, ctx.source, ctx.tables), all_positions(dst, ctx.target, ctx.tables)
        behind = {table: value for table, value in source.items() if value > target.get(table, 0)}
        src.rollback()
        if behind:
            set_sequences(dst, ctx.target, [t for t in ctx.tables if t.name in behind], behind)
        dst.commit()

    @staticmethod
    def _verify_since(ctx, verified_round, fingerprint, src, dst) -> list[str]:
        """The final state, incrementally: every table was compared in full at round
        `verified_round`; since then only logged keys changed, on the source (the capture
        logs every write) and on the target (only the catch-up writes there, and only logged
        keys). So comparing the rows of every key logged since then, on both sides, proves
        the whole tables equal, counts included, in milliseconds instead of a full scan."""
        from migration_jobs.engine import capture

        problems = []
        changed = capture.changed_keys(src, ctx.source, ctx.run.pk, verified_round)
        for table in ctx.tables:
            keys = changed.get(table.name)
            if keys and fingerprint(src, ctx.source, table, ctx.tenant.pk, keys) != fingerprint(
                    dst, ctx.target, table, ctx.tenant.pk, keys):
                problems.append(f"{table.name}: rows changed since the last full comparison differ")
        src.rollback()
        dst.rollback()
        return problems


def _checkpoint_servers(ctx) -> None:
    """Flush dirty buffers just before the freeze: the commits in the freeze must not queue
    behind a checkpoint's writes (the copy just wrote a whole tenant). Needs superuser or
    pg_checkpoint; without it the freeze is only slower."""
    for place in {ctx.source.label: ctx.source, ctx.target.label: ctx.target}.values():
        try:
            with place.connect(autocommit=True) as conn:
                conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            log.info("no privilege to CHECKPOINT %s before the freeze", place)


def _set_sequences(ctx, sequence_positions, set_sequences, margin: int = 0) -> None:
    with ctx.source.connect() as s:
        floor = {table: value + margin for table, value in sequence_positions(s, ctx.source, ctx.tables).items()}
    with ctx.target.connect() as t:
        set_sequences(t, ctx.target, ctx.tables, floor)
        t.commit()


class StopCapture(Step):
    name, label = "cleanup", "Remove the capture objects"

    def run(self, ctx, step):
        from migration_jobs.engine import capture

        with ctx.source.connect() as conn:
            capture.stop_capture(conn, ctx.source, ctx.run.pk, ctx.tables)
        return "capture triggers, function and change log removed; the old rows stay fenced"


class CopyBack(Step):
    name, label = "copy_back", "Copy the rows back into the shared tables"

    def run(self, ctx, step):
        from migration_jobs.engine.copy_back import copy_back

        margin = settings.MIGRATION_SEQUENCE_MARGIN if ctx.run.online else 0  # the tenant keeps inserting
        result = copy_back(ctx.source, ctx.target, ctx.tenant.pk, ctx.tables, margin=margin,
                           checkpoint=checkpoint)
        ctx.save_details(step, **result)
        step.rows = result["rows"]
        ctx.progress(result["rows"] + result["legacy_rows_reused"], result["bytes"])
        return (f"{result['rows']} rows copied back, {result['legacy_rows_reused']} legacy rows reused as they "
                f"were, {result['legacy_rows_replaced']} replaced, in one transaction")


class RetireCheck(Step):
    name, label = "retire_check", "Check where the tenant lives before retiring its legacy rows"

    def run(self, ctx, step):
        from migration_jobs.verification import verify_in_place

        tenant = ctx.refresh_tenant()
        if tenant.placement != ctx.run.target_placement:
            raise StepFailed(f"tenant {tenant.slug} is in {tenant.placement} placement, not "
                             f"{ctx.run.target_placement}: the rows to retire are not legacy")
        report = verify_in_place(tenant)
        ctx.run.report = {**ctx.run.report, "verify_in_place": report}
        ctx.run.save(update_fields=["report"])
        if not report["ok"]:
            raise StepFailed(f"the tenant's rows in its {tenant.placement} place failed verification: "
                             f"{'; '.join(report['problems'])}")
        legacy = ctx.source
        with legacy.connect() as conn:
            from migration_jobs.engine.preflight import PreflightReport, check_source

            counted = PreflightReport()
            check_source(conn, legacy, tenant.pk, ctx.tables, counted)
        ctx.run.rows_total = counted.total_rows
        ctx.run.save(update_fields=["rows_total"])
        ctx.save_details(step, legacy_rows=counted.row_counts)
        return f"{tenant.placement} rows verified; {counted.total_rows} legacy rows to retire in {legacy}"


class RetireDelete(Step):
    name, label = "retire_delete", "Delete the legacy rows in batches"
    point_of_no_return = True

    def run(self, ctx, step):
        from migration_jobs.engine import capture
        from migration_jobs.engine.retire import delete_in_batches

        done = dict(step.details.get("deleted", {}))

        def on_batch(table, count):
            done[table] = done.get(table, 0) + count
            ctx.save_details(step, deleted=done)
            ctx.progress(sum(done.values()))
            checkpoint(f"retire:{table}")

        delete_in_batches(shared_place(), ctx.tenant.pk, list(reversed(ctx.tables)),
                          settings.TENANT_LEGACY_BATCH_ROWS, on_batch)
        with shared_place().connect() as conn:
            capture.remove_fence(conn, shared_place(), ctx.tenant.pk, ctx.tables)
        step.rows = sum(done.values())
        return f"{step.rows} legacy rows deleted from the shared tables; their fence removed"


MOVE_STEPS = [Preflight(), Suspend(), Backup(), Provision(), CreateTables(), Copy(), Sequences(), Verify(),
              Switch(), Reactivate()]
MOVE_BACK_STEPS = [Preflight(), Suspend(), Backup(), CopyBack(), Verify(), Switch(), Reactivate()]
# Online: the tenant stays active until a sub-second cutover.
ONLINE_MOVE_STEPS = [Preflight(), Backup(), Provision(), CreateTables(), StartCapture(), Copy(), CatchUp(),
                     Cutover(), StopCapture()]
ONLINE_MOVE_BACK_STEPS = [Preflight(), Backup(), StartCapture(), CopyBack(), CatchUp(), Cutover(), StopCapture()]


class RetireDrop(Step):
    name, label = "retire_drop", "Drop the dedicated place the tenant moved back from"
    point_of_no_return = True

    def run(self, ctx, step):
        run, tenant = ctx.run, ctx.refresh_tenant()
        if tenant.placement != Placement.SHARED:  # never drop where the tenant lives
            raise StepFailed(f"tenant {tenant.slug} is in {tenant.placement} placement: not dropping its "
                             f"{run.source_placement}")
        if run.source_placement == Placement.SCHEMA:
            provision.drop_schema(run.target_schema)
            return f"schema {run.target_schema} dropped"
        provision.drop_database(run.target_server, run.target_database, provision.role_name(run.target_database))
        DatabaseCredential.objects.filter(tenant=tenant, database=run.target_database).delete()
        return f"database {run.target_database} and its role dropped, credential deleted"


RETIRE_STEPS = [RetireCheck(), Backup(), RetireDelete()]
# The dedicated place a move back left: archived, then dropped whole (nobody else uses it).
RETIRE_DEDICATED_STEPS = [RetireCheck(), Backup(), RetireDrop()]


def steps_for(run: MigrationRun) -> list[Step]:
    if run.kind == RunKind.RETIRE:
        return RETIRE_DEDICATED_STEPS if run.target_placement == Placement.SHARED else RETIRE_STEPS
    if run.online:
        return ONLINE_MOVE_STEPS if run.kind == RunKind.MOVE else ONLINE_MOVE_BACK_STEPS
    return MOVE_STEPS if run.kind == RunKind.MOVE else MOVE_BACK_STEPS


def create_steps(run: MigrationRun) -> None:
    steps = steps_for(run)
    if run.dry_run:
        steps = steps[:1]
    MigrationStep.objects.bulk_create(
        [MigrationStep(run=run, name=s.name, order=i + 1) for i, s in enumerate(steps)])


# --- Execution ----------------------------------------------------------------------------

def _finish(run: MigrationRun, status: str, error: str = "") -> None:
    set_read_switch(run.tenant_id, 0)  # a read switch ends with its run
    run.status = status
    run.finished_at = timezone.now()
    run.current_step = ""
    if error:
        run.error = error[:4000]
    if run.started_at and run.rows_copied:
        seconds = max((run.finished_at - run.started_at).total_seconds(), 1e-6)
        run.rows_per_second = run.rows_copied / seconds
    run.save()


def _claim(run_id: int, resume: bool) -> MigrationRun | None:
    """Mark the run running if this call should execute it; None when it is a no-op."""
    with transaction.atomic():
        run = MigrationRun.objects.select_for_update(of=("self",)).select_related("tenant", "target_server").get(pk=run_id)
        if run.status == RunStatus.QUEUED or (run.status == RunStatus.RUNNING and resume):
            run.status = RunStatus.RUNNING
            run.started_at = run.started_at or timezone.now()
            run.heartbeat_at = timezone.now()
            run.worker = worker_name()
            run.save()
            return run
    log.info("run %s is %s: nothing to do", run_id, run.status)
    return None


def execute(run_id: int, *, resume: bool = False) -> MigrationRun:
    """Execute (or resume) a run. A no-op if another worker holds it or it has ended."""
    with run_lock(run_id) as owned:
        if not owned:
            log.info("run %s is being executed by another worker", run_id)
            return MigrationRun.objects.get(pk=run_id)
        run = _claim(run_id, resume)
        if run is None:
            return MigrationRun.objects.get(pk=run_id)
        ctx = RunContext(run)
        secrets = known_secrets(run)
        steps = steps_for(run)
        for definition in steps:
            step = run.steps.filter(name=definition.name).first()
            if step is None or step.status == StepStatus.SUCCEEDED:
                continue
            try:
                _run_step(ctx, definition, step)
            except Exception as exc:  # noqa: BLE001 - every failure ends in a rollback
                message = redact(f"{definition.name}: {exc}", secrets)
                step.status, step.finished_at, step.message = StepStatus.FAILED, timezone.now(), message[:4000]
                step.save()
                if _past_point_of_no_return(run):
                    # The tenant already writes to the target: undoing would lose those writes.
                    log.warning("run %s failed at %s after its cutover; not rolling back", run.pk, definition.name)
                    _finish(run, RunStatus.FAILED, f"{message} (after cutover: the tenant lives in "
                                                   f"{run.target_placement}; resume the run to finish)")
                    return run
                log.warning("run %s failed at %s; rolling back", run.pk, definition.name)
                _rollback_steps(ctx, secrets)
                run.refresh_from_db()
                failed_rollback = run.steps.filter(status=StepStatus.FAILED).exclude(pk=step.pk).exists()
                _finish(run, RunStatus.FAILED if failed_rollback else RunStatus.ROLLED_BACK, message)
                return run
        run.report = {**run.report, "summary": summary(run)}
        _finish(run, RunStatus.SUCCEEDED)
        return run


def _run_step(ctx: RunContext, definition: Step, step: MigrationStep) -> None:
    run = ctx.run
    run.current_step = definition.name
    run.heartbeat_at = timezone.now()
    run.save(update_fields=["current_step", "heartbeat_at"])
    if run.online:  # a read switch applies only while catching up; the row lock orders it with set_read_share
        with transaction.atomic():
            share = MigrationRun.objects.select_for_update().filter(pk=run.pk).values_list("read_percent", flat=True).get()
            set_read_switch(run.tenant_id, share if definition.name == "catch_up" and run.kind == RunKind.MOVE else 0,
                            run.target_placement, run.target_schema)
    step.status, step.started_at, step.finished_at = StepStatus.RUNNING, timezone.now(), None
    step.save()
    checkpoint(f"before:{definition.name}")
    message = definition.run(ctx, step)
    checkpoint(f"after:{definition.name}")
    step.status, step.finished_at, step.message = StepStatus.SUCCEEDED, timezone.now(), message
    step.save()


def _past_point_of_no_return(run: MigrationRun) -> bool:
    definitions = {d.name: d for d in steps_for(run)}
    return any(definitions[s.name].point_of_no_return
               for s in run.steps.filter(status=StepStatus.SUCCEEDED) if s.name in definitions)


def _rollback_steps(ctx: RunContext, secrets: list[str]) -> None:
    """Compensate every step that did anything, newest first. Continues past failures."""
    definitions = {d.name: d for d in steps_for(ctx.run)}
    for step in ctx.run.steps.filter(status__in=[StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.RUNNING]
                                     ).order_by("-order"):
        try:
            note = definitions[step.name].rollback(ctx, step)
            status = StepStatus.ROLLED_BACK
        except Exception as exc:  # noqa: BLE001 - report, keep undoing the rest
            note = redact(f"rollback failed: {exc}", secrets)
            status = StepStatus.FAILED
        step.message = f"{step.message}\n[rollback] {note}".strip()[:4000]
        if step.status != StepStatus.FAILED or status == StepStatus.FAILED:
            step.status = status
        step.save()


def rollback(run_id: int, reason: str = "rolled back on request") -> MigrationRun:
    """Undo a run that is not finished (its worker died, or it is queued)."""
    with run_lock(run_id) as owned:
        if not owned:
            raise StepFailed(f"run {run_id} is being executed by a live worker; wait for it or stop it first")
        run = MigrationRun.objects.select_related("tenant", "target_server").get(pk=run_id)
        if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.FAILED):
            raise StepFailed(f"run {run_id} is {run.status}: nothing to roll back")
        if _past_point_of_no_return(run):
            raise StepFailed(f"run {run_id} is past its cutover: the tenant writes to its new place; "
                             "resume it to finish, or move the tenant back")
        ctx = RunContext(run)
        _rollback_steps(ctx, known_secrets(run))
        _finish(run, RunStatus.ROLLED_BACK if run.status != RunStatus.QUEUED else RunStatus.CANCELLED, reason)
        return run


def summary(run: MigrationRun) -> dict:
    steps = [{"name": s.name, "status": s.status, "rows": s.rows, "message": s.message,
              "seconds": s.duration.total_seconds() if s.duration else None} for s in run.steps.all()]
    return {"steps": steps}


@contextmanager
def closing_connections():
    """Workers reuse processes: start and end each task with healthy ORM connections."""
    close_old_connections()
    try:
        yield
    finally:
        connection.set_schema_to_public()
        close_old_connections()
