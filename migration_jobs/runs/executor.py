"""Runs a MigrationRun: its steps in order, each recorded, each idempotent, each with a
compensating rollback.

- Exactly one worker executes a run: it holds a PostgreSQL advisory lock keyed by the run
  for as long as it works. A worker that dies loses its connection and so its lock, which
  is how a resume knows the previous worker is really gone.
- A step that raises triggers the rollback of every step done so far, newest first, and
  the run ends `rolled_back` with the reason. A crash (the process killed) leaves the run
  `running` with no lock holder: `resume` goes on from the first unfinished step,
  `rollback` undoes what was done. The shared database is never what gets repaired.
- A held online move does not keep a worker: its catch-up step applies a round and *parks*
  the run (still `running`, its capture on, `next_round_at` set, a django-q2 schedule to pick
  it up then, the lock released); a worker claims it again for each round and for the cutover
  (runs/pickup.py). A parked run is not an interrupted one: its lock is free by design.
- No secret leaves in a message: known passwords are replaced by *** in every error recorded.
"""
from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager

import psycopg
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from django_q.conf import Conf

from migration_jobs.engine import roundtrips
from migration_jobs.exceptions import StepFailed
from migration_jobs.models import MigrationRun, MigrationStep, RunKind, RunStatus, StepStatus
from migration_jobs.runs import pickup
from migration_jobs.runs.context import RunContext
from migration_jobs.runs.faults import NO_FAULTS, Faults
from migration_jobs.runs.plans import steps_for
from migration_jobs.runs.steps.base import Parked, Step
from migration_jobs.signals import run_finished
from tenancy.error_reporting import redact  # every written form of each secret, and API tokens
from tenancy.models import Tenant
from tenancy.routing import set_read_switch
from tenancy.shared_db import shared_conninfo, shared_password

log = logging.getLogger(__name__)
RUN_LOCK_NAMESPACE = 74_211  # first key of pg_advisory_lock(int, int) for runs


# --- Secrets never leave in messages ------------------------------------------------------

def known_secrets(run: MigrationRun) -> list[str]:
    found = []
    try:
        found.append(run.tenant.credential.password())
    except Exception:  # noqa: BLE001 - no credential, or undecryptable: nothing to hide
        pass
    for server in {run.target_server, getattr(getattr(run.tenant, "credential", None), "server", None)} - {None}:
        try:
            found.append(server.admin_password())
        except Exception:  # noqa: BLE001
            pass
    found.append(shared_password())
    return found


# --- The lock that makes one worker the owner of a run ------------------------------------

class RunLockLost(BaseException):
    """The session holding this worker's run lock is gone (terminated by a DBA, an idle-session
    timeout, the network) while the worker lives: another worker may own the run already. Like
    a killed worker, stop at once: nothing undone, nothing recorded (BaseException: no step's
    `except Exception` turns it into a failure and a roll back)."""


class RunLock:
    """The run's advisory lock on a connection of its own: true while held; `release()` lets
    go of it early (a run that parks lets go inside its park transaction, see _park); `check()`
    raises RunLockLost once the lock's session is gone."""

    def __init__(self, conn: psycopg.Connection, run_id: int):
        self.conn, self.run_id = conn, run_id
        self.held = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (RUN_LOCK_NAMESPACE, run_id)).fetchone()[0]

    def __bool__(self) -> bool:
        return bool(self.held)

    def check(self) -> None:
        """Still ours? One statement on the lock's connection (an advisory lock lives as long as
        its session); RunLockLost if that session is gone. Safe from the copy's threads."""
        if not self.held:
            return  # released on purpose (parked): the caller stops anyway
        try:
            self.conn.execute("SELECT 1")
        except psycopg.Error as exc:
            self.held = False
            raise RunLockLost(f"run {self.run_id}: the session holding its lock is gone "
                              f"({type(exc).__name__}); another worker may own the run now") from None

    def release(self) -> None:
        # Unlock explicitly: closing also releases it, but only once the server backend has
        # exited, and a worker that looks right after (lock_is_free, then execute) must not
        # find it still taken.
        if self.held and not self.conn.closed:
            try:
                self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (RUN_LOCK_NAMESPACE, self.run_id))
            except psycopg.Error:
                pass  # connection lost: the server releases the lock with the session
        self.held = False


