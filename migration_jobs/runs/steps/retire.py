"""The steps of a retirement: check where the tenant lives, then delete its legacy rows from
the shared tables in batches, or drop the dedicated place a move back left."""
from __future__ import annotations

from django.conf import settings

from migration_jobs.engine import fences
from migration_jobs.engine.places import shared_place
from migration_jobs.engine.preflight import PreflightReport, check_source
from migration_jobs.engine.retire import delete_in_batches
from migration_jobs.exceptions import StepFailed
from migration_jobs.runs.steps.base import Step, drop_dedicated
from migration_jobs.verification import verify_in_place
from tenancy.models import Placement


class RetireCheck(Step):
    name, label = "retire_check", "Check where the tenant lives before retiring its legacy rows"

    def run(self, ctx, step):
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
        counted = PreflightReport()
        with legacy.connect() as conn:
            check_source(conn, legacy, tenant.pk, ctx.tables, counted)
        ctx.run.rows_total = counted.total_rows
        ctx.run.save(update_fields=["rows_total"])
        ctx.save_details(step, legacy_rows=counted.row_counts)
        return f"{tenant.placement} rows verified; {counted.total_rows} legacy rows to retire in {legacy}"


class RetireDelete(Step):
    name, label = "retire_delete", "Delete the legacy rows in batches"
    point_of_no_return = True

    def run(self, ctx, step):
        done = dict(step.details.get("deleted", {}))

        def on_batch(table, count):
            done[table] = done.get(table, 0) + count
            ctx.save_details(step, deleted=done)
            ctx.progress(sum(done.values()))
            ctx.checkpoint(f"retire:{table}")

        delete_in_batches(shared_place(), ctx.tenant.pk, list(reversed(ctx.tables)),
                          settings.TENANT_LEGACY_BATCH_ROWS, on_batch)
        fences.remove(shared_place(), ctx.tenant.pk, ctx.tables)
        step.rows = sum(done.values())
        return f"{step.rows} legacy rows deleted from the shared tables; their fence removed"


class RetireDrop(Step):
    name, label = "retire_drop", "Drop the dedicated place the tenant moved back from"
    point_of_no_return = True

    def run(self, ctx, step):
        tenant = ctx.refresh_tenant()
        if tenant.placement != Placement.SHARED:  # never drop where the tenant lives
            raise StepFailed(f"tenant {tenant.slug} is in {tenant.placement} placement: not dropping its "
                             f"{ctx.run.source_placement}")
        return drop_dedicated(ctx, ctx.run.source_placement, tenant)
