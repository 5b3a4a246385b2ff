"""Crash tests: a real `migrate_tenant --online` worker process killed with SIGKILL inside each
phase of an online move (copy, catch-up, freeze, switch, cleanup) while writers in other
processes keep writing to the moving tenant and to another one; then the run is recovered
once by `resume_tenant_move` and once by `rollback_tenant`.

Every case must end with the tenant `active` in the placement the README promises (resume:
the target; roll back before the switch: shared; after the switch a run never rolls back, so
`rollback_tenant` is refused and a resume finishes it), every acknowledged write in that
place with its last value, and nothing left behind (`tenant_move_leftovers` exits 0).

Black box on purpose: the worker is driven through the management commands only, and put at
a precise point without any product hook, by blocking it on a lock this test holds and
watching pg_stat_activity / pg_locks, the run and step rows and tenancy_tenant:

- copy: ACCESS EXCLUSIVE on the target database's tables once the copy step runs;
- catch-up: `--hold-cutover` keeps the run there; killed after a few rounds;
- freeze: a transaction of the tenant that wrote a row before the fence is kept open, so the
  cutover waits for it to drain (tenant `migrating`, fence row present); it commits after
  the kill (an acknowledged write made before the freeze that must survive);
- switch: in the freeze, this test takes the tenant's tenancy_tenant row FOR UPDATE, then
  lets the drain finish: the worker blocks on the placement switch;
- cleanup: as for the switch, then ACCESS SHARE on the run's change log before letting the
  switch commit: the worker drops the capture triggers and blocks dropping the change log.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from psycopg import sql

from tenancy.shared_db import shared_conninfo
from tests.qcluster import manage_env

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).resolve().parent / "writer_process.py"
WORKER_APP = "killtest-worker"      # application_name of the worker's ORM sessions (PGAPPNAME)
WRITER_APP = "killtest-writer"
ENGINE_APP = "tenant-move%"         # the engine names its own sessions so (a LIKE pattern)
WAIT = 180.0                        # seconds before a wait gives up (a hang, not a timing check)
SEEDED = {"shop_customer": 600, "shop_device": 600, "shop_repair": 300}
PHASES = ["copy", "catch_up", "freeze", "switch", "cleanup"]


def debug(text: str) -> None:
    if os.environ.get("KILLTEST_DEBUG"):
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


# --- Processes ------------------------------------------------------------------------------

def _env(appname: str) -> dict:
    """The environment of a subprocess: this test's database, names and backup folder."""
    # The freeze is held open by this test on purpose: the drain must wait, not give up.
    return manage_env(PGAPPNAME=appname, LOG_LEVEL="WARNING", MIGRATION_DRAIN_TIMEOUT="900")


def manage(*args, appname=WORKER_APP, **popen):
    return subprocess.Popen([sys.executable, str(BASE_DIR / "manage.py"), *args], cwd=BASE_DIR,
                            env=_env(appname), **popen)


def run_manage(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), *args], cwd=BASE_DIR,
                          env=_env(WORKER_APP), capture_output=True, text=True, timeout=timeout)


@dataclass
class Writer:
    tenant_id: int
    log: Path
    proc: subprocess.Popen

    def entries(self) -> list:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def acknowledged_since(self, since: float) -> int:
        return sum(1 for kind, _, _, at in self.entries() if kind in ("set", "del") and at >= since)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)

    def expected(self) -> tuple[dict, set, list]:
        """(id -> last acknowledged value, ids acknowledged deleted, errors)."""
        rows, deleted, errors = {}, set(), []
        for kind, pk, value, _ in self.entries():
            if kind == "set":
                rows[pk] = value
                deleted.discard(pk)
            elif kind == "del":
                rows.pop(pk, None)
                deleted.add(pk)
            elif kind == "error":
                errors.append(pk)
        return rows, deleted, errors


