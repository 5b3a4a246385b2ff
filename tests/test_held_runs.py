"""Holding a run does not hold a worker: a held online move run by the django-q2 cluster applies
a catch-up round and parks (still running, its capture on, `next_round_at` set, a django-q2
ONCE schedule to pick it up, its lock free); django-q2's own scheduler hands it to a worker for
each round; cut over and cancel enqueue it at once; the hold's deadline counts across parks.
A queued run says why it waits. And a cancel asked in the middle of an offline copy rolls the
move back with every row in place.

Real PostgreSQL, real runs, django-q2's real scheduler function against its ORM broker (sync
mode in the test settings: a task runs where it is enqueued), and one test with a real
`qcluster` process of one worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from multiprocessing import Event, Queue, Value
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import Schedule, Task
from django_q.monitor import monitor
from django_q.pusher import pusher
from django_q.scheduler import scheduler
from django_q.worker import worker
from psycopg import sql

from migration_jobs import services, tasks
from migration_jobs.engine import capture, provision
from migration_jobs.engine.places import shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.models import MigrationRun, RunStatus, StepStatus
from migration_jobs.runs import executor, pickup
from migration_jobs.runs.faults import Faults
from shop.models import Customer
from tenancy.context import tenant_context
from tenancy.models import Placement, Status
from tests.helpers import fill, make_token, shared_counts, snapshot, staff_user, wait_for_catch_up_round

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent


def catch_up_round(run) -> int:
    return run.steps.get(name="catch_up").details.get("round", 0)


def make_due(run) -> None:
    """Time passes: the parked run's next round and its schedule are due now."""
    past = timezone.now() - timedelta(seconds=1)
    MigrationRun.objects.filter(pk=run.pk).update(next_round_at=past)
    assert Schedule.objects.filter(name=pickup.schedule_name(run.pk)).update(next_run=past) == 1


def scheduler_pass(monkeypatch) -> int:
    """What a django-q2 cluster does about every 30 s, with django-q2's own parts in this
    process: its scheduler turns due schedules into tasks on the ORM broker, the pusher takes
    them off, a worker runs them, the monitor records and acknowledges them."""
    broker = get_broker()
    # Only the runs' rounds: the fleet's every-minute advance (made by migrate) and health
    # refreshes are other schedules, due whenever this runs.
    Schedule.objects.exclude(name__startswith="tenant-move-run-").delete()
    with monkeypatch.context() as patch:
        patch.setattr(Conf, "SYNC", False)  # onto the broker, as in a cluster (tests run tasks inline)
        scheduler(broker=broker)
    task_queue, result_queue, stop = Queue(), Queue(), Event()
    stop.set()  # one pull
    pusher(task_queue, stop, broker=broker)
    count = task_queue.qsize()
    task_queue.put("STOP")
    worker(task_queue, result_queue, Value("b", -1))
    result_queue.put("STOP")
    monitor(result_queue, broker)
    connection.close()
    return count


def parked_move(make_tenant, cleanup, slug, rows=3):
    tenant = make_tenant(slug)
    cleanup(tenant)
    fill(tenant, rows)
    run = services.request_move(tenant, "schema", online=True, hold_cutover=True)
    services.enqueue(run)  # sync mode: the task runs here, until the run parks
    run.refresh_from_db()
    return tenant, run


def assert_parked(run) -> None:
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.current_step == "catch_up", (run.status, run.error)
    assert services.is_parked(run) and run.next_round_at > timezone.now() and run.worker == ""
    assert run.pk not in executor.executing_run_ids() and executor.lock_is_free(run.pk)
    schedule = pickup.pending(run.pk)
    assert schedule is not None and schedule.next_run == run.next_round_at
    assert schedule.func == "migration_jobs.tasks.execute_run" and schedule.schedule_type == Schedule.ONCE
    assert run.steps.get(name="catch_up").status == StepStatus.RUNNING