@contextmanager
def run_lock(run_id: int):
    """Hold the run's advisory lock on a connection of its own; yields a RunLock, false if taken."""
    conn = psycopg.connect(**shared_conninfo(), autocommit=True, application_name=f"tenant-move-run-{run_id}")
    lock = None
    try:
        lock = RunLock(conn, run_id)
        yield lock
    finally:
        if lock is not None:
            lock.release()
        conn.close()


def lock_is_free(run_id: int) -> bool:
    with run_lock(run_id) as got:
        return bool(got)


def executing_run_ids() -> set[int]:
    """Runs whose lock some session holds now: read from pg_locks, taking no lock (unlike
    lock_is_free, which could make a worker claiming the run at that instant give up)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                       "AND objsubid = 2 AND granted AND database = (SELECT oid FROM pg_database "
                       "WHERE datname = current_database())", [RUN_LOCK_NAMESPACE])
        return {row[0] for row in cursor.fetchall()}


def is_parked(run: MigrationRun) -> bool:
    """A held online move waiting in the database for its next round (no worker has it)."""
    return run.status == RunStatus.RUNNING and run.next_round_at is not None


# The process that loaded this module. In `manage.py qcluster` that is the cluster's main
# process (Django's setup imports it through the admin), which django-q2 forks its workers from.
_LOADED_IN = os.getpid()


def worker_name() -> str:
    """Who executes a run: `host:pid`, and in a qcluster worker also the cluster's main pid and
    queue (`host:1240 (qcluster 1234 tenant-moves)`): where to look for it, on which machine."""
    host, pid = socket.gethostname(), os.getpid()
    if pid == _LOADED_IN:
        return f"{host}:{pid}"[:100]
    return f"{host}:{pid} (qcluster {_LOADED_IN} {Conf.CLUSTER_NAME})"[:100]


@contextmanager
def closing_connections():
    """Workers reuse processes: start and end each task with healthy ORM connections."""
    close_old_connections()
    try:
        yield
    finally:
        connection.set_schema_to_public()
        close_old_connections()


# --- Cancellation -------------------------------------------------------------------------

CANCELLED_MESSAGE = "cancelled on request"
# Fault-hook names where a run may stop and roll back: after a table is copied (or copied back),
# after a catch-up round. Never inside the cutover's freeze, never while retiring rows.
SAFE_POINTS = ("copy:", "copy_back:", "catch_up:round")


class RunCancelled(StepFailed):
    """Raised at a safe point of a run whose cancel was requested: the run rolls back."""


def cancel_requested(run_id: int) -> bool:
    # From a copy's worker thread too (its safe points): the copy closes that thread's ORM
    # connection when the thread ends (load's on_worker_end).
    return bool(MigrationRun.objects.filter(pk=run_id).values_list("cancel_requested", flat=True).first())


class CancelWatch(Faults):
    """The run's checkpoint hook: the test faults first, then, at a safe point, the cancel flag."""

    def __init__(self, run_id: int, faults: Faults, lock: RunLock | None = None):
        super().__init__()
        self.run_id, self.inner, self.lock = run_id, faults, lock

    def checkpoint(self, name: str) -> None:
        self.inner.checkpoint(name)
        if self.lock is not None:
            self.lock.check()  # every checkpoint: between tables, rounds, phases of the cutover
        if name.startswith(SAFE_POINTS) and cancel_requested(self.run_id):
            raise RunCancelled(CANCELLED_MESSAGE)


def _cancel_before_step(run: MigrationRun, step_name: str) -> bool:
    """Between steps: True if a cancel is pending; otherwise the next step is recorded under the
    run's row lock, so a cancel asked at the same time sees it (services.cancel locks it too)."""
    with transaction.atomic():
        locked = MigrationRun.objects.select_for_update().only("pk", "cancel_requested").get(pk=run.pk)
        if locked.cancel_requested:
            return True
        MigrationRun.objects.filter(pk=run.pk).update(current_step=step_name)
        run.current_step = step_name
    return False


