"""The steps of a move out (offline, and online where they are shared): freeze, create the
target, copy, sequences, switch, reactivate."""
from __future__ import annotations

import threading

import psycopg
from django.conf import settings
from django.db import connection
from django.utils import timezone

from migration_jobs.engine import fences, load, provision
from migration_jobs.engine.archive import ArchiveParts, parts_dir
from migration_jobs.engine.copy import tee_into
from migration_jobs.engine.cutover import raise_sequences, wait_for_older_transactions
from migration_jobs.exceptions import StepFailed
from migration_jobs.runs.health import after_switch
from migration_jobs.runs.steps.base import (Step, drop_dedicated, freeze, guard_not_live, set_tenant,
                                            switch_placement, unfreeze, unswitch_placement)
from migration_jobs.runs.steps.common import archive_path, remove_parts
from tenancy.models import DatabaseCredential, Placement, Status


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
            set_tenant(tenant.pk, status=Status.MIGRATING)
        # And in the database itself, whatever a process with a stale route cache believes.
        freeze(ctx, f"being moved by run {run.pk}")
        with connection.cursor() as cursor:
            left = wait_for_older_transactions(cursor, changed_at, settings.MIGRATION_DRAIN_TIMEOUT)
        if left:
            raise StepFailed(f"{left} transactions begun before the tenant was frozen are still open after "
                             f"{settings.MIGRATION_DRAIN_TIMEOUT}s")
        return f"tenant {tenant.slug} is migrating, writes refused (was {run.previous_status}); in-flight transactions drained"

    def rollback(self, ctx, step):
        previous = ctx.run.previous_status or Status.ACTIVE
        unfreeze(ctx)
        set_tenant(ctx.run.tenant_id, status=previous)
        return f"fence removed, status restored to {previous}"


class Provision(Step):
    name, label = "provision", "Create the target schema or database"

    def run(self, ctx, step):
        guard_not_live(ctx)
        run, schema = ctx.run, ctx.run.target_schema
        if run.target_placement == Placement.SCHEMA:
            fresh = not provision.schema_exists(schema)
            provision.create_schema(schema)
            ctx.save_details(step, schema=schema, fresh=fresh)  # fresh: made by this step, no fence can be there
            return f"schema {schema} ready"
        server, database = run.target_server, run.target_database
        role = provision.role_name(database)
        credential = DatabaseCredential.objects.filter(tenant=ctx.tenant).first()
        if credential and (credential.server_id, credential.database, credential.role) == (server.pk, database, role):
            password = credential.password()  # resumed: keep the role's password
        else:
            password = provision.new_password()
        # A copy of the server's template: the tables come at the current migration already.
        fresh = provision.ensure_database(server, database, role, password)
        if credential is None:
            credential = DatabaseCredential(tenant=ctx.tenant)
        credential.server, credential.database, credential.role = server, database, role
        credential.set_password(password)
        credential.save()
        ctx.save_details(step, server=server.name, database=database, role=role, credential_id=credential.pk,
                         fresh=fresh)
        return f"database {database} and role {role} ready on server {server.name}"

    def rollback(self, ctx, step):
        placement = ctx.run.target_placement
        tenant = ctx.refresh_tenant()
        if tenant.placement == placement:
            return f"tenant lives in the {placement}: kept"
        return drop_dedicated(ctx, placement, tenant)


class CreateTables(Step):
    name, label = "create_tables", "Create the tables on the target"

    def run(self, ctx, step):
        """The tenant tables, as the migrations make them, with no fence left on the tenant."""
        guard_not_live(ctx)
        run = ctx.run
        # A copy of the template (provision) is at the current migration already; a place an
        # earlier attempt or version made empty is migrated as before.
        if run.target_placement == Placement.DATABASE:
            migrated = provision.migrate_tables(run.target_server, run.target_database,
                                                provision.role_name(run.target_database))
        else:
            migrated = provision.ensure_schema(run.target_schema)
        load.check_same_columns(ctx.source, ctx.target, ctx.tables)
        # A place the tenant left by moving back keeps a legacy fence on its rows; the copy
        # replaces those rows, and the tenant must be writable there after the switch. (A place
        # this run's provision made, recorded only once made, has none.)
        if not ctx.step("provision").details.get("fresh"):
            fences.remove(ctx.target, ctx.tenant.pk, ctx.tables)
        how = "migrated" if migrated else "at the current migration (from the template)"
        return f"{len(ctx.tables)} tables {how} on {ctx.target}"