def test_a_parked_run_keeps_its_capture_and_the_scheduler_picks_it_up(make_tenant, cleanup, settings, monkeypatch):
    settings.MIGRATION_HELD_ROUND_INTERVAL = 3600.0
    tenant, run = parked_move(make_tenant, cleanup, "parky")
    assert_parked(run)
    first = catch_up_round(run)
    assert first >= 1
    started = run.steps.get(name="catch_up").started_at
    # Still the tenant's one active run, in shared and writable; its capture stays on and is owned.
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    with pytest.raises(services.Refused, match="already has an active run"):
        services.request_move(tenant, "database")
    mine = [item for item in services.leftovers() if item["run"] == run.pk]
    assert mine and not any(item["orphaned"] for item in mine), mine
    assert services.run_state(run).startswith("held in sync: waiting for you to cut over (no worker kept; "
                                              "next round at ")
    assert services.interrupted_runs([run], allow_queued=True)[0] == []  # not a dead worker's run
    assert services.run_report(run)["next_round_at"] == run.next_round_at.isoformat()

    # Not due: a stray delivery of its task and the scheduler both leave it alone.
    assert tasks.execute_run(run.pk, True).startswith(f"run {run.pk}: held in sync, parked until ")
    assert scheduler_pass(monkeypatch) == 0
    run.refresh_from_db()
    assert catch_up_round(run) == first and pickup.pending(run.pk) is not None

    # The tenant writes while its move is parked; django-q2's scheduler hands the due round to a worker.
    with tenant_context(tenant):
        Customer.objects.create(first_name="while", last_name="parked", created_at=timezone.now())
    make_due(run)
    assert scheduler_pass(monkeypatch) == 1
    assert Task.objects.filter(name=f"tenant-move-run-{run.pk}-resume", success=True).exists()
    assert_parked(run)
    assert catch_up_round(run) > first
    assert run.steps.get(name="catch_up").started_at == started  # one step, parked twice
    assert run.steps.get(name="catch_up").details["parks"] == 2
    with shared_place().connect() as conn:  # applied to the target by the scheduled round
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.shop_customer WHERE first_name = 'while'").format(
            sql.Identifier(tenant.schema_name))).fetchone()[0] == 1

    # Cut over: enqueued at once, not at the next scheduled round (an hour away).
    before = shared_counts(tenant)
    services.release_cutover(run)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.next_round_at is None and pickup.pending(run.pk) is None
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SCHEMA, Status.ACTIVE)
    with tenant_context(tenant):
        assert Customer.objects.count() == before["shop_customer"]
    with shared_place().connect() as conn:
        assert capture.leftovers(conn) == []


def test_cancel_a_parked_run_rolls_it_back_at_once(make_tenant, cleanup, settings):
    settings.MIGRATION_HELD_ROUND_INTERVAL = 3600.0
    tenant, run = parked_move(make_tenant, cleanup, "parkc")
    assert_parked(run)
    before = snapshot(shared_place(), tenant.pk)

    cancelled = services.cancel(run)  # no worker has it: a task rolls it back now

    assert cancelled.status == RunStatus.CANCELLED, cancelled.error
    assert "cancelled on request" in cancelled.error and pickup.pending(run.pk) is None
    assert cancelled.next_round_at is None
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    assert snapshot(shared_place(), tenant.pk) == before
    assert not provision.schema_exists(tenant.schema_name)
    with shared_place().connect() as conn:
        assert capture.leftovers(conn) == []
        assert capture.fence_reason(conn, shared_place(), tenant.pk) is None
    assert services.active_run(tenant) is None


def test_the_hold_deadline_counts_across_parks(make_tenant, cleanup, settings, monkeypatch):
    settings.MIGRATION_HELD_ROUND_INTERVAL = 3600.0
    settings.MIGRATION_HOLD_MAX_SECONDS = 1.0
    tenant, run = parked_move(make_tenant, cleanup, "parkd")
    assert_parked(run)
    time.sleep(1.2)  # longer than the hold may last, spent parked: no worker counted it
    make_due(run)
    assert scheduler_pass(monkeypatch) == 1
    run.refresh_from_db()
    assert run.status == RunStatus.ROLLED_BACK and "cutover held for more than 1s" in run.error, run.error
    assert pickup.pending(run.pk) is None
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    with shared_place().connect() as conn:
        assert capture.leftovers(conn) == []


