"""The demo's move: take the largest pooled tenant to a dedicated database, the way staff
would with `migrate_tenant`, and print what happened. Safe to run again: a tenant that is
already dedicated is reported, not moved twice."""
from django.core.management.base import CommandError
from django.db import connection

from benchmarks.management.base import BenchCommand
from benchmarks.seeding import tenant_row_counts
from migration_jobs import services
from tenancy.models import Placement, Tenant


class Command(BenchCommand):
    help = "Move the largest pooled demo tenant to a dedicated database (for `make demo`)."

    def add_arguments(self, parser):
        parser.add_argument("--to", choices=["schema", "database"], default="database")

    def handle(self, *args, **options):
        dedicated = Tenant.objects.exclude(placement=Placement.SHARED).order_by("slug")
        if dedicated.exists():
            names = ", ".join(f"{t.slug} ({t.placement})" for t in dedicated)
            self.stdout.write(f"Already dedicated: {names}; not moving again.")
            return
        pooled = list(Tenant.objects.filter(placement=Placement.SHARED))
        if not pooled:
            raise CommandError("no tenants: run `manage.py seed_demo` first", returncode=2)
        sizes = {t.pk: sum(tenant_row_counts(connection, t.pk).values()) for t in pooled}
        tenant = max(pooled, key=lambda t: sizes[t.pk])
        self.stdout.write(f"Moving {tenant.slug} ({sizes[tenant.pk]} rows) to a dedicated {options['to']}...")
        run = services.execute(services.request_move(tenant, options["to"], via="demo"))
        report = services.run_report(run)
        for step in report["steps"]:
            seconds = services.human_duration(step["seconds"], empty="")
            self.stdout.write(f"  {step['name']:<14} {step['status']:<10} {seconds:>8}  {step['message']}")
        if run.status != "succeeded":
            raise CommandError(f"run {run.pk} {run.status}: {run.error}", returncode=1)
        self.stdout.write(self.style.SUCCESS(
            f"Run {run.pk}: {tenant.slug} now lives in database {run.target_database} "
            f"({report['rows_copied']} rows, {report['rows_per_second']} rows/s, verified)."))
