"""Which steps each kind of run has, in order."""
from __future__ import annotations

from migration_jobs.models import MigrationRun, MigrationStep, RunKind
from migration_jobs.runs.steps.base import Step
from migration_jobs.runs.steps.common import Backup, Preflight, Verify
from migration_jobs.runs.steps.move_back import CopyBack
from migration_jobs.runs.steps.offline import (Copy, CreateTables, Provision, Reactivate, Sequences, Suspend,
                                               Switch)
from migration_jobs.runs.steps.online import CatchUp, Cutover, StartCapture, StopCapture
from migration_jobs.runs.steps.retire import RetireCheck, RetireDelete, RetireDrop
from tenancy.models import Placement

# A move out archives the tenant from its copy's stream (the source is read once): the backup
# step comes after the copy, offline after the verification whose checksums the archive
# carries, online before catch-up changes the target. The shared rows are never changed by a
# move out, so the archive is still made before anything the tenant relies on changes (switch).
MOVE_STEPS = [Preflight(), Suspend(), Provision(), CreateTables(), Copy(), Sequences(), Verify(), Backup(),
              Switch(), Reactivate()]
MOVE_BACK_STEPS = [Preflight(), Suspend(), Backup(), CopyBack(), Verify(), Switch(), Reactivate()]
# Online: the tenant stays active until a sub-second cutover.
ONLINE_MOVE_STEPS = [Preflight(), Provision(), CreateTables(), StartCapture(), Copy(), Backup(), CatchUp(),
                     Cutover(), StopCapture()]
ONLINE_MOVE_BACK_STEPS = [Preflight(), Backup(), StartCapture(), CopyBack(), CatchUp(), Cutover(), StopCapture()]
# Retiring legacy rows left in the shared tables: deleted in batches.
RETIRE_STEPS = [RetireCheck(), Backup(), RetireDelete()]
# The dedicated place a move back left: archived, then dropped whole (nobody else uses it).
RETIRE_DEDICATED_STEPS = [RetireCheck(), Backup(), RetireDrop()]


def steps_for(run: MigrationRun) -> list[Step]:
    if run.kind == RunKind.RETIRE:
        return RETIRE_DEDICATED_STEPS if run.target_placement == Placement.SHARED else RETIRE_STEPS
    if run.online:
        return ONLINE_MOVE_STEPS if run.kind == RunKind.MOVE else ONLINE_MOVE_BACK_STEPS
    return MOVE_STEPS if run.kind == RunKind.MOVE else MOVE_BACK_STEPS


def create_steps(run: MigrationRun) -> None:
    """The run's step rows (a dry run has only its preflight)."""
    steps = steps_for(run)
    if run.dry_run:
        steps = steps[:1]
    MigrationStep.objects.bulk_create(
        [MigrationStep(run=run, name=s.name, order=i + 1) for i, s in enumerate(steps)])