def test_a_queued_run_says_why_it_waits(make_tenant, cleanup, settings):
    """Two held moves executing (each keeps its process, as a command does) fill two workers: a
    queued run says which; a parked run is not busy; the admin, its live figures and the API say it."""
    settings.Q_CLUSTER = {**django_settings.Q_CLUSTER, "workers": 2}
    settings.MIGRATION_HOLD_MAX_SECONDS = 120.0  # the runs give up if this test dies
    busy = []
    for slug in ("busy_a", "busy_b"):
        tenant = make_tenant(slug)
        cleanup(tenant)
        fill(tenant, 1)
        busy.append(services.request_move(tenant, "schema", online=True, hold_cutover=True))
    threads = [threading.Thread(target=lambda r=run: (services.execute(r), connection.close()), daemon=True)
               for run in busy]
    waiting_tenant = make_tenant("waiting")
    cleanup(waiting_tenant)
    queued = services.request_move(waiting_tenant, "schema")
    assert services.why_waiting(queued) == "waiting for a worker to pick it up (0 of 2 workers busy)"
    for thread in threads:
        thread.start()
    try:
        for run in busy:
            wait_for_catch_up_round(run, 1)
        _, parked = parked_move(make_tenant, cleanup, "parked_too", rows=1)
        assert_parked(parked)
        ids = ", ".join(str(run.pk) for run in busy)
        assert services.why_waiting(queued) == f"2 of 2 workers busy: runs {ids}", [
            (r.pk, r.status, r.current_step, r.error) for r in MigrationRun.objects.filter(pk__in=[b.pk for b in busy])]
        assert services.run_state(queued) == f"queued: 2 of 2 workers busy: runs {ids}"
        assert services.why_waiting(busy[0]) is None and services.why_waiting(parked) is None
        settings.Q_CLUSTER = {**django_settings.Q_CLUSTER, "workers": 3}
        assert services.why_waiting(queued) == f"waiting for a worker to pick it up (2 of 3 workers busy: runs {ids})"
        settings.Q_CLUSTER = {**django_settings.Q_CLUSTER, "workers": 2}
        # The run list, the run page's live figures and the API.
        staff = Client()
        staff.force_login(staff_user("boss", superuser=True))
        listing = staff.get("/admin/migration_jobs/migrationrun/").content.decode()
        assert f"queued: 2 of 2 workers busy: runs {ids}" in listing
        live = staff.get(f"/admin/migration_jobs/migrationrun/{queued.pk}/live/").json()
        assert live["state"] == f"queued: 2 of 2 workers busy: runs {ids}"
        token = make_token(staff_user("ops", ["migration_jobs.view_migrationrun", "tenancy.view_tenant"]))
        report = Client().get(f"/api/admin/migrations/{queued.pk}", headers={"Authorization": f"Bearer {token}"})
        assert report.status_code == 200, report.content
        assert report.json()["state"] == f"queued: 2 of 2 workers busy: runs {ids}"
        services.cancel(parked)
    finally:
        for run in busy:
            MigrationRun.objects.filter(pk=run.pk).update(hold_cutover=False)
        for thread in threads:
            thread.join(120)
    for run in busy:
        run.refresh_from_db()
        assert run.status == RunStatus.SUCCEEDED, run.error
        provision.drop_schema(run.target_schema)
    assert services.why_waiting(queued) == "waiting for a worker to pick it up (0 of 2 workers busy)"
    services.cancel(queued)


# --- A real cluster of one worker -------------------------------------------------------------

def _cluster_env() -> dict:
    db = connection.settings_dict["NAME"]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "APP_DATABASE_NAME": db,
           "TENANT_DATABASE_PREFIX": django_settings.TENANT_DATABASE_PREFIX,
           "TENANT_BACKUP_DIR": str(django_settings.BACKUP_DIR), "LOG_LEVEL": "WARNING", "Q_WORKERS": "1",
           "MIGRATION_HELD_ROUND_INTERVAL": "1", "TENANT_ROUTE_LISTENER": "false", "PYTHONUNBUFFERED": "1"}
    if os.environ.get("DATABASE_URL"):
        parts = urlsplit(os.environ["DATABASE_URL"])
        env["DATABASE_URL"] = urlunsplit(parts._replace(path="/" + db))
    return env


def wait_until(what, condition, cluster, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert cluster.poll() is None, f"the cluster exited ({cluster.returncode}) before {what}"
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what} after {timeout:.0f}s")


