"""Verify a tenant where it lives now: every table present in its place, row counts and
checksums, no rows of other tenants in a dedicated place, sequences past the highest id.

    manage.py verify_tenant acme [--json]

Exit status 0 when everything is right, 1 when a problem was found, 2 for an unknown tenant.
"""
from django.core.management.base import CommandError

from migration_jobs import services
from migration_jobs.management.base import TenantCommand
from migration_jobs.management.commands._progress import print_verification
from migration_jobs.services import one_line


class Command(TenantCommand):
    help = "Check a tenant's rows where it lives now (counts, checksums, foreign rows, sequences)."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Tenant slug (or id).")
        self.add_json_argument(parser)

    def handle(self, *args, tenant, as_json, **options):
        report = services.verify(services.get_tenant(tenant))
        if as_json:
            self.print_json(report)
        else:
            print_verification(self, report)
        if not report["ok"]:
            raise CommandError(f"tenant {report['tenant']}: {len(report['problems'])} problems: "
                               f"{one_line('; '.join(report['problems']))[:500]}", returncode=1)
