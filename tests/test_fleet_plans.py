"""Fleet plans: dry run, plans of small tenants executed by the real tasks (through the real
django-q2 ORM broker, run in this process as a worker would, or in sync mode), max_parallel,
the window, both failure policies (a run failed by the test fault hook), pause / resume /
cancel with the rollback of a running run, two advances at once, every bad input refused in
one line with nothing changed, the admin (plan page, add form, actions, permissions) and the
notices in the outbox. Real PostgreSQL, real runs, no mock."""
import pydoc
import threading
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule
from django_q.signing import SignedPackage

from fleet import services, tasks
from fleet.models import ItemStatus, MovePlan, MovePlanItem, PlanStatus
from migration_jobs import services as run_services
from migration_jobs.engine import provision
from migration_jobs.models import ACTIVE_STATUSES, MigrationRun, RunStatus
from migration_jobs.runs.executor import closing_connections, execute
from migration_jobs.runs.faults import Faults, WorkerKilled
from tenancy.models import DatabaseServer, Placement, Status, Tenant
from tenancy.servers import ensure_default_server
from tenancy.shared_db import shared_password
from tests.helpers import fill, run_cmd, shared_counts, staff_user, texts

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tenants(make_tenant, cleanup):
    """Four small shared tenants of different sizes (a .. d, biggest first), with contacts."""
    made = []
    for slug, n in (("fa", 6), ("fb", 4), ("fc", 3), ("fd", 2)):
        tenant = make_tenant(slug)
        tenant.contact_email = f"ops@{slug}.test"
        tenant.save()
        fill(tenant, n)
        cleanup(tenant)
        made.append(tenant)
    return made


@pytest.fixture
def queued(monkeypatch):
    """Tasks go to the ORM broker (not run inline, as the test settings' sync mode would);
    `queued()` then runs what waits, oldest first, in this process as a worker would, and
    returns the names of the functions it ran."""
    monkeypatch.setattr(Conf, "SYNC", False)
    broker = get_broker()

    def drain(limit: int = 1000, check=None):
        ran = []
        while len(ran) < limit:
            waiting = broker.dequeue()
            if not waiting:
                break
            for ack_id, pack in waiting:
                task = SignedPackage.loads(pack)
                broker.acknowledge(ack_id)
                pydoc.locate(task["func"])(*task["args"], **task["kwargs"])
                ran.append(task["func"].rsplit(".", 1)[-1])
                if check:
                    check()
        return ran

    return drain


def active_runs() -> int:
    return MigrationRun.objects.filter(status__in=ACTIVE_STATUSES).count()


def statuses(plan) -> dict:
    return dict(plan.items.values_list("tenant__slug", "status"))


def state() -> tuple:
    """What a refused request must leave alone."""
    return (list(MovePlan.objects.values_list("pk", "status")), list(MovePlanItem.objects.values_list("pk", "status")),
            MigrationRun.objects.count(), sorted(Tenant.objects.values_list("slug", "placement", "status")),
            OrmQ.objects.count())


# --- Planning ----------------------------------------------------------------------------------

