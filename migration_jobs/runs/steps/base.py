"""The Step base class and what several kinds of step share: setting the tenant's routing
fields, fencing its rows in a place, switching its placement, dropping a dedicated place."""
from __future__ import annotations

from django.db import transaction

from migration_jobs.engine import fences, provision
from migration_jobs.exceptions import StepFailed
from migration_jobs.models import MigrationStep, RunKind
from migration_jobs.runs.context import RunContext
from tenancy.models import DatabaseCredential, Placement, Tenant


class Parked(Exception):
    """Raised by a step that has nothing to do until `until` (a held online move between its
    catch-up rounds): the executor parks the run (executor._park); it did not fail."""

    def __init__(self, until):
        super().__init__(f"parked until {until.isoformat()}")
        self.until = until


class Step:
    name = ""
    label = ""
    point_of_no_return = False  # once it succeeded, the tenant writes to the target: never undo

    def run(self, ctx: RunContext, step: MigrationStep) -> str:
        raise NotImplementedError

    def rollback(self, ctx: RunContext, step: MigrationStep) -> str:
        return "nothing to undo"


def set_tenant(tenant_id: int, **fields) -> Tenant:
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant_id)
        for key, value in fields.items():
            setattr(tenant, key, value)
        tenant.save()  # signals notify every process's route cache at commit
    return tenant


def guard_not_live(ctx: RunContext) -> None:
    """Never create over, empty or drop the place where the tenant lives now."""
    tenant = ctx.refresh_tenant()
    if ctx.run.kind == RunKind.MOVE and tenant.placement != Placement.SHARED:
        raise StepFailed(f"tenant {tenant.slug} is in {tenant.placement} placement: refusing to touch its target")


def freeze(ctx: RunContext, reason: str) -> None:
    """Every write to the tenant's rows in the source fails from now on (database-enforced)."""
    fences.freeze(ctx.source, ctx.tenant.pk, ctx.tenant.slug, ctx.tables, reason)


def unfreeze(ctx: RunContext) -> None:
    fences.remove(ctx.source, ctx.tenant.pk, ctx.tables)


def switch_placement(ctx: RunContext, status: str | None = None, source_conn=None) -> None:
    """The target becomes the tenant's place; the source's rows stay fenced as legacy rows."""
    run = ctx.run
    if run.kind == RunKind.MOVE_BACK:  # shared: its legacy fence from the move out goes
        fences.remove(ctx.target, run.tenant_id, ctx.tables)
    # The source's fence first, the placement last: a failure in between (the freeze's connection
    # cut) leaves the tenant where it was, still fenced, for the cutover or the roll back to
    # reopen. The other way round, the tenant lived in its target with its old rows reopened.
    fences.close(ctx.source, run.tenant_id, f"legacy rows: tenant moved to {run.target_placement} by run {run.pk}",
                 conn=source_conn, slug=ctx.tenant.slug)
    set_tenant(run.tenant_id, placement=run.target_placement, **({"status": status} if status else {}))


def unswitch_placement(ctx: RunContext) -> None:
    run = ctx.run
    set_tenant(run.tenant_id, placement=run.source_placement)
    if run.kind == RunKind.MOVE_BACK:
        fences.freeze(ctx.target, run.tenant_id, ctx.tenant.slug, ctx.tables,
                      f"legacy rows: tenant lives in {run.source_placement}")


def drop_dedicated(ctx: RunContext, placement: str, tenant: Tenant) -> str:
    """Drop the run's dedicated schema or database, with the tenant's credential for it."""
    run = ctx.run
    done = provision.drop_place(placement, schema=run.target_schema, server=run.target_server,
                                database=run.target_database)
    if placement == Placement.SCHEMA:
        return done
    DatabaseCredential.objects.filter(tenant=tenant, database=run.target_database).delete()
    return f"{done}, credential deleted"