@dataclass
class Scenario:
    """One crash: the tenants, the writers, the worker, the connections holding locks."""
    tenant: object
    other: object
    tmp: Path
    writers: list = field(default_factory=list)
    procs: list = field(default_factory=list)
    conns: list = field(default_factory=list)
    extra_acks: dict = field(default_factory=dict)  # writes this test made itself: id -> value
    worker: subprocess.Popen | None = None
    worker_out: Path | None = None

    # -- database access (plain SQL: the CLI and the tables are the contract) --

    def connect(self, dbname=None, autocommit=True) -> psycopg.Connection:
        conn = psycopg.connect(**shared_conninfo(dbname or connection.settings_dict["NAME"], connect_timeout=None),
                               application_name="killtest-test", autocommit=autocommit)
        self.conns.append(conn)
        return conn

    @property
    def db(self) -> psycopg.Connection:
        if not hasattr(self, "_db"):
            self._db = self.connect()
        return self._db

    def run(self) -> dict | None:
        row = self.db.execute(
            "SELECT id, status, current_step, target_database, target_server_id, hold_cutover, error "
            "FROM migration_jobs_migrationrun WHERE tenant_id = %s ORDER BY id DESC LIMIT 1",
            (self.tenant.pk,)).fetchone()
        keys = ("id", "status", "current_step", "target_database", "target_server_id", "hold_cutover", "error")
        return dict(zip(keys, row)) if row else None

    def step(self, name: str) -> tuple[str | None, dict]:
        run = self.run()
        if run is None:
            return None, {}
        row = self.db.execute("SELECT status, details FROM migration_jobs_migrationstep WHERE run_id = %s "
                              "AND name = %s", (run["id"], name)).fetchone()
        return (row[0], row[1] or {}) if row else (None, {})

    def steps(self) -> str:
        run = self.run()
        if run is None:
            return "no run"
        rows = self.db.execute("SELECT name, status, left(message, 300) FROM migration_jobs_migrationstep "
                               "WHERE run_id = %s ORDER BY \"order\"", (run["id"],)).fetchall()
        return "; ".join(f"{n}={s}" + (f" ({m!r})" if m else "") for n, s, m in rows)

    def tenant_row(self) -> tuple[str, str]:
        return self.db.execute("SELECT status, placement FROM tenancy_tenant WHERE id = %s",
                               (self.tenant.pk,)).fetchone()

    def fenced(self) -> bool:
        if not self.db.execute("SELECT to_regclass('public.tenant_move_fence') IS NOT NULL").fetchone()[0]:
            return False
        return self.db.execute("SELECT count(*) FROM tenant_move_fence WHERE tenant_id = %s",
                               (self.tenant.pk,)).fetchone()[0] > 0

    def blocked_by(self, holder: psycopg.Connection, dbname=None) -> list[tuple]:
        """(application_name, query) of the sessions waiting for a lock `holder` holds."""
        return self.db.execute(
            "SELECT application_name, left(query, 120) FROM pg_stat_activity "
            "WHERE %s = ANY(pg_blocking_pids(pid)) AND (application_name = %s OR application_name LIKE %s)",
            (holder.info.backend_pid, WORKER_APP, ENGINE_APP)).fetchall()

    def state(self) -> str:
        return (f"tenant (status, placement)={self.tenant_row()}, fenced in shared={self.fenced()}; "
                f"run={self.run()}; steps: {self.steps()}")

    def wait_for(self, what: str, condition, timeout: float = WAIT):
        """Poll until `condition()` is truthy; fail with what the worker was doing if it exits or hangs."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                debug(f"reached {what}")
                return value
            if self.worker is not None and self.worker.poll() is not None:
                raise AssertionError(f"the worker exited ({self.worker.returncode}) before {what}; {self.state()}; "
                                     f"its output: {self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what} after {timeout:.0f}s; {self.state()}")
            time.sleep(0.01)

    def output(self) -> str:
        return self.worker_out.read_text()[-3000:] if self.worker_out and self.worker_out.exists() else ""

    # -- processes --

    def start_writers(self) -> None:
        for seed, tenant in ((1, self.tenant), (2, self.other)):
            log = self.tmp / f"writer-{tenant.slug}.jsonl"
            proc = subprocess.Popen([sys.executable, str(WRITER), str(tenant.pk), str(log), str(seed), "0.03"],
                                    cwd=BASE_DIR, env=_env(WRITER_APP), stdout=subprocess.DEVNULL,
                                    stderr=(self.tmp / f"writer-{tenant.slug}.err").open("w"))
            self.procs.append(proc)
            self.writers.append(Writer(tenant.pk, log, proc))
        for writer in self.writers:
            self.wait_for(f"the writer of tenant {writer.tenant_id} to write",
                          lambda w=writer: w.acknowledged_since(0) >= 5 or w.proc.poll() is not None)
            assert writer.proc.poll() is None, (
                f"writer of tenant {writer.tenant_id} died: "
                f"{[p.read_text()[-2000:] for p in self.tmp.glob('writer-*.err')]}")

    def start_worker(self, hold: bool) -> None:
        self.worker_out = self.tmp / "worker.out"
        args = ["migrate_tenant", self.tenant.slug, "--to", "database", "--online"] + (["--hold-cutover"] if hold else [])
        self.worker = manage(*args, stdout=self.worker_out.open("w"), stderr=subprocess.STDOUT)
        self.procs.append(self.worker)

    def kill_worker(self) -> None:
        self.worker.send_signal(signal.SIGKILL)
        assert self.worker.wait(60) == -signal.SIGKILL
        self.worker = None

    def wait_worker_sessions_gone(self) -> None:
        """A session blocked on a lock notices its client died only once it gets the lock:
        after releasing ours, let the killed worker's sessions end before recovering."""
        run = self.run()
        databases = [connection.settings_dict["NAME"], run["target_database"] if run else ""]
        self.wait_for("the killed worker's sessions to end", lambda: self.db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) "
            "AND (application_name = %s OR application_name LIKE %s)",
            (databases, WORKER_APP, ENGINE_APP)).fetchone()[0] == 0)

    # -- places --

    def target_conn(self) -> psycopg.Connection:
        run = self.run()
        host, port = self.db.execute("SELECT host, port FROM tenancy_databaseserver WHERE id = %s",
                                     (run["target_server_id"],)).fetchone()
        db = settings.DATABASES["default"]
        assert (str(host), str(port)) == (str(db["HOST"]), str(db["PORT"])), "the test moves to the default server"
        return self.connect(run["target_database"])

    def rows_in(self, conn, table: str, tenant_id: int, ids=None) -> dict:
        query = sql.SQL("SELECT id, {} FROM {} WHERE tenant_id = %s").format(
            sql.Identifier("loyalty_points" if table == "shop_customer" else "id"), sql.Identifier(table))
        if ids is not None:
            query += sql.SQL(" AND id = ANY(%s)")
            return dict(conn.execute(query, (tenant_id, list(ids))).fetchall())
        return dict(conn.execute(query, (tenant_id,)).fetchall())

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(60)
        for conn in self.conns:
            conn.close()


