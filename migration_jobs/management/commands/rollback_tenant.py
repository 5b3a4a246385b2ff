"""Undo a tenant's move.

- If the tenant has an unfinished run (queued, or running with its worker gone), roll that
  run back (every step's compensation, newest first).
- Otherwise, if the tenant is in a dedicated schema or database, move it back into the
  shared tables (a move_back run: preflight refuses key collisions before anything is
  written; the copy back is one transaction on the shared database).
- Otherwise there is nothing to roll back.

Exit status as migrate_tenant: 0 done, 1 the run failed, 2 refused (nothing changed).
"""
from migration_jobs import services
from migration_jobs.management.base import TenantCommand


class Command(TenantCommand):
    help = "Roll back a tenant's interrupted move, or move a dedicated tenant back to the shared database."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Tenant slug (or id).")
        parser.add_argument("--online", action="store_true",
                            help="Move back online: the tenant stays writable until a short cutover.")
        self.add_json_argument(parser)

    def handle(self, *args, tenant, online, as_json, **options):
        run, before = services.undo_move(services.get_tenant(tenant), online=online, via="command")
        if before is None:  # a move back, created now
            self.conclude(run, as_json=as_json)
            return
        run.refresh_from_db()
        if as_json:
            self.print_json(services.run_report(run))
        else:
            self.stdout.write(f"run {run.pk} ({before} before) is now {run.status}: {run.tenant.slug} stays in "
                              f"{run.tenant.placement} placement, status {run.tenant.status}")
