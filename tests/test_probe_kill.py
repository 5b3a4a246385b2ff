"""Probes of what the engine's own connections being cut (pg_terminate_backend, as a DBA or an
idle-session timeout would) and a worker losing its run lock do to a move; the harness of
tests/test_killed_worker.py (a real `migrate_tenant` subprocess driven through the management
commands, put at a precise point by locks this test holds).

What test_killed_worker.py already covers is not repeated here (SIGKILL of an online move to a
database in copy, catch-up, freeze, switch and cleanup, then resume or roll back).

Probed by hand with scratch scripts (not kept: 56 cases, ~15 min), all fine after the fixes:
- SIGKILL of an offline `migrate_tenant --to schema` and `--to database`, writers on the moving
  tenant and on another one, in preflight (waiting on a table), suspend (waiting on the tenant's
  row, then in the drain), at the start of provision, create_tables, copy, sequences, verify,
  backup, switch and reactivate, mid-copy (waiting on a target table), mid-switch and
  mid-reactivate (waiting on the tenant's row); each recovered by resume_tenant_move and by
  rollback_tenant: tenant active in exactly one place, every acknowledged write there, shared
  rows and the other tenant untouched, target dropped on roll back, fence iff the tenant is
  away from shared, no capture left.
- pg_terminate_backend of the online copy's sessions (waiting on a target table), of the
  catch-up's, and of the freeze's sessions during the drain: the step fails, the run rolls
  back in the worker, the tenant is active in shared and unfenced, no write lost.
- SIGKILL of an online move to a *schema* (in-server copy) in catch-up, freeze, switch and
  cleanup, resume and roll back: fine.
Found (a test each below): the freeze connection cut while it fences the legacy rows; a worker
killed between the cutover's switch commit and the step's end; the run lock's session cut
while its worker lives; a run failed after its cutover refused by resume_tenant_move.
"""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.test_killed_worker import (WORKER_APP, Scenario, _blocked_at_switch, _commit_inflight, _into_the_freeze,
                                      leftovers, manage, run_manage, seeded_scenario)

pytestmark = pytest.mark.django_db(transaction=True)
SHORT = 60.0


@pytest.fixture
def scenario(make_tenant, cleanup, tmp_path, request):
    slug = f"probe_{request.node.name.split('[')[0][-12:]}"
    with seeded_scenario(slug, make_tenant, cleanup, tmp_path) as found:
        yield found


def blocked_sessions(s: Scenario, holder) -> list[tuple]:
    """(pid, application_name, query) of every session waiting for a lock `holder` holds."""
    return s.db.execute("SELECT pid, application_name, left(query, 120) FROM pg_stat_activity "
                        "WHERE %s = ANY(pg_blocking_pids(pid))", (holder.info.backend_pid,)).fetchall()


def assert_consistent(s: Scenario) -> None:
    """The tenant in exactly one place, its fence where it does not live, its run's status saying so."""
    status, placement = s.tenant_row()
    run = s.run()
    if placement == "shared":
        assert not s.fenced(), f"the tenant lives in shared but its shared rows are fenced: {s.state()}"
        assert run["status"] in ("rolled_back", "running"), s.state()
    else:
        assert s.fenced(), (f"the tenant lives in {placement} but its shared (legacy) rows take writes: "
                            f"{s.state()}")
        assert run["status"] != "rolled_back", f"the run says rolled back, the tenant moved: {s.state()}"


def test_freeze_connection_cut_while_fencing_the_legacy_rows(scenario):
    """The cutover's freeze connection is terminated while it re-closes the shared fence as
    legacy rows. Before the fix the placement switch had committed first: the failure then
    reopened the shared fence and rolled the run back, leaving the tenant living in its
    database with its shared rows writable (a stale app server's writes there are lost)."""
    s = scenario
    s.start_writers()
    inflight = _into_the_freeze(s)  # held: the worker waits for this transaction to drain
    fence_lock = s.connect(autocommit=False)
    fence_lock.execute("SELECT 1 FROM tenant_move_fence WHERE tenant_id = %s FOR UPDATE", (s.tenant.pk,))
    _commit_inflight(s, inflight)   # the drain ends: the worker applies, verifies, switches
    pid, app, query = s.wait_for("the switch to block on the fence row",
                                 lambda: blocked_sessions(s, fence_lock), timeout=SHORT)[0]
    assert app.startswith("tenant-move") and "tenant_move_fence" in query, (app, query)
    s.db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    fence_lock.rollback()
    s.worker.wait(SHORT)
    s.worker = None
    s.wait_worker_sessions_gone()
    assert_consistent(s)

    status, placement = s.tenant_row()
    if placement == "shared":  # the cut came before the switch: a clean roll back, a new move works
        assert status == "active" and s.run()["status"] == "rolled_back", s.state()
        done = run_manage("migrate_tenant", s.tenant.slug, "--to", "database", "--online")
        assert done.returncode == 0, done.stderr[-2000:]
    assert s.tenant_row() == ("active", "database"), s.state()
    assert_consistent(s)
    for writer in s.writers:
        writer.stop()
        rows, deleted, errors = writer.expected()
        assert not errors, errors[:5]
    rows, _, _ = s.writers[0].expected()
    found = s.rows_in(s.target_conn(), "shop_customer", s.tenant.pk, set(rows) | set(s.extra_acks))
    assert found == {**rows, **s.extra_acks}, "acknowledged writes of the moved tenant lost"
    assert leftovers()[0] == 0