def leftovers() -> tuple[int, str]:
    """`manage.py tenant_move_leftovers` (in this process: it only reads): (exit status, output)."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    try:
        call_command("tenant_move_leftovers", stdout=out)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue()
    return 0, out.getvalue()


def seed_rows(tenant_id: int) -> None:
    """A small tenant: customers, one device each, a repair for half the devices."""
    with connection.cursor() as cur:
        cur.execute("INSERT INTO shop_customer (tenant_id, public_id, first_name, last_name, phone, loyalty_points, "
                    "tags, created_at) SELECT %s, gen_random_uuid(), 'seed', 'c' || g, '', g, '{}', now() "
                    "FROM generate_series(1, %s) g", [tenant_id, SEEDED["shop_customer"]])
        cur.execute("INSERT INTO shop_device (tenant_id, customer_id, kind, brand, model_name, serial_number) "
                    "SELECT tenant_id, id, 'phone', 'b', 'm', 'sn-' || id FROM shop_customer WHERE tenant_id = %s",
                    [tenant_id])
        cur.execute("INSERT INTO shop_repair (tenant_id, device_id, customer_id, ticket_number, status, problem, "
                    "priority, received_at, labour_minutes, metadata) SELECT tenant_id, id, customer_id, id, "
                    "'received', 'broken', 2, now(), 0, '{}' FROM shop_device WHERE tenant_id = %s "
                    "ORDER BY id LIMIT %s", [tenant_id, SEEDED["shop_repair"]])


@contextmanager
def seeded_scenario(slug: str, make_tenant, cleanup, tmp_path):
    """A Scenario of a seeded tenant `slug` and another one beside it, closed on exit."""
    tenant, other = make_tenant(slug), make_tenant(f"{slug}_other")
    cleanup(tenant)
    seed_rows(tenant.pk)
    seed_rows(other.pk)
    found = Scenario(tenant, other, tmp_path)
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
def scenario(make_tenant, cleanup, tmp_path, request):
    phase, recovery = request.node.callspec.params["phase"], request.node.callspec.params["recovery"]
    with seeded_scenario(f"kill_{phase}_{recovery}", make_tenant, cleanup, tmp_path) as found:
        yield found


# --- Putting the worker at a point inside each phase, then killing it -----------------------

def kill_in_copy(s: Scenario) -> None:
    """Stop the worker between two tables (it records each table done in the copy step's
    row: held FOR UPDATE), lock the target's tables, let it go on: it blocks loading the next
    table, with at least one table already copied and recorded."""
    s.start_worker(hold=False)
    s.wait_for("the copy step to record its plan", lambda: s.step("copy")[0] == "running" and s.step("copy")[1])
    step_lock = s.connect(autocommit=False)
    step_lock.execute("SELECT id FROM migration_jobs_migrationstep WHERE run_id = %s AND name = 'copy' FOR UPDATE",
                      (s.run()["id"],))
    s.wait_for("the copy to record a table done", lambda: s.blocked_by(step_lock))
    target = s.target_conn()
    target.autocommit = False
    tables = [r[0] for r in target.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                          "AND tablename LIKE 'shop\\_%' ORDER BY 1").fetchall()]
    target.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        sql.SQL(", ").join(map(sql.Identifier, tables))))
    step_lock.rollback()
    blocked = s.wait_for("the copy to block on the target's tables", lambda: s.blocked_by(target))
    debug(f"copy blocked in {blocked}")
    assert s.step("copy")[0] == "running", f"the copy ended before it could be blocked (blocked: {blocked})"
    s.kill_worker()
    target.rollback()


def kill_in_catch_up(s: Scenario) -> None:
    s.start_worker(hold=True)
    s.wait_for("catch-up rounds", lambda: s.step("catch_up")[0] == "running"
               and s.step("catch_up")[1].get("round", 0) >= 3)
    s.kill_worker()


def _into_the_freeze(s: Scenario) -> psycopg.Connection:
    """Held in catch-up, open a transaction that writes one of the tenant's rows, release the
    cutover, and wait until the worker has frozen the tenant and waits for that transaction."""
    s.start_worker(hold=True)
    s.wait_for("the catch-up", lambda: s.step("catch_up")[0] == "running")
    inflight = s.connect(autocommit=False)
    pk = inflight.execute("INSERT INTO shop_customer (tenant_id, public_id, first_name, last_name, phone, "
                          "loyalty_points, tags, created_at) VALUES (%s, gen_random_uuid(), 'in', 'flight', '', "
                          "4242, '{}', now()) RETURNING id", (s.tenant.pk,)).fetchone()[0]
    s.db.execute("UPDATE migration_jobs_migrationrun SET hold_cutover = false WHERE id = %s", (s.run()["id"],))
    s.wait_for("the freeze (tenant migrating, fence closed, cutover running)",
               lambda: s.tenant_row()[0] == "migrating" and s.fenced() and s.step("cutover")[0] == "running")
    s.extra_acks[pk] = 4242
    return inflight


def _commit_inflight(s: Scenario, inflight: psycopg.Connection) -> None:
    inflight.commit()  # began before the fence: it must commit, and so be kept


def kill_in_freeze(s: Scenario) -> None:
    inflight = _into_the_freeze(s)
    time.sleep(0.3)  # the writers meet the frozen tenant
    assert s.tenant_row() == ("migrating", "shared") and s.step("cutover")[0] == "running", s.state()
    s.kill_worker()
    _commit_inflight(s, inflight)


def _blocked_at_switch(s: Scenario) -> psycopg.Connection:
    inflight = _into_the_freeze(s)
    row_lock = s.connect(autocommit=False)
    row_lock.execute("SELECT id FROM tenancy_tenant WHERE id = %s FOR UPDATE", (s.tenant.pk,))
    _commit_inflight(s, inflight)  # the drain ends; the worker applies, verifies and switches
    s.wait_for("the switch to block on the tenant's row", lambda: s.blocked_by(row_lock))
    assert s.tenant_row() == ("migrating", "shared") and s.step("cutover")[0] == "running", s.state()
    return row_lock


def kill_in_switch(s: Scenario) -> None:
    row_lock = _blocked_at_switch(s)
    s.kill_worker()
    row_lock.rollback()


def kill_in_cleanup(s: Scenario) -> None:
    row_lock = _blocked_at_switch(s)
    log_lock = s.connect(autocommit=False)
    log_lock.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
        sql.Identifier(f"tenant_move_log_{s.run()['id']}")))
    row_lock.rollback()  # the switch commits; the cleanup then waits for the change log
    s.wait_for("the cleanup to block on the change log",
               lambda: s.step("cleanup")[0] == "running" and s.blocked_by(log_lock))
    assert s.tenant_row() == ("active", "database") and s.step("cutover")[0] == "succeeded", s.state()
    s.kill_worker()
    log_lock.rollback()


KILL = {"copy": kill_in_copy, "catch_up": kill_in_catch_up, "freeze": kill_in_freeze, "switch": kill_in_switch,
        "cleanup": kill_in_cleanup}


# --- The test -------------------------------------------------------------------------------

@pytest.mark.parametrize("recovery", ["resume", "rollback"])
@pytest.mark.parametrize("phase", PHASES)
def test_killed_worker_recovers(scenario, phase, recovery):
    s = scenario
    s.start_writers()
    KILL[phase](s)
    s.wait_worker_sessions_gone()
    killed_run = s.run()
    assert killed_run["status"] == "running", f"a killed worker leaves its run running; {s.state()}"
    time.sleep(0.3)  # the writers go on while nobody owns the run

    switched = phase == "cleanup"  # past the cutover: the tenant writes to its new place
    if recovery == "resume":
        if phase == "catch_up":  # what the admin's "Cut over now" does
            s.db.execute("UPDATE migration_jobs_migrationrun SET hold_cutover = false WHERE id = %s",
                         (killed_run["id"],))
        done = run_manage("resume_tenant_move", s.tenant.slug)
        assert done.returncode == 0, f"resume after a kill in {phase} failed: {done.stderr[-2000:]}; {s.state()}"
        expected_placement, expected_run = "database", "succeeded"
    else:
        done = run_manage("rollback_tenant", s.tenant.slug)
        if switched:
            # README: "After the switch a run never rolls back"; a failure in cleanup is
            # finished by resume_tenant_move. So the roll back is refused and changes nothing
            # (then a resume finishes the run), or it finishes the run forward itself.
            assert done.returncode in (0, 2), (
                f"rollback_tenant after the switch must be refused (exit 2) or finish the run forward (exit 0), "
                f"got {done.returncode}: {done.stdout[-1000:]} {done.stderr[-1000:]}; {s.state()}")
            assert s.tenant_row() == ("active", "database"), (
                f"rollback_tenant after the switch moved the tenant away from its new place: {s.state()}")
            if done.returncode == 2:
                assert "resume" in done.stderr, f"the refusal should point at resume_tenant_move: {done.stderr}"
                done = run_manage("resume_tenant_move", s.tenant.slug)
                assert done.returncode == 0, (f"resume after a refused roll back failed: {done.stderr[-2000:]}; "
                                              f"{s.state()}")
            expected_placement, expected_run = "database", "succeeded"
        else:
            assert done.returncode == 0, (f"rollback_tenant after a kill in {phase} failed ({done.returncode}): "
                                          f"{done.stderr[-2000:]}; {s.state()}")
            expected_placement, expected_run = "shared", "rolled_back"
    recovered_at = time.time()

    status, placement = s.tenant_row()
    assert (status, placement) == ("active", expected_placement), (
        f"after a kill in {phase} and {recovery}, the tenant is {status} in {placement} placement, "
        f"expected active in {expected_placement}; {s.state()}; {recovery} said: {done.stdout[-1500:]}")
    run = s.run()
    assert run["id"] == killed_run["id"] and run["status"] == expected_run, (
        f"the killed run should end {expected_run}; {s.state()}")

    # The tenant takes writes again: each writer gets some acknowledged after the recovery.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(w.acknowledged_since(recovered_at) >= 5 for w in s.writers):
        time.sleep(0.05)
    for writer in s.writers:
        writer.stop()

    for writer in s.writers:
        rows, deleted, errors = writer.expected()
        assert not errors, f"writer of tenant {writer.tenant_id} hit errors: {errors[:5]}"
        assert writer.acknowledged_since(recovered_at) >= 5, (
            f"tenant {writer.tenant_id} took no writes after the {recovery} (status {s.tenant_row()}); "
            f"last writer entries: {writer.entries()[-5:]}")

    # Every acknowledged write, where the tenant lives now, with its last value; exactly the
    # seeded rows besides.
    mine, theirs = s.writers
    place = s.target_conn() if expected_placement == "database" else s.db
    rows, deleted, _ = mine.expected()
    rows = {**rows, **s.extra_acks}
    found = s.rows_in(place, "shop_customer", s.tenant.pk, set(rows) | deleted)
    lost = {pk: v for pk, v in rows.items() if found.get(pk) != v}
    assert not lost, (f"{len(lost)} acknowledged writes of the moved tenant lost or changed in its "
                      f"{expected_placement} place (id: acknowledged -> found): "
                      f"{[(pk, v, found.get(pk)) for pk, v in list(lost.items())[:10]]}")
    assert not set(found) & deleted, f"rows acknowledged deleted are back: {sorted(set(found) & deleted)[:10]}"
    counts = {table: len(s.rows_in(place, table, s.tenant.pk)) for table in SEEDED}
    assert counts == {**SEEDED, "shop_customer": SEEDED["shop_customer"] + len(rows)}, (
        f"the moved tenant's rows in its {expected_placement} place: {counts}")
    rows, deleted, _ = theirs.expected()
    found = s.rows_in(s.db, "shop_customer", s.other.pk, set(rows) | deleted)
    assert found == rows, "acknowledged writes of the other tenant lost or changed"
    assert not any(kind == "refused" for kind, *_ in theirs.entries()), "the other tenant's writes were refused"

    # Nothing left behind.
    code, out = leftovers()
    assert code == 0, f"capture objects left behind: {out[-2000:]}"
    if expected_placement == "shared":
        assert not s.db.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (killed_run["target_database"],)).fetchone(), (
            f"the rolled back run left its target database {killed_run['target_database']}")
        assert not s.fenced(), "the tenant is still fenced in the shared database"