def writes_refused_seconds(run: MigrationRun) -> float | None:
    """How long the tenant's writes were refused: online, the cutover's freeze; offline, from
    the suspend to the reactivation (or to the end of a rollback that reopened it)."""
    if run.online:
        return run.freeze_seconds if run.freeze_seconds is not None else 0.0
    steps = {s.name: s for s in run.steps.filter(name__in=["suspend", "reactivate"])}
    suspend, reactivate = steps.get("suspend"), steps.get("reactivate")
    if suspend is None or suspend.started_at is None:
        return 0.0
    if reactivate is not None and reactivate.status == StepStatus.SUCCEEDED and reactivate.finished_at:
        end = reactivate.finished_at
    else:
        end = run.finished_at or timezone.now()
    return round(max((end - suspend.started_at).total_seconds(), 0.0), 3)


# --- Execution ----------------------------------------------------------------------------

def _finish(run: MigrationRun, status: str, error: str = "") -> None:
    set_read_switch(run.tenant_id, 0)  # a read switch ends with its run
    run.status = status
    run.finished_at = timezone.now()
    run.current_step = ""
    if error:
        run.error = error[:4000]
    if run.started_at and run.rows_copied:
        # The copy's own rate: a held online move's hours in sync are not copy time.
        copy = run.steps.filter(name__in=["copy", "copy_back"], started_at__isnull=False,
                                finished_at__isnull=False).first()
        end, start = (copy.finished_at, copy.started_at) if copy else (run.finished_at, run.started_at)
        run.rows_per_second = run.rows_copied / max((end - start).total_seconds(), 1e-6)
    if run.online:
        run.lag_changes = run.lag_seconds = None  # a lag is only meaningful while catching up
    run.next_round_at = None  # a parked run's pickup ends with it
    pickup.drop(run.pk)
    if run.started_at:
        run.writes_refused_seconds = writes_refused_seconds(run)
    run.save()
    run_finished.send_robust(sender=MigrationRun, run=run)


def _claim(run_id: int, resume: bool, park_when_held: bool = False) -> MigrationRun | None:
    """Mark the run running if this call should execute it; None when it is a no-op. A queue
    worker (`park_when_held`) leaves a parked run alone until its pickup is due."""
    with transaction.atomic():
        run = MigrationRun.objects.select_for_update(of=("self",)).select_related("tenant", "target_server").get(pk=run_id)
        if run.status == RunStatus.QUEUED or (resume and (run.status == RunStatus.RUNNING
                                                          or finishes_on_resume(run))):
            if park_when_held and is_parked(run) and not pickup.due(run):
                log.info("run %s is parked until %s: nothing to do yet", run_id, run.next_round_at)
                return None
            if run.status == RunStatus.FAILED:  # finished by this resume
                run.error, run.finished_at = "", None
            run.status = RunStatus.RUNNING
            run.started_at = run.started_at or timezone.now()
            run.heartbeat_at = timezone.now()
            run.worker = worker_name()
            run.next_round_at = None
            run.save()
            pickup.drop(run.pk)  # this worker has it now
            return run
    log.info("run %s is %s: nothing to do", run_id, run.status)
    return None


def execute(run_id: int, *, resume: bool = False, faults: Faults | None = None,
            park_when_held: bool = False) -> MigrationRun:
    """Execute (or resume) a run. A no-op if another worker holds it or it has ended.
    `park_when_held`: a queue worker; a held online move is parked between catch-up rounds
    (the call returns, the run stays running) instead of waiting in this process.
    `faults`: a fault-injection hook for tests; none in product code."""
    with run_lock(run_id) as lock:
        if not lock:
            log.info("run %s is being executed by another worker", run_id)
            return MigrationRun.objects.get(pk=run_id)
        run = _claim(run_id, resume, park_when_held)
        if run is None:
            return MigrationRun.objects.get(pk=run_id)
        ctx = RunContext(run, faults=CancelWatch(run.pk, faults or NO_FAULTS, lock), park_when_held=park_when_held)
        try:
            return _execute_steps(run, ctx, lock)
        except RunLockLost as lost:
            log.error("%s: this worker stops here, leaving the run to whoever owns it", lost)
            return MigrationRun.objects.get(pk=run_id)


