"""Steps that several kinds of run share: preflight checks, the export, the verification."""
from __future__ import annotations

from django.conf import settings

from migration_jobs.engine import preflight
from migration_jobs.engine.archive import write_archive
from migration_jobs.engine.archive_read import read_manifest
from migration_jobs.engine.collisions import find_collisions
from migration_jobs.engine.places import shared_place
from migration_jobs.engine.target_server import check_target_server
from migration_jobs.engine.verify import verify_tenant
from migration_jobs.exceptions import StepFailed
from migration_jobs.models import RunKind
from migration_jobs.runs.steps.base import Step
from tenancy.models import Status


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
            preflight.check_source(conn, ctx.source, tenant.pk, ctx.tables, report)
            preflight.check_server(conn, "source server", report, need_create_db=False,
                                   connections_needed=workers + 2)
        if ctx.dedicated.kind == "database" and run.kind == RunKind.MOVE:
            check_target_server(run.target_server, run.target_database, report, connections_needed=workers + 2,
                                tenant_tables=[t.name for t in ctx.tables])
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


class Backup(Step):
    name, label = "backup", "Export the tenant"

    def run(self, ctx, step):
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
