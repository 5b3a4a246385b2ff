"""Cancel a tenant's move: `manage.py cancel_tenant_move <slug | run id>` (a number is a run id).

- A queued run is cancelled at once; its queued task then does nothing.
- A running or held run is asked to stop: its worker rolls it back at its next safe point
  (between steps, after a copied table or a catch-up round); a run whose worker is gone is
  rolled back here. `--wait` waits for the outcome.
- Refused (exit 2, one `error:` line) once the cutover has begun, or when nothing is active.
"""
import time

from django.core.management.base import CommandError

from migration_jobs import services
from migration_jobs.management.base import TenantCommand
from migration_jobs.models import RunStatus
from migration_jobs.services.validation import is_id
from tenancy.management.base import one_line


class Command(TenantCommand):
    help = "Cancel a tenant's queued, running or held move (rolled back before its cutover)."

    def add_arguments(self, parser):
        parser.add_argument("target", help="Tenant slug, or the run id (a number).")
        parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                            help="Wait up to this long for a running run's worker to roll it back.")
        self.add_json_argument(parser)

    def handle(self, *args, target, wait, as_json, **options):
        if is_id(target):  # ASCII digits only, as every id
            run = services.get_run(target)
        else:
            tenant = services.get_tenant(target)
            run = services.active_run(tenant)
            if run is None:
                raise services.Refused(f"tenant {tenant.slug} has no queued or running move to cancel")
        run = services.cancel(run)
        deadline = time.monotonic() + max(wait, 0.0)
        while run.is_active and time.monotonic() < deadline:
            time.sleep(0.5)
            run.refresh_from_db()
        if as_json:
            self.print_json(services.run_report(run))
        elif run.is_active:
            self.stdout.write(f"run {run.pk} of {run.tenant.slug}: cancel requested; its worker rolls it back at "
                              f"the next safe point (now at {run.current_step or 'start'})")
        else:
            self.stdout.write(f"run {run.pk} of {run.tenant.slug}: {run.get_status_display().lower()}; "
                              f"writes frozen {services.human_refusal(services.writes_refused(run))}")
        if run.status == RunStatus.FAILED:
            raise CommandError(f"run {run.pk} failed while rolling back: {one_line(run.error)}", returncode=1)