def _execute_steps(run: MigrationRun, ctx: RunContext, lock: RunLock) -> MigrationRun:
    """The steps of a claimed run, from its first unfinished one, under `lock`."""
    secrets = known_secrets(run)
    for definition in steps_for(run):
        step = run.steps.filter(name=definition.name).first()
        if step is None or step.status == StepStatus.SUCCEEDED:
            continue
        lock.check()
        if not _past_point_of_no_return(run) and _cancel_before_step(run, definition.name):
            log.info("run %s cancelled before %s; rolling back", run.pk, definition.name)
            _rollback_steps(ctx, secrets, lock)
            run.refresh_from_db()
            failed_rollback = run.steps.filter(status=StepStatus.FAILED).exists()
            _finish(run, RunStatus.FAILED if failed_rollback else RunStatus.CANCELLED, CANCELLED_MESSAGE)
            return run
        try:
            if _run_until_parked(ctx, definition, step, lock):
                return run
        except Exception as exc:  # noqa: BLE001 - every failure ends in a rollback
            lock.check()  # the failure may be the cut itself: record nothing another worker now owns
            message = redact(f"{definition.name}: {exc}", secrets)
            step.status, step.finished_at, step.message = StepStatus.FAILED, timezone.now(), message[:4000]
            step.save()
            if _past_point_of_no_return(run):
                # The tenant already writes to the target: undoing would lose those writes.
                log.warning("run %s failed at %s after its cutover; not rolling back", run.pk, definition.name)
                _finish(run, RunStatus.FAILED, f"{message} (after cutover: the tenant lives in "
                                               f"{run.target_placement}; resume the run to finish)")
                return run
            log.warning("run %s failed at %s; rolling back", run.pk, definition.name)
            _rollback_steps(ctx, secrets, lock)
            run.refresh_from_db()
            failed_rollback = run.steps.filter(status=StepStatus.FAILED).exclude(pk=step.pk).exists()
            cancelled = isinstance(exc, RunCancelled)
            if cancelled:
                step.message = CANCELLED_MESSAGE
                step.save(update_fields=["message"])
            ended = RunStatus.CANCELLED if cancelled else RunStatus.ROLLED_BACK
            _finish(run, RunStatus.FAILED if failed_rollback else ended, message)
            return run
    lock.check()
    run.report = {**run.report, "summary": summary(run)}
    _finish(run, RunStatus.SUCCEEDED)
    return run


def _run_until_parked(ctx: RunContext, definition: Step, step: MigrationStep, lock: RunLock) -> bool:
    """Run the step; True when it parked the run instead (a held move between rounds)."""
    while True:
        try:
            _run_step(ctx, definition, step)
            return False
        except Parked as parked:
            if _park(ctx, step, parked.until, lock):
                return True
            # Released or cancelled meanwhile: go on here at once.


def _park(ctx: RunContext, step: MigrationStep, until, lock: RunLock) -> bool:
    """Leave the worker: the run stays running (its capture on, the tenant's one active run, the
    read switch as set) with its next round due `until` and a pickup scheduled then. False,
    changing nothing, if the hold was released or a cancel asked for meanwhile (the services
    change those under the same row lock, then enqueue the run if they find it parked)."""
    run = ctx.run
    with transaction.atomic():
        locked = MigrationRun.objects.select_for_update().only("pk", "hold_cutover", "cancel_requested").get(pk=run.pk)
        if not locked.hold_cutover or locked.cancel_requested:
            return False
        MigrationRun.objects.filter(pk=run.pk).update(next_round_at=until, worker="", heartbeat_at=timezone.now())
        pickup.schedule(run.pk, until)
        ctx.save_details(step, parks=step.details.get("parks", 0) + 1)
        # Unlocked before the commit: whoever waits for this row (a worker's claim, a cut over,
        # a cancel) then finds the run parked and its lock free.
        lock.release()
    run.next_round_at, run.worker = until, ""
    log.info("run %s parked until %s (held in sync)", run.pk, until)
    return True


def _run_step(ctx: RunContext, definition: Step, step: MigrationStep) -> None:
    run = ctx.run
    run.current_step = definition.name
    run.heartbeat_at = timezone.now()
    run.save(update_fields=["current_step", "heartbeat_at"])
    if run.online:  # a read switch applies only while catching up; the row lock orders it with set_read_share
        with transaction.atomic():
            share = MigrationRun.objects.select_for_update().filter(pk=run.pk).values_list("read_percent",
                                                                                          flat=True).get()
            catching_up = definition.name == "catch_up" and run.kind == RunKind.MOVE
            set_read_switch(run.tenant_id, share if catching_up else 0, run.target_placement, run.target_schema)
    if not (step.status == StepStatus.RUNNING and step.started_at and step.details.get("parks")):
        step.started_at = timezone.now()  # a parked step goes on: it started before its first park
    step.status, step.finished_at = StepStatus.RUNNING, None
    step.save()
    with _counting_round_trips(step):
        ctx.checkpoint(f"before:{definition.name}")
        message = definition.run(ctx, step)
        ctx.checkpoint(f"after:{definition.name}")
    step.status, step.finished_at, step.message = StepStatus.SUCCEEDED, timezone.now(), message
    step.save()


