"""The step only a move back has: the rows copied back into the shared tables, reusing the
legacy rows that did not change (engine/copy_back.py)."""
from __future__ import annotations

from django.conf import settings

from migration_jobs.engine.copy_back import copy_back
from migration_jobs.runs.steps.base import Step


class CopyBack(Step):
    name, label = "copy_back", "Copy the rows back into the shared tables"

    def run(self, ctx, step):
        ctx.record_sample(rows_copied=0)
        margin = settings.MIGRATION_SEQUENCE_MARGIN if ctx.run.online else 0  # the tenant keeps inserting
        result = copy_back(ctx.source, ctx.target, ctx.tenant.pk, ctx.tables, margin=margin,
                           checkpoint=ctx.checkpoint)
        ctx.save_details(step, **result)
        step.rows = result["rows"]
        ctx.progress(result["rows"] + result["legacy_rows_reused"], result["bytes"])
        ctx.record_sample(rows_copied=result["rows"] + result["legacy_rows_reused"])
        return (f"{result['rows']} rows copied back, {result['legacy_rows_reused']} legacy rows reused as they "
                f"were, {result['legacy_rows_replaced']} replaced, in one transaction")
