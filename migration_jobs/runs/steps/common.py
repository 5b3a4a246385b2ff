"""Steps that several kinds of run share: preflight checks, the export, the verification."""
from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.db.models import Q

from migration_jobs.engine import preflight, provision
from migration_jobs.engine.archive import PartError, assemble_archive, parts_dir, write_archive
from migration_jobs.engine.archive_read import read_manifest
from migration_jobs.engine.collisions import find_collisions
from migration_jobs.engine.copy import engine_session
from migration_jobs.engine.places import shared_place
from migration_jobs.engine.target_server import check_target_server
from migration_jobs.engine.verify import Fingerprint, fingerprint, verify_tenant
from migration_jobs.exceptions import StepFailed
from migration_jobs.models import MigrationRun, RunKind, StepStatus
from migration_jobs.runs.steps.base import Step
from tenancy.models import Placement, Status


class Preflight(Step):
    name, label = "preflight", "Preflight checks"

    def run(self, ctx, step):
        run, tenant = ctx.run, ctx.refresh_tenant()
        report = preflight.PreflightReport()
        expected = run.source_placement
        report.add("placement", tenant.placement == expected, f"tenant is in {tenant.placement} placement",
                   f"the tenant must be in {expected} placement for this run")
        report.add("status", tenant.status in (Status.ACTIVE, Status.READ_ONLY) or (
            tenant.status == Status.MIGRATING and run.previous_status), f"tenant status is {tenant.status}",
                   "reactivate the tenant (or finish the run that froze it) first")
        workers = ctx.copy_workers
        with ctx.source.connect() as conn:
            # A move out's copy proves the references (see check_source): not scanned here.
            preflight.check_source(conn, ctx.source, tenant.pk, ctx.tables, report,
                                   references=run.kind != RunKind.MOVE)
            preflight.check_server(conn, "source server", report, need_create_db=False,
                                   connections_needed=workers + 2)
        if run.kind == RunKind.MOVE:
            database_exists = None
            if ctx.dedicated.kind == "database":
                database_exists = check_target_server(run.target_server, run.target_database, report,
                                                      connections_needed=workers + 2,
                                                      tenant_tables=[t.name for t in ctx.tables])
            check_target_place(run, report, database_exists)
        if run.kind == RunKind.MOVE_BACK:
            collisions = find_collisions(ctx.dedicated, shared_place(), tenant.pk, ctx.tables)
            report.add("key collisions", not collisions, f"{collisions or 'none'}",
                       "rows in the shared tables of other tenants use the same keys; "
                       "renumber them before moving this tenant back")
        run.rows_total = report.total_rows
        run.report = {**run.report, "preflight": report.as_dict()}
        run.save(update_fields=["rows_total", "report"])
        ctx.save_details(step, **report.as_dict())
        if not report.ok:
            raise StepFailed("preflight failed: " + report.summary())
        return report.summary()


def check_target_place(run, report: preflight.PreflightReport, database_exists: bool | None = None) -> None:
    """A move out never takes over a schema or database it did not make: one of the target's
    name that exists already is reused only when an earlier run of this tenant made it (a tenant
    moved back and out again); anything else would be filled, and dropped by a rollback.
    `database_exists`: what check_target_server found (None: its server is unreachable, which
    that check reports)."""
    # Runs of the tenant that made such a place: a move out whose provision step began, or a
    # move back (it came from one). A dry run or a run refused by its preflight made nothing.
    earlier = MigrationRun.objects.filter(tenant_id=run.tenant_id, dry_run=False).exclude(pk=run.pk).filter(
        Q(kind=RunKind.MOVE_BACK) | Q(steps__name="provision", steps__status__in=[
            StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.ROLLED_BACK]))
    if run.target_placement == Placement.SCHEMA:
        name, exists = f"schema {run.target_schema}", provision.schema_exists(run.target_schema)
        earlier = earlier.filter(target_schema=run.target_schema)
    else:
        if database_exists is None:
            return
        name, exists = f"database {run.target_database} on server {run.target_server.name}", database_exists
        earlier = earlier.filter(target_server=run.target_server, target_database=run.target_database)
    if exists:
        ours = earlier.exists()
        report.add("target place", ours,
                   f"{name} exists, left by an earlier run of this tenant: emptied and reused" if ours else
                   f"{name} exists and no run of this tenant made it",
                   "drop or rename it if it is not needed, or choose another target; a move never takes over "
                   "a schema or database it did not make")