def test_a_held_run_leaves_the_only_worker_free(make_tenant, cleanup, tmp_path, monkeypatch):
    """One `qcluster` worker: a held move parks, an offline move of another tenant then runs and
    succeeds on that worker; the cluster's own scheduler gives the held move its next round; cut
    over is enqueued at once and the held move finishes."""
    monkeypatch.setattr(Conf, "SYNC", False)  # this process enqueues to the ORM broker, as the web does
    held_tenant, other = make_tenant("held1"), make_tenant("other1")
    cleanup(held_tenant)
    cleanup(other)
    fill(held_tenant, 3)
    fill(other, 3)
    log = (tmp_path / "cluster.log").open("w")
    cluster = subprocess.Popen([sys.executable, str(BASE_DIR / "manage.py"), "qcluster"], cwd=BASE_DIR,
                               env=_cluster_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        held = services.request_move(held_tenant, "schema", online=True, hold_cutover=True)
        services.enqueue(held)
        wait_until("the held move to park", lambda: services.is_parked(MigrationRun.objects.get(pk=held.pk)), cluster)

        offline = services.request_move(other, "schema")
        services.enqueue(offline)
        wait_until("the other move to end", lambda: not MigrationRun.objects.get(pk=offline.pk).is_active, cluster)
        offline.refresh_from_db()
        assert offline.status == RunStatus.SUCCEEDED, offline.error
        held.refresh_from_db()
        assert held.status == RunStatus.RUNNING and catch_up_round(held) >= 1

        # django-q2's scheduler (every ~30 s in the cluster) hands it its next round.
        first = catch_up_round(held)
        wait_until("a scheduled catch-up round", lambda: catch_up_round(held) > first, cluster, timeout=120)
        wait_until("the held move to park again", lambda: services.is_parked(MigrationRun.objects.get(pk=held.pk)),
                   cluster)
        # Its next round an hour away: the cutover can only come from the enqueue of release_cutover.
        later = timezone.now() + timedelta(hours=1)
        MigrationRun.objects.filter(pk=held.pk).update(next_round_at=later)
        Schedule.objects.filter(name=pickup.schedule_name(held.pk)).update(next_run=later)
        services.release_cutover(held)
        wait_until("the held move to end", lambda: not MigrationRun.objects.get(pk=held.pk).is_active, cluster,
                   timeout=120)
        held.refresh_from_db()
        assert held.status == RunStatus.SUCCEEDED, held.error
        held_tenant.refresh_from_db()
        assert held_tenant.placement == Placement.SCHEMA
        assert pickup.pending(held.pk) is None
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)
        try:
            cluster.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(60)
        log.close()
    for run in (held, offline):
        provision.drop_schema(run.target_schema)


# --- Cancel in the middle of an offline copy ----------------------------------------------------

class CancelDuringCopy(Faults):
    """At the first copied table, staff (another thread, as a request would) cancel the run."""

    def __init__(self, run_id: int, table: str):
        super().__init__()
        self.run_id, self.table, self.outcome = run_id, table, {}

    def checkpoint(self, name: str) -> None:
        if name == f"copy:{self.table}" and not self.outcome:
            def cancel():
                try:
                    self.outcome["status"] = services.cancel(self.run_id).status
                finally:
                    connection.close()
            staff = threading.Thread(target=cancel)
            staff.start()
            staff.join(60)


def test_cancel_during_an_offline_copy_rolls_back_with_every_row(make_tenant, cleanup):
    tenant = make_tenant("copyc")
    cleanup(tenant)
    fill(tenant, 6)
    before = snapshot(shared_place(), tenant.pk)
    run = services.request_move(tenant, "database")
    faults = CancelDuringCopy(run.pk, tenant_tables()[0].name)

    with executor.closing_connections():
        done = executor.execute(run.pk, faults=faults)

    assert faults.outcome == {"status": RunStatus.RUNNING}  # asked while its worker held it
    assert done.status == RunStatus.CANCELLED, done.error
    copy = done.steps.get(name="copy")
    assert copy.message.startswith("cancelled on request")  # where it stopped
    assert copy.details.get("tables")  # at least one table was committed in the target, then undone
    assert done.steps.get(name="verify").status == StepStatus.PENDING
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    assert snapshot(shared_place(), tenant.pk) == before
    assert not provision.database_exists(done.target_server, done.target_database)
    with shared_place().connect() as conn:
        assert capture.fence_reason(conn, shared_place(), tenant.pk) is None
    with tenant_context(tenant):  # writable again
        Customer.objects.create(first_name="after", last_name="cancel", created_at=timezone.now())
