"""Archive and remove a tenant's legacy rows: a dedicated tenant's rows in the shared tables, or
the dedicated schema or database a tenant moved back from.

Exit status: 0 retired, 1 the run failed, 2 refused (nothing changed).
"""
from django.core.management.base import CommandError

from migration_jobs import services
from migration_jobs.management.base import TenantCommand


class Command(TenantCommand):
    help = ("After the grace period, verify the tenant's rows where it lives, archive its legacy rows and "
            "remove them: from the shared tables in small batches (other tenants are not locked out), or, "
            "for a tenant that moved back, by dropping the dedicated schema or database it left.")

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--ignore-grace", action="store_true",
                            help="retire now, before TENANT_LEGACY_GRACE_DAYS have passed since the move")
        parser.add_argument("--json", action="store_true", help="print the run's report as the last line")

    def handle(self, *args, **options):
        run = services.request_retire(services.get_tenant(options["slug"]), ignore_grace=options["ignore_grace"])
        run = services.execute(run)
        report = services.run_report(run)
        for step in report["steps"]:
            self.stdout.write(f"  {step['name']:<14} {step['status']:<11} {step['message']}")
        if options["json"]:
            self.print_json(report)
        if run.status != "succeeded":
            raise CommandError(f"run {run.pk} {run.status}: {run.error}", returncode=1)
