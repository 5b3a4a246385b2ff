"""The base of the tenant-move commands: the project's command contract (tenancy's
ContractCommand: one `error:` line, exit 0 / 1 / 2) with the exit status of every error
class of a move in one table, `--json`, and running a run to its end with progress.

No business logic here: everything that decides lives in migration_jobs.services.
"""
from __future__ import annotations

import json

from django.core.management.base import CommandError

from migration_jobs import services
from migration_jobs.exceptions import ArchiveError, Refused, RestoreError, StepFailed
from migration_jobs.management.commands._progress import execute_with_progress, print_run
from migration_jobs.models import MigrationRun, RunStatus
from tenancy.exceptions import TenantMoveError
from tenancy.management.base import ContractCommand, one_line

OK_STATUSES = (RunStatus.SUCCEEDED,)
# 2: bad input or refused, nothing changed; 1: something was tried and failed.
EXIT_STATUSES = {TenantMoveError: 2, Refused: 2, ArchiveError: 2, RestoreError: 2, StepFailed: 1}


class TenantCommand(ContractCommand):
    """Base of the tenant-move commands: one-line errors and meaningful exit statuses."""

    exit_statuses = EXIT_STATUSES
    archive_path = None  # named in an ArchiveError's `error:` line when set

    def error_message(self, exc: Exception) -> str:
        if isinstance(exc, ArchiveError):
            return f"invalid archive{f' {self.archive_path}' if self.archive_path else ''}: {one_line(exc)}"
        return one_line(exc)

    def add_json_argument(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json",
                            help="Print the result as one line of JSON (the last line of stdout).")

    # --- output ---------------------------------------------------------------------------

    def print_json(self, data) -> None:
        self.stdout.write(json.dumps(data, default=str, separators=(",", ":"), sort_keys=False))

    def conclude(self, run: MigrationRun, *, as_json: bool, background: bool = False):
        """Execute (or enqueue) a run just created, print the outcome, set the exit status."""
        if background:
            task_id = services.enqueue(run)
            run.refresh_from_db()
            if as_json:
                report = services.run_report(run)
                report["task_id"] = task_id
                self.print_json(report)
            else:
                self.stdout.write(f"run {run.pk} queued for the django-q2 cluster (task {task_id}); "
                                  f"status now: {run.status}. Follow it with `manage.py migration_status "
                                  f"{run.tenant.slug}`.")
            if run.status in (RunStatus.FAILED, RunStatus.ROLLED_BACK):
                raise CommandError(f"run {run.pk} {run.status}: {one_line(run.error)}", returncode=1)
            return
        run = execute_with_progress(self, run)
        self.finish(run, as_json=as_json)

    def finish(self, run: MigrationRun, *, as_json: bool) -> None:
        run.refresh_from_db()
        if as_json:
            self.print_json(services.run_report(run))
        else:
            print_run(self, run)
        if run.status not in OK_STATUSES:
            raise CommandError(f"run {run.pk} {run.get_status_display().lower()}: "
                               f"{one_line(run.error) or 'no error recorded'}", returncode=1)