def test_a_worker_that_lost_its_run_lock_stops_before_a_resume_runs_beside_it(scenario):
    """The run lock's session is terminated while the worker lives (blocked at the start of the
    copy). resume_tenant_move then finds the lock free, as after a crash, and is allowed. Before
    the fix both processes executed the run at once (duplicate keys in the copy, one process's
    roll back dropping the schema the other copied into); now the first stops at its next
    checkpoint, leaving the run to the resume, which finishes it alone."""
    s = scenario
    s.start_writers()
    table_lock = s.connect(autocommit=False)
    table_lock.execute("LOCK TABLE shop_customer IN ACCESS EXCLUSIVE MODE")  # the preflight waits
    s.worker_out = s.tmp / "worker.out"
    s.worker = manage("migrate_tenant", s.tenant.slug, "--to", "schema", stdout=s.worker_out.open("w"),
                      stderr=subprocess.STDOUT)
    s.procs.append(s.worker)
    s.wait_for("the preflight to wait", lambda: s.blocked_by(table_lock), timeout=SHORT)
    # Taken before the suspend starts its drain (which would wait for this test's transactions
    # begun before it): the tenant's row, where the suspend waits; then the copy step's row.
    tenant_lock = s.connect(autocommit=False)
    tenant_lock.execute("SELECT id FROM tenancy_tenant WHERE id = %s FOR UPDATE", (s.tenant.pk,))
    table_lock.rollback()
    s.wait_for("the suspend to wait", lambda: s.blocked_by(tenant_lock), timeout=SHORT)
    step_lock = s.connect(autocommit=False)
    run_id = s.run()["id"]
    step_lock.execute("SELECT id FROM migration_jobs_migrationstep WHERE run_id = %s AND name = 'copy' FOR UPDATE",
                      (run_id,))
    tenant_lock.rollback()
    s.wait_for("the copy to wait", lambda: s.blocked_by(step_lock), timeout=SHORT)

    cut = s.db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                       (f"tenant-move-run-{run_id}",)).fetchall()
    assert cut == [(True,)]
    resume_out = s.tmp / "resume.out"
    resume = manage("resume_tenant_move", s.tenant.slug, stdout=resume_out.open("w"), stderr=subprocess.STDOUT)
    s.procs.append(resume)
    # The resume queues behind the worker for the copy step's row (blocked by it, not by us).
    s.wait_for("the resume to wait beside the worker", lambda: s.db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = %s "
        "AND query LIKE 'UPDATE \"migration_jobs_migrationstep\"%%'", (WORKER_APP,)).fetchone()[0] == 2
        or resume.poll() is not None, timeout=SHORT)
    step_lock.rollback()
    first = s.worker.wait(SHORT)
    s.worker = None
    assert resume.wait(SHORT * 2) == 0, f"the resume failed: {resume_out.read_text()[-3000:]}; {s.state()}"
    assert "lock is gone" in s.worker_out.read_text() and first != 0, s.worker_out.read_text()[-3000:]
    assert s.tenant_row() == ("active", "schema") and s.run()["status"] == "succeeded", s.state()
    assert_consistent(s)
    for writer in s.writers:
        writer.stop()
        assert not writer.expected()[2], writer.expected()[2][:5]
    rows, _, _ = s.writers[0].expected()
    schema = s.db.execute("SELECT target_schema FROM migration_jobs_migrationrun WHERE id = %s",
                          (run_id,)).fetchone()[0]
    s.db.execute(f'SET search_path TO "{schema}"')
    found = s.rows_in(s.db, "shop_customer", s.tenant.pk, set(rows))
    s.db.execute("SET search_path TO public")
    assert found == rows, "acknowledged writes of the moved tenant lost"
    theirs, _, _ = s.writers[1].expected()
    assert s.rows_in(s.db, "shop_customer", s.other.pk, set(theirs)) == theirs
    assert leftovers()[0] == 0