class Copy(Step):
    name, label = "copy", "Copy the rows"

    def run(self, ctx, step):
        guard_not_live(ctx)
        done: dict = dict(step.details.get("tables", {}))
        deferred = step.details.get("deferred")
        if deferred is None:
            # Recorded before anything is dropped, so a crash in between can be repaired.
            deferred = load.objects_to_defer(ctx.source, ctx.target, ctx.tenant.pk, ctx.tables)
            ctx.save_details(step, deferred=deferred)
        # The copy's stream also becomes the tables' archive parts (the backup step assembles
        # them); `attempt` tells parts of one snapshot from those of a resumed copy.
        attempt = step.details.get("attempts", 0) + 1
        ctx.save_details(step, attempts=attempt)
        parts = ArchiveParts(parts_dir(archive_path(ctx)))
        lock = threading.Lock()
        copied = {"rows": sum(t["rows"] for t in done.values()), "bytes": sum(t["bytes"] for t in done.values())}
        ctx.record_sample(rows_copied=copied["rows"])  # the chart's rows/s starts here

        def on_table_done(name, result):
            part = parts.take(name)  # finished before the table's transaction committed
            with lock:
                done[name] = {"rows": result.rows, "bytes": result.bytes, "seconds": round(result.seconds, 3)}
                if part is not None:
                    done[name]["part"] = {**part, "rows": result.rows, "attempt": attempt}
                copied["rows"] += result.rows
                copied["bytes"] += result.bytes
                ctx.save_details(step, tables=done)
                ctx.progress(copied["rows"], copied["bytes"])
                ctx.record_sample(rows_copied=copied["rows"])
            ctx.checkpoint(f"copy:{name}")

        try:
            with tee_into(parts):
                load.load(ctx.source, ctx.target, ctx.tenant.pk, ctx.tables, deferred, skip=frozenset(done),
                          workers=ctx.copy_workers, maintenance_work_mem=settings.MIGRATION_INDEX_MEMORY,
                          on_table_done=on_table_done, checkpoint=ctx.checkpoint,
                          # The ORM connection on_table_done opened in a copying thread, kept
                          # for all its tables (a login per table costs ~5 ms) and closed here
                          # (`connection` resolves to the calling thread's at the call).
                          on_worker_end=lambda: connection.close())
        except psycopg.errors.ForeignKeyViolation as exc:
            # The target holds only the tenant's rows: its foreign keys find every reference to
            # another tenant's row, or to none (the preflight leaves that proof to the copy).
            raise StepFailed(f"rows of tenant {ctx.tenant.slug} point at rows that are not its own (another "
                             f"tenant's, or none): {exc.diag.message_primary}; `manage.py verify_tenant "
                             f"{ctx.tenant.slug}` lists them; fix those references first") from None
        step.rows, step.bytes = copied["rows"], copied["bytes"]
        ctx.progress(copied["rows"], copied["bytes"])
        ctx.record_sample(rows_copied=copied["rows"])
        return f"{copied['rows']} rows, {copied['bytes'] // 1024} KiB in {len(done)} tables"

    def rollback(self, ctx, step):
        return remove_parts(ctx)


class Sequences(Step):
    name, label = "sequences", "Set sequences past the copied keys"

    def run(self, ctx, step):
        values = raise_sequences(ctx.source, ctx.target, ctx.tables)
        ctx.save_details(step, sequences=values)
        return f"{len(values)} sequences set"


class Switch(Step):
    name, label = "switch", "Route the tenant to its new place"

    def run(self, ctx, step):
        tenant = ctx.refresh_tenant()
        if tenant.status != Status.MIGRATING:
            raise StepFailed(f"tenant status changed to {tenant.status} during the run; not switching")
        switch_placement(ctx)
        smoke = after_switch(ctx)  # reads only (the tenant is still frozen); never raises
        return f"placement {ctx.run.source_placement} -> {ctx.run.target_placement}; the old rows are fenced; {smoke}"

    def rollback(self, ctx, step):
        unswitch_placement(ctx)
        return f"placement back to {ctx.run.source_placement}"


class Reactivate(Step):
    name, label = "reactivate", "Reactivate the tenant"

    def run(self, ctx, step):
        status = ctx.run.previous_status or Status.ACTIVE
        set_tenant(ctx.run.tenant_id, status=status)
        return f"status {status}"