def archive_path(ctx) -> Path:
    """The run's archive of the tenant (its parts, while a move copies: archive.parts_dir)."""
    return settings.BACKUP_DIR / f"{ctx.tenant.slug}-run{ctx.run.pk}.tar"


def remove_parts(ctx) -> str:
    folder = parts_dir(archive_path(ctx))
    if not folder.exists():
        return "nothing to undo"
    shutil.rmtree(folder, ignore_errors=True)
    return "archive parts removed"


class Backup(Step):
    """The run's archive. A move out makes it from its copy's stream (the parts the copy step
    wrote) with the checksums of exactly those rows: the verify step's (offline: the tenant is
    frozen, source and target hold the copied rows) or the target's right after the copy
    (online: catch-up changes it later). Anything else, or a copy that gave no stream (copied
    inside the server) or parts from two snapshots (an online copy resumed), reads the source
    once more (archive.write_archive)."""
    name, label = "backup", "Export the tenant"

    def run(self, ctx, step):
        path = archive_path(ctx)
        if path.exists():
            manifest, made = read_manifest(path), "kept"  # a resumed run keeps the archive it made
        else:
            try:
                parts, fingerprints = self._from_copy(ctx)
                manifest = assemble_archive(path, ctx.source, ctx.tenant, ctx.tables, parts, fingerprints)
                made = "from the copy's stream"
            except PartError as exc:
                ctx.save_details(step, not_from_copy=str(exc))
                manifest, made = write_archive(ctx.source, ctx.tenant, ctx.tables, path), f"read from {ctx.source}"
        remove_parts(ctx)
        rows = sum(t["rows"] for t in manifest["tables"])
        size = path.stat().st_size
        ctx.save_details(step, path=str(path), rows=rows, bytes=size, made=made)
        step.rows, step.bytes = rows, size
        return f"{rows} rows archived to {path.name} ({size // 1024} KiB), {made}"

    def _from_copy(self, ctx) -> tuple[dict, dict]:
        """(parts, fingerprints) for assemble_archive, or PartError saying why not."""
        run = ctx.run
        copy = run.steps.filter(name="copy", status=StepStatus.SUCCEEDED).first() \
            if run.kind == RunKind.MOVE else None
        if copy is None:
            raise PartError("no copy before the archive")
        copied = copy.details.get("tables", {})
        missing = [t.name for t in ctx.tables if "part" not in copied.get(t.name, {})]
        if missing:
            raise PartError(f"no stream of {', '.join(missing)} from the copy (copied inside the server?)")
        parts = {t.name: copied[t.name]["part"] for t in ctx.tables}
        verified = run.steps.filter(name="verify", status=StepStatus.SUCCEEDED).exists() and \
            (run.report.get("verify") or {}).get("ok")
        if verified:
            # The tenant was frozen from before the copy: the verified rows are the copied ones.
            checked = run.report["verify"]["tables"]
            fingerprints = {name: Fingerprint(checked[name]["target_rows"], checked[name]["target_checksum"])
                            for name in parts if name in checked}
        else:
            if run.online and len({p["attempt"] for p in parts.values()}) > 1:
                raise PartError("the copy was resumed: its tables come from different snapshots")
            fingerprints = target_fingerprints(ctx.target, ctx.tenant.pk, ctx.tables)
        return parts, fingerprints

    def rollback(self, ctx, step):
        return f"export kept at {step.details.get('path', '?')}; {remove_parts(ctx)}"


def target_fingerprints(place, tenant_id: int, tables) -> dict[str, Fingerprint]:
    """Count and checksum of each table of the tenant in `place`, in one snapshot."""
    with place.connect(repeatable_read=True, read_only=True, application_name="tenant-move backup") as conn:
        engine_session(conn)
        return {t.name: fingerprint(conn, place, t, tenant_id) for t in tables}


class Verify(Step):
    name, label = "verify", "Verify every row"

    def run(self, ctx, step):
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