@contextmanager
def _counting_round_trips(step: MigrationStep):
    """The statements the step sent, into its details (`round_trips`, `connections`), whether
    it succeeds or fails (the caller saves the step); a parked step adds up its rounds."""
    with roundtrips.counting() as counted:
        try:
            yield
        finally:
            previous = step.details if step.details.get("parks") else {}
            step.details = {**step.details, **{k: previous.get(k, 0) + v for k, v in counted.as_dict().items()}}


def finishes_on_resume(run: MigrationRun) -> bool:
    """A run that failed after its point of no return (its cleanup, say): it did not roll back,
    the tenant lives in its target, and a resume finishes it."""
    return run.status == RunStatus.FAILED and _past_point_of_no_return(run)


def _past_point_of_no_return(run: MigrationRun) -> bool:
    """A point-of-no-return step (the cutover) succeeded, or one that did not finish (its worker
    killed, or it failed) had already switched the tenant to the run's target: either way the
    tenant writes there now, and undoing the run would lose those writes."""
    definitions = {d.name: d for d in steps_for(run)}
    unfinished = False
    for step in run.steps.filter(status__in=[StepStatus.SUCCEEDED, StepStatus.RUNNING, StepStatus.FAILED]):
        if step.name in definitions and definitions[step.name].point_of_no_return:
            if step.status == StepStatus.SUCCEEDED:
                return True
            unfinished = True
    if not unfinished or run.kind not in (RunKind.MOVE, RunKind.MOVE_BACK):
        return False  # a retirement's runs live where the tenant does: no switch to look for
    placement = Tenant.objects.filter(pk=run.tenant_id).values_list("placement", flat=True).first()
    return placement == run.target_placement


def _rollback_steps(ctx: RunContext, secrets: list[str], lock: RunLock) -> None:
    """Compensate every step that did anything, newest first. Continues past failures, not past
    the loss of the run's lock (RunLockLost: another worker may own the run now)."""
    set_read_switch(ctx.run.tenant_id, 0)  # no read goes to a target being undone
    definitions = {d.name: d for d in steps_for(ctx.run)}
    for step in ctx.run.steps.filter(status__in=[StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.RUNNING]
                                     ).order_by("-order"):
        lock.check()
        try:
            note = definitions[step.name].rollback(ctx, step)
            status = StepStatus.ROLLED_BACK
        except Exception as exc:  # noqa: BLE001 - report, keep undoing the rest
            note = redact(f"rollback failed: {exc}", secrets)
            status = StepStatus.FAILED
        step.message = f"{step.message}\n[rollback] {note}".strip()[:4000]
        if step.status != StepStatus.FAILED or status == StepStatus.FAILED:
            step.status = status
        step.save()


def rollback(run_id: int, reason: str = "rolled back on request", *, cancel: bool = False) -> MigrationRun:
    """Undo a run that is not finished (its worker died, or it is queued). `cancel`: the run
    ends `cancelled` (staff cancelled it) rather than `rolled_back`."""
    with run_lock(run_id) as owned:
        if not owned:
            raise StepFailed(f"run {run_id} is being executed by a live worker; wait for it or stop it first")
        run = MigrationRun.objects.select_related("tenant", "target_server").get(pk=run_id)
        if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.FAILED):
            raise StepFailed(f"run {run_id} is {run.status}: nothing to roll back")
        if _past_point_of_no_return(run):
            raise StepFailed(f"run {run_id} is past its cutover: the tenant writes to its new place; "
                             "resume it to finish, or move the tenant back")
        try:
            _rollback_steps(RunContext(run), known_secrets(run), owned)
            owned.check()
        except RunLockLost as lost:
            raise StepFailed(f"{lost}; the roll back stopped: run it again") from None
        ended = RunStatus.CANCELLED if cancel or run.status == RunStatus.QUEUED else RunStatus.ROLLED_BACK
        _finish(run, ended, reason)
        return run


def summary(run: MigrationRun) -> dict:
    return {"steps": run.steps_report()}