def test_dry_run_prints_the_estimate_and_creates_nothing(tenants):
    before = state()
    code, out, err = run_cmd("plan_moves", "--tenants", "fd,fb,fa,fc", "--to", "schema", "--max-parallel", "2",
                             "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("plan (dry run, nothing created): 4 tenants to schema")
    body = [line.split()[0] for line in lines[3:7]]
    assert body == ["fa", "fb", "fc", "fd"]  # biggest first
    rows = {t.slug: sum(shared_counts(t).values()) for t in tenants}
    assert [int(line.split()[1]) for line in lines[3:7]] == [rows[s] for s in body]
    assert f"total: {sum(rows.values()):,} rows" in out and "with 2 at once" in out
    assert state() == before


def test_a_plan_runs_through_the_queue_never_more_than_its_limit(tenants, queued, settings):
    plan = services.create_plan(tenants="fa,fb,fc,fd", target="schema", online=False, max_parallel=2,
                                order="smallest_first", created_by=None)
    assert plan.status == PlanStatus.DRAFT and list(plan.items.values_list("tenant__slug", flat=True)) == \
        ["fd", "fc", "fb", "fa"]
    assert queued() == [] and active_runs() == 0  # a draft does nothing

    plan = services.start_plan(plan)
    assert plan.status == PlanStatus.RUNNING
    scheduled = [m for m in mail.outbox if "planned move" in m.subject]
    assert sorted(m.to[0] for m in scheduled) == ["ops@fa.test", "ops@fb.test", "ops@fc.test", "ops@fd.test"]
    assert "writes are refused for about" in scheduled[0].body  # offline: the expected refusal

    assert queued(limit=1) == ["advance_plan"]
    assert active_runs() == 2 and statuses(plan) == {"fd": "running", "fc": "running", "fb": "waiting",
                                                      "fa": "waiting"}
    assert tasks.advance_plan(plan.pk).endswith("0 move(s) started")  # again: nothing more (idempotent)
    seen = []
    ran = queued(check=lambda: seen.append(active_runs()))

    assert max(seen) <= 2 and ran.count("execute_run") == 4 and "advance_plan" in ran
    plan.refresh_from_db()
    assert plan.status == PlanStatus.DONE and plan.finished_at, plan.error
    assert set(statuses(plan).values()) == {ItemStatus.DONE}
    for tenant in tenants:
        tenant.refresh_from_db()
        assert (tenant.placement, tenant.status) == (Placement.SCHEMA, Status.ACTIVE)
        assert run_services.verify(tenant)["ok"]
    runs = MigrationRun.objects.filter(requested_via=f"plan {plan.pk}")
    assert runs.count() == 4 and set(runs.values_list("status", flat=True)) == {RunStatus.SUCCEEDED}
    done = [m for m in mail.outbox if m.subject.endswith("done")]
    assert sorted(m.to[0] for m in done) == ["ops@fa.test", "ops@fb.test", "ops@fc.test", "ops@fd.test"]
    code, out, err = run_cmd("plan_control", "show", str(plan.pk))
    assert code == 0 and "[4/4] done 4, running 0, waiting 0, failed 0" in out, (out, err)


def test_a_plan_started_by_the_command_in_sync_mode(tenants):
    """The test settings run tasks inline (Q_SYNC): start enqueues the advance, which enqueues
    the runs, whose ends enqueue the advance again; the command returns with the plan done."""
    code, out, err = run_cmd("plan_moves", "--tenants", "fd", "--to", "schema", "--offline", "--start")
    assert code == 0, err
    plan = MovePlan.objects.get()
    assert plan.status == PlanStatus.DONE and set(statuses(plan).values()) == {ItemStatus.DONE}
    assert "[1/1] done 1" in out
    assert Schedule.objects.filter(func="fleet.tasks.advance_open_plans", minutes=1).count() == 1


def test_two_advances_at_once_start_one_move(tenants, queued):
    plan = services.create_plan(tenants="fa,fb", target="schema", online=False, max_parallel=1)
    services.start_plan(plan)
    OrmQ.objects.all().delete()  # the queued advance: done by hand below, twice at once
    barrier, results = threading.Barrier(2), []

    def advance():
        try:
            barrier.wait(10)
            results.append(tasks.advance_plan(plan.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=advance) for _ in range(2)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert sorted(r.split(": ")[1] for r in results) == ["0 move(s) started", "1 move(s) started"]
    assert active_runs() == 1
    # Its task lost (the process died between the commit and the enqueue): handed out again, once.
    OrmQ.objects.all().delete()
    MigrationRun.objects.update(created_at=timezone.now() - services.RESUME_AFTER)
    assert tasks.advance_plan(plan.pk) == f"plan {plan.pk} running: 0 move(s) started, 1 interrupted one(s) " \
                                         "handed to a worker again"
    assert tasks.advance_plan(plan.pk) == f"plan {plan.pk} running: 0 move(s) started"
    assert [SignedPackage.loads(q.payload)["func"] for q in OrmQ.objects.all()] == ["migration_jobs.tasks.execute_run"]
    services.cancel(plan)
    queued()
    plan.refresh_from_db()
    assert plan.status == PlanStatus.CANCELLED and active_runs() == 0


def test_database_moves_spread_over_servers_least_loaded_first_within_capacity(tenants, queued):
    default = ensure_default_server()
    servers = []
    for name, limit in (("s1", 1), ("s2", None)):
        server = DatabaseServer(name=name, host=default.host, port=default.port, admin_user=default.admin_user,
                                maintenance_db=default.maintenance_db, max_tenant_databases=limit)
        server.set_admin_password(shared_password())
        server.save()
        servers.append(server)
    plan = services.create_plan(tenants="fa,fb,fc", target="database", servers=["s2", "s1"], max_parallel=3,
                                order="as_listed")
    services.start_plan(plan)
    assert queued(limit=1) == ["advance_plan"]
    runs = MigrationRun.objects.filter(requested_via=f"plan {plan.pk}").order_by("pk")
    # s1 and s2 both empty: s1 (by name); then s2, less loaded; then s2 again, s1 being full.
    assert [(r.tenant.slug, r.target_server.name) for r in runs] == [("fa", "s1"), ("fb", "s2"), ("fc", "s2")]
    services.cancel(plan)  # three queued runs: cancelled at once
    queued()
    plan.refresh_from_db()
    assert plan.status == PlanStatus.CANCELLED and set(runs.values_list("status", flat=True)) == {"cancelled"}


# --- The window ----------------------------------------------------------------------------------

def test_nothing_starts_before_the_window_nor_what_does_not_fit_in_it(tenants, queued, settings):
    now = timezone.now()
    plan = services.create_plan(tenants="fa,fb", target="schema", online=False,
                                window_start=now + timedelta(hours=1), window_end=now + timedelta(hours=2))
    plan = services.start_plan(plan)
    assert plan.status == PlanStatus.SCHEDULED
    assert "between" in mail.outbox[0].body
    queued()
    plan.refresh_from_db()
    assert plan.status == PlanStatus.SCHEDULED and active_runs() == 0

    # The window opens, with 30 s left; every move is expected to take an hour (no run measured).
    settings.FLEET_DEFAULT_MOVE_SECONDS = 3600.0
    MovePlan.objects.filter(pk=plan.pk).update(window_start=now - timedelta(minutes=1),
                                               window_end=timezone.now() + timedelta(seconds=30))
    assert tasks.advance_plan(plan.pk) == f"plan {plan.pk} done: 0 move(s) started"
    assert active_runs() == 0 and MigrationRun.objects.count() == 0
    assert set(statuses(plan).values()) == {ItemStatus.SKIPPED}
    assert "does not fit in the window" in plan.items.first().error
    assert [m.subject for m in mail.outbox[2:]] == ["[tenant moves] move of fa not taking place",
                                                    "[tenant moves] move of fb not taking place"]


# --- Failures ------------------------------------------------------------------------------------

def _fail_first(plan, queued):
    """Start the plan; its first run fails (the test fault hook) and rolls back."""
    services.start_plan(plan)
    assert queued(limit=1) == ["advance_plan"]
    first = plan.items.get(position=1)
    OrmQ.objects.all().delete()  # its execute_run task: this test executes that run with a fault
    with closing_connections():
        failed = execute(first.run_id, faults=Faults({"after:provision": RuntimeError("disk full")}))
    assert failed.status == RunStatus.ROLLED_BACK
    return first


def test_on_failure_stop(tenants, queued):
    plan = services.create_plan(tenants="fa,fb,fc", target="schema", online=False, on_failure="stop")
    before = shared_counts(tenants[0])
    first = _fail_first(plan, queued)
    assert queued() == ["advance_plan"]  # the run's end enqueued it (run_finished)
    plan.refresh_from_db()
    assert plan.status == PlanStatus.FAILED and "stopped after fa failed" in plan.error
    assert statuses(plan) == {"fa": "failed", "fb": "skipped", "fc": "skipped"}
    assert "disk full" in MovePlanItem.objects.get(pk=first.pk).error
    tenant = Tenant.objects.get(slug="fa")
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE) and shared_counts(tenant) == before
    assert not provision.schema_exists(tenant.schema_name)
    assert MigrationRun.objects.count() == 1
    subjects = sorted(m.subject for m in mail.outbox if "planned" not in m.subject)
    assert subjects == ["[tenant moves] move of fa rolled back", "[tenant moves] move of fb not taking place",
                        "[tenant moves] move of fc not taking place"]


def test_on_failure_skip(tenants, queued):
    plan = services.create_plan(tenants="fa,fb", target="schema", online=False, on_failure="skip")
    _fail_first(plan, queued)
    queued()
    plan.refresh_from_db()
    assert plan.status == PlanStatus.DONE and plan.error == ""
    assert statuses(plan) == {"fa": "failed", "fb": "done"}
    code, out, err = run_cmd("plan_control", "show", str(plan.pk))
    assert "[2/2] done 1, running 0, waiting 0, failed 1" in out


def test_a_plan_carries_on_after_every_worker_restarted(tenants, queued):
    """Its run's worker dies mid-move (the run stays running, nobody holds it): the periodic
    task resumes the run once, and the plan goes on from the database alone."""
    plan = services.create_plan(tenants="fd", target="schema", online=False)
    services.start_plan(plan)
    assert queued(limit=1) == ["advance_plan"]
    item = plan.items.get()
    OrmQ.objects.all().delete()  # its execute_run: executed here, and killed
    with pytest.raises(WorkerKilled), closing_connections():
        execute(item.run_id, faults=Faults({"after:provision": WorkerKilled}))
    assert MigrationRun.objects.get(pk=item.run_id).status == RunStatus.RUNNING

    assert tasks.advance_open_plans() == [f"plan {plan.pk} running: 0 move(s) started, 1 interrupted one(s) handed "
                                          "to a worker again"]
    assert tasks.advance_plan(plan.pk) == f"plan {plan.pk} running: 0 move(s) started"  # resumed once
    assert queued()[0] == "execute_run"
    plan.refresh_from_db()
    assert plan.status == PlanStatus.DONE and statuses(plan) == {"fd": "done"}
    assert MigrationRun.objects.count() == 1 and MigrationRun.objects.get().status == RunStatus.SUCCEEDED
    assert run_services.verify(Tenant.objects.get(slug="fd"))["ok"]


# --- Pause, resume, cancel --------------------------------------------------------------------------

class Hold(Faults):
    """Stops the run at a checkpoint until released (a worker busy in the middle of a move)."""

    def __init__(self, at: str):
        super().__init__()
        self.at, self.reached, self.release = at, threading.Event(), threading.Event()

    def checkpoint(self, name: str) -> None:
        if name == self.at:
            self.reached.set()
            self.release.wait(60)


def test_pause_resume_and_cancel_with_a_running_move_rolled_back(tenants, queued):
    plan = services.create_plan(tenants="fa,fb,fc", target="schema", online=False, order="as_listed")
    services.start_plan(plan)
    assert queued(limit=1) == ["advance_plan"]
    services.pause(plan)
    with pytest.raises(services.Refused, match=f"plan {plan.pk} is already paused"):
        services.pause(plan)
    queued()  # fa's run ends; the plan is paused: nothing new starts
    plan.refresh_from_db()
    assert plan.status == PlanStatus.PAUSED and statuses(plan) == {"fa": "done", "fb": "waiting", "fc": "waiting"}
    assert active_runs() == 0

    services.resume(plan)
    assert queued(limit=1) == ["advance_plan"]
    second = plan.items.get(tenant__slug="fb")
    assert second.status == ItemStatus.RUNNING
    OrmQ.objects.all().delete()  # its execute_run: a worker thread below executes it
    before = shared_counts(second.tenant)
    hold, outcome = Hold("after:provision"), {}

    def worker():
        try:
            with closing_connections():
                outcome["run"] = execute(second.run_id, faults=hold)
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    assert hold.reached.wait(60)
    cancelled = services.cancel(plan)
    assert cancelled.status == PlanStatus.CANCELLING
    assert MigrationRun.objects.get(pk=second.run_id).cancel_requested
    code, out, err = run_cmd("plan_control", "cancel", str(plan.pk))
    assert code == 2 and err.strip() == f"error: plan {plan.pk} is already being cancelled: its running moves " \
                                        "are rolling back"
    hold.release.set()
    thread.join(60)
    assert outcome["run"].status == RunStatus.CANCELLED
    queued()
    plan.refresh_from_db()
    assert plan.status == PlanStatus.CANCELLED
    assert statuses(plan) == {"fa": "done", "fb": "cancelled", "fc": "cancelled"}
    tenant = Tenant.objects.get(slug="fb")
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    assert shared_counts(tenant) == before and not provision.schema_exists(tenant.schema_name)
    assert MigrationRun.objects.filter(tenant__slug="fc").count() == 0
    code, out, err = run_cmd("plan_control", "cancel", str(plan.pk))
    assert code == 2 and err.strip() == f"error: plan {plan.pk} is already cancelled"
    assert any(m.subject == "[tenant moves] move of fb rolled back" for m in mail.outbox)


# --- Bad input: one line, nothing changed --------------------------------------------------------

def test_bad_input_is_one_line_and_changes_nothing(tenants, place_tenant, make_tenant):
    ensure_default_server()
    draft = services.create_plan(tenants="fc", target="schema")
    run = run_services.request_move(Tenant.objects.get(slug="fd"), "schema")
    elsewhere = place_tenant(make_tenant("fx"), "schema")
    cancelled = services.create_plan(tenants="fb", target="schema")
    services.cancel(cancelled)
    past = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%MZ")
    cases = [
        (["--to", "schema"], "the plan has no tenants: no tenant chosen"),
        (["--all-candidates", "--to", "schema"], "the plan has no tenants: no shared tenant is a candidate "
                                                 "(TENANT_DEDICATED_THRESHOLD_ROWS or a dedicated reason)"),
        (["--tenants", "fa", "--to", "schema", "--window-end", past],
         f"the window ended at {past.replace('T', ' ').replace('Z', ' UTC')}: it is already past"),
        (["--tenants", "fa", "--to", "schema", "--max-parallel", "0"],
         "the maximum number of moves at once must be a whole number from 1 to 2147483647, got '0'"),
        (["--tenants", "fa", "--to", "schema", "--max-parallel", "-3"],
         "the maximum number of moves at once must be a whole number from 1 to 2147483647, got '-3'"),
        (["--tenants", "fa", "--to", "schema", "--max-parallel", "2147483648"],
         "the maximum number of moves at once must be a whole number from 1 to 2147483647, got '2147483648'"),
        (["--tenants", "fa", "--to", "database", "--server", "nope"],
         "unknown database server 'nope' (known: default)"),
        (["--tenants", "fa", "--to", "schema", "--server", "default"],
         "servers apply to database targets only: a schema lives in the shared database"),
        (["--tenants", "fa,fd", "--to", "schema"], f"tenant fd already has an active run (run {run.pk}, queued)"),
        (["--tenants", "fa,fc", "--to", "schema"], f"tenant fc is already in plan {draft.pk} (draft)"),
        (["--tenants", "fx", "--to", "schema"], "tenant fx is already in schema placement; move it back first"),
        (["--tenants", "fa,zz", "--to", "schema"], "unknown tenant 'zz'"),
        (["--tenants", "fa,fa", "--to", "schema"], "tenant fa is listed twice"),
        (["--tenants", "fa", "--to", "cloud"], "unknown target 'cloud': use schema or database"),
        (["--tenants", "fa", "--to", "schema", "--order", "random"],
         "unknown order 'random': use biggest_first, smallest_first or as_listed"),
        (["--tenants", "fa", "--to", "schema", "--on-failure", "retry"],
         "unknown failure policy 'retry': use stop or skip"),
        (["--tenants", "fa", "--to", "schema", "--window-start", "tomorrow"],
         "the window start must be an ISO date and time like 2026-12-01T22:00Z, got 'tomorrow'"),
        (["--tenants", "fa", "--to", "schema", "--window-start", "2030-01-02T00:00Z", "--window-end",
          "2030-01-01T00:00Z"], "the window must start before it ends (2030-01-02 00:00 UTC >= 2030-01-01 00:00 UTC)"),
    ]
    before = state()
    for args, message in cases:
        code, out, err = run_cmd("plan_moves", *args)
        assert (code, err.strip()) == (2, f"error: {message}"), (args, err)
        assert state() == before, args
    # A full server: the default one may hold one tenant database, the plan adds two.
    server = ensure_default_server()
    server.max_tenant_databases = 1
    server.save()
    before = state()
    code, out, err = run_cmd("plan_moves", "--tenants", "fa,fb", "--to", "database")
    assert (code, err.strip()) == (2, "error: server default is over capacity: it holds 0 of at most 1 tenant "
                                      "databases; the plan adds 2"), err
    for args, message in [(["cancel", str(cancelled.pk)], f"plan {cancelled.pk} is already cancelled"),
                          (["pause", str(draft.pk)], f"plan {draft.pk} is draft: only a scheduled or running plan "
                                                      "can be paused"),
                          (["resume", str(draft.pk)], f"plan {draft.pk} is draft: only a paused plan can be resumed"),
                          (["show", "999999"], "unknown plan 999999"),
                          (["show", "١٢"], "unknown plan '١٢'"),
                          (["stop", str(draft.pk)], "unknown action 'stop': use show, start, pause, resume, cancel")]:
        code, out, err = run_cmd("plan_control", *args)
        assert (code, err.strip()) == (2, f"error: {message}"), (args, err)
    assert state() == before
    run_services.cancel(run)


# --- The admin -----------------------------------------------------------------------------------

def test_admin_plan_pages_and_actions(tenants, staff, queued):
    ids = [t.pk for t in tenants[:2]]
    # The tenant list's action opens the add form with the selection.
    response = staff.post("/admin/tenancy/tenant/", {"action": "plan_moves_for_selected",
                                                     "_selected_action": ids})
    assert response.status_code == 302 and response["Location"] == \
        f"/admin/fleet/moveplan/add/?tenants={ids[0]}%2C{ids[1]}"
    html = staff.get(response["Location"]).content.decode()
    assert html.count("selected>") >= 2 and f'<option value="{ids[0]}" selected>' in html

    form = {"selection": "chosen", "tenants": ids, "target": "schema", "max_parallel": "1",
            "order": "biggest_first", "on_failure": "stop"}
    preview = staff.post("/admin/fleet/moveplan/add/", {**form, "_preview": "1"}).content.decode()
    assert 'id="plan-preview"' in preview and "<td>fa</td>" in preview and MovePlan.objects.count() == 0
    refused = staff.post("/admin/fleet/moveplan/add/", {**form, "max_parallel": "0", "_save": "1"}).content.decode()
    assert "from 1 to 2147483647, got 0" in refused and MovePlan.objects.count() == 0
    saved = staff.post("/admin/fleet/moveplan/add/", {**form, "_save": "1"})
    plan = MovePlan.objects.get()
    assert saved.status_code == 302 and saved["Location"] == f"/admin/fleet/moveplan/{plan.pk}/change/"

    assert '<td class="field-progress">[0/2]</td>' in staff.get("/admin/fleet/moveplan/").content.decode()
    page = staff.get(saved["Location"]).content.decode()
    assert 'id="plan-state">draft [0/2]<' in page and 'id="plan-waiting">2<' in page
    assert 'value="start_plans"' in page and 'value="cancel_plans"' in page and 'value="pause_plans"' not in page
    assert staff.get(f"/admin/fleet/moveplan/{plan.pk}/live/").json()["counts"]["waiting"] == 2

    # Without tenancy.move_tenant: the page, but no button, no add form, no action.
    client = Client()
    client.force_login(staff_user("viewer", ["fleet.view_moveplan"]))
    page = client.get(f"/admin/fleet/moveplan/{plan.pk}/change/").content.decode()
    assert 'id="plan-state">draft [0/2]<' in page and 'value="cancel_plans"' not in page
    assert client.get("/admin/fleet/moveplan/add/").status_code == 403
    client.post("/admin/fleet/moveplan/", {"action": "cancel_plans", "_selected_action": [plan.pk],
                                           "confirm": "yes"})
    plan.refresh_from_db()
    assert plan.status == PlanStatus.DRAFT

    # Start (confirmation page, then yes), then cancel.
    confirm = staff.post("/admin/fleet/moveplan/", {"action": "start_plans", "_selected_action": [plan.pk]})
    assert confirm.status_code == 200 and "Yes, start" in confirm.content.decode()
    plan.refresh_from_db()
    assert plan.status == PlanStatus.DRAFT
    done = staff.post("/admin/fleet/moveplan/", {"action": "start_plans", "_selected_action": [plan.pk],
                                                 "confirm": "yes"})
    assert done.status_code == 302 and texts(done) == [f"plan {plan.pk}: start done; now running."]
    assert queued(limit=1) == ["advance_plan"] and active_runs() == 1
    staff.post("/admin/fleet/moveplan/", {"action": "cancel_plans", "_selected_action": [plan.pk], "confirm": "yes"})
    queued()  # the cancelled run's end: the plan ends cancelled
    again = staff.post("/admin/fleet/moveplan/", {"action": "cancel_plans", "_selected_action": [plan.pk],
                                                  "confirm": "yes"})
    assert texts(again) == [f"plan {plan.pk}: not done: plan {plan.pk} is already cancelled"]
    plan.refresh_from_db()
    assert plan.status == PlanStatus.CANCELLED and active_runs() == 0
    page = staff.get(f"/admin/fleet/moveplan/{plan.pk}/change/").content.decode()
    assert 'id="plan-state">cancelled [2/2]<' in page


def test_all_candidates_takes_the_candidates_list(tenants, settings):
    """--all-candidates is the candidates page's list, shared tenants only: over the threshold
    (here by statistics after ANALYZE) or with a dedicated reason."""
    settings.TENANT_DEDICATED_THRESHOLD_ROWS = 10**9
    Tenant.objects.filter(slug="fc").update(dedicated_reason="compliance", dedicated_note="auditor asks")
    code, out, err = run_cmd("plan_moves", "--all-candidates", "--to", "schema", "--dry-run")
    assert code == 0, err
    words = set(out.replace(",", " ").split())
    assert "fc" in words and not words & {"fa", "fb", "fd"}, out
    assert not MovePlan.objects.exists()  # a dry run makes nothing