def test_killed_after_the_switch_committed_is_not_rolled_back(scenario):
    """SIGKILL once the cutover's placement switch has committed but before the cutover step is
    recorded done (blocked saving the freeze's timings on the run row). The tenant already lives
    and writes in its database: rollback_tenant must not call that run rolled back (before the
    fix it did: every step "undone", the run `rolled_back`, the tenant in its database); it is
    refused and resume_tenant_move finishes the move."""
    s = scenario
    s.start_writers()
    row_lock = _blocked_at_switch(s)
    run_lock = s.connect(autocommit=False)
    run_lock.execute("SELECT id FROM migration_jobs_migrationrun WHERE id = %s FOR UPDATE", (s.run()["id"],))
    row_lock.rollback()  # the switch commits; then the worker waits for the run's row
    s.wait_for("the cutover to record its timings", lambda: s.blocked_by(run_lock), timeout=SHORT)
    assert s.tenant_row()[1] == "database" and s.step("cutover")[0] == "running", s.state()
    s.kill_worker()
    run_lock.rollback()
    s.wait_worker_sessions_gone()

    done = run_manage("rollback_tenant", s.tenant.slug)
    assert done.returncode == 2 and "resume" in done.stderr, (done.returncode, done.stdout[-1500:],
                                                             done.stderr[-1500:], s.state())
    assert s.tenant_row() == ("active", "database") and s.run()["status"] == "running", s.state()
    done = run_manage("resume_tenant_move", s.tenant.slug)
    assert done.returncode == 0, (done.stderr[-2000:], s.state())
    assert s.tenant_row() == ("active", "database") and s.run()["status"] == "succeeded", s.state()
    assert_consistent(s)
    time.sleep(0.3)
    for writer in s.writers:
        writer.stop()
        assert not writer.expected()[2], writer.expected()[2][:5]
    rows, deleted, _ = s.writers[0].expected()
    rows = {**rows, **s.extra_acks}
    found = s.rows_in(s.target_conn(), "shop_customer", s.tenant.pk, set(rows) | deleted)
    assert found == rows, "acknowledged writes of the moved tenant lost"
    theirs, _, _ = s.writers[1].expected()
    assert s.rows_in(s.db, "shop_customer", s.other.pk, set(theirs)) == theirs
    assert leftovers()[0] == 0


def test_a_run_that_failed_after_its_cutover_is_finished_by_resume(make_tenant, cleanup):
    """README: "a failure in cleanup leaves the run `failed` and `resume_tenant_move` finishes
    it"; the run's own error says "resume the run to finish". Before the fix the resume was
    refused ("no interrupted run to resume") and the capture (triggers, change log) stayed on
    the shared tables, logging the tenant's rows for good."""
    from migration_jobs import services
    from migration_jobs.models import RunStatus
    from migration_jobs.runs import executor
    from migration_jobs.runs.faults import Faults
    from tests.helpers import fill, run_cmd

    tenant = make_tenant("probe_cleanup_failed")
    cleanup(tenant)
    fill(tenant, 3)
    run = services.request_move(tenant, "schema", online=True)
    run = executor.execute(run.pk, faults=Faults({"before:cleanup": RuntimeError}))
    assert run.status == RunStatus.FAILED and "resume the run to finish" in run.error
    assert leftovers()[0] == 1  # its capture is left on the shared tables, until...

    # The admin's resume action offers it too (it skipped every run but a running one).
    from django.test import Client
    from tests.helpers import staff_user
    admin = Client()
    admin.force_login(staff_user("resumer", superuser=True))
    page = admin.post("/admin/migration_jobs/migrationrun/", {"action": "resume_runs", "_selected_action": [run.pk]})
    assert page.status_code == 200 and "Yes, resume" in page.content.decode()
    assert f"{tenant.slug}: skipped" not in page.content.decode()

    code, out, err = run_cmd("resume_tenant_move", tenant.slug)
    assert code == 0, err
    run.refresh_from_db()
    tenant.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and not run.error, run.error
    assert (tenant.placement, tenant.status) == ("schema", "active")
    assert run.steps.get(name="cleanup").status == "succeeded"
    assert leftovers()[0] == 0
    code, _, err = run_cmd("resume_tenant_move", tenant.slug)  # once finished: nothing to resume
    assert code == 2 and "no interrupted run" in err


def test_round_trip_counting_blocks_of_two_threads_end_in_any_order():
    """Two runs executing in one process (threads, as test_held_runs does): their steps' counting
    blocks start with equal counts. Ending the later one first removed the earlier one's counter
    (equal by value), and the earlier one then failed its step with "list.remove(x): x not in
    list" (seen as a preflight rolled back once the run lock checks shifted the timing)."""
    from migration_jobs.engine import roundtrips

    first, second = roundtrips.counting(), roundtrips.counting()
    a = first.__enter__()
    b = second.__enter__()
    assert a == b and a is not b
    second.__exit__(None, None, None)
    roundtrips._count(1)  # counted by the block still open only
    first.__exit__(None, None, None)
    assert (a.statements, b.statements) == (1, 0)
    assert not roundtrips._active
