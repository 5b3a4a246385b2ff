"""Go on with a tenant's interrupted run (its worker died) from its first unfinished step.

    manage.py resume_tenant_move acme [--json]

Refused (exit 2) when the tenant has no interrupted run or a live worker still holds it.
"""
from migration_jobs import services
from migration_jobs.management.base import TenantCommand
from migration_jobs.management.commands._progress import execute_with_progress


class Command(TenantCommand):
    help = "Resume a tenant's interrupted move from its first unfinished step."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Tenant slug (or id).")
        self.add_json_argument(parser)

    def handle(self, *args, tenant, as_json, **options):
        run = services.resumable_run(services.get_tenant(tenant))
        self.stderr.write(f"resuming run {run.pk} at step {run.current_step or '?'}")
        run = execute_with_progress(self, run, resume=True)
        self.finish(run, as_json=as_json)
