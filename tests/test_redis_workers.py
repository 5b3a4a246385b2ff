"""Workers beyond one machine: two separate `manage.py qcluster` processes on django-q2's Redis
broker (Q_BROKER_URL) share a fleet plan moving six seeded tenants, two at once: each run
executed by exactly one worker, both clusters ran moves, every moved tenant verified row for row.

Redis: the machine's at 127.0.0.1:6379 if it answers, else a `redis-server` this module starts
on a free port. Without either the test skips, except in CI (CI or REQUIRE_REDIS=1 set): there
it fails, so the multi-worker path is never silently untested (`.ci/run` starts one).

Each test uses its own queue (Q_NAME, unique per process and test), so parallel xdist workers
and other runs sharing the Redis never take each other's tasks.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid

import pytest
import redis
from django_q.conf import Conf
from django_q.models import Task
from redis.connection import parse_url as redis_url_keywords

from benchmarks.seeding import seed
from fleet import services as plan_services
from fleet.models import MovePlan, PlanStatus
from migration_jobs import services
from migration_jobs.engine.places import place_of, shared_place
from migration_jobs.models import MigrationRun, RunStatus
from tenancy.models import Tenant
from tests.helpers import fingerprints
from tests.qcluster import qclusters

pytestmark = pytest.mark.django_db(transaction=True)

TENANTS = 6
WAIT = 600.0  # seconds before giving up on the moves: a hang, not a timing check
WORKER = re.compile(r"^(?P<host>[^:]+):(?P<pid>\d+) \(qcluster (?P<cluster>\d+) (?P<queue>\S+)\)$")


# --- Redis --------------------------------------------------------------------------------

def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _no_redis(why: str):
    if os.environ.get("CI") or os.environ.get("REQUIRE_REDIS") == "1":
        pytest.fail(f"{why}: the Redis multi-worker test must run in CI (.ci/run starts redis-server)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A Redis that answers: the machine's, or one started for this test session."""
    url = "redis://127.0.0.1:6379/0"
    if _answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        _no_redis("no Redis answers at 127.0.0.1:6379 and redis-server is not installed")
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=(folder / "redis.log").open("w"), stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 30
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                _no_redis(f"redis-server did not start: {(folder / 'redis.log').read_text()[-500:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def redis_broker(redis_url, monkeypatch):
    """This process enqueues on Redis, on a queue of its own (the tests' settings run tasks
    synchronously on the ORM broker): django-q2's Conf set as Q_BROKER_URL and Q_NAME set it
    in the qcluster processes. Yields their environment; the queue's keys go afterwards."""
    name = f"tenant-moves-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    for attribute, value in {"SYNC": False, "ORM": None, "REDIS": redis_url_keywords(redis_url),
                             "PREFIX": name, "CLUSTER_NAME": name}.items():
        monkeypatch.setattr(Conf, attribute, value)
    yield {"Q_BROKER_URL": redis_url, "Q_NAME": name, "Q_WORKERS": "1"}
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"django_q:{name}:*"))
    if keys:
        client.delete(*keys)


# --- The work -----------------------------------------------------------------------------

def queue_work(tenants: list[Tenant]) -> MovePlan:
    """A fleet plan moving these tenants to dedicated databases, two at once, started as the
    admin starts one: the plan's advance tasks start the runs on whichever cluster is free."""
    return plan_services.create_plan(tenants=[t.slug for t in tenants], target="database", online=False,
                                     max_parallel=2, on_failure="skip", start=True)


def redeliver(tenants: list[Tenant]) -> list[str]:
    """The same task once more for every run of these tenants, as a broker delivering twice
    (or an operator queueing again) would: each must be a no-op for a run already taken."""
    runs = MigrationRun.objects.filter(tenant__in=tenants)
    return [services.enqueue(run, resume=False) for run in runs]


def wait_for(what: str, condition, clusters, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        for cluster in clusters:
            assert cluster.proc.poll() is None, f"a qcluster exited before {what}: {cluster.output()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:.0f}s; runs: "
                                 f"{list(MigrationRun.objects.values_list('tenant__slug', 'status', 'current_step'))}; "
                                 f"logs: {[c.output(1500) for c in clusters]}")
        time.sleep(0.25)
    return value


def test_two_qclusters_on_redis_share_the_moves(redis_broker, cleanup, tmp_path):
    tenants = [Tenant.objects.get(pk=t.tenant_id) for t in seed(tenants=TENANTS, largest=800, seed=21).tenants]
    for tenant in tenants:
        cleanup(tenant)
    before = {tenant.pk: fingerprints(shared_place(), tenant.pk) for tenant in tenants}
    assert all(sum(fp.rows for fp in tables.values()) > 0 for tables in before.values())

    with qclusters(2, tmp_path, env=redis_broker) as clusters:
        plan = queue_work(tenants)
        wait_for("the plan to end", lambda: MovePlan.objects.get(pk=plan.pk).status not in (
            PlanStatus.SCHEDULED, PlanStatus.RUNNING), clusters)
        # The same run tasks delivered again (a broker delivering twice): each a no-op.
        task_ids = redeliver(tenants)
        wait_for("every redelivered task's result", lambda: Task.objects.filter(id__in=task_ids).count() == len(task_ids),
                 clusters)
        cluster_pids = {cluster.pid for cluster in clusters}

    assert MovePlan.objects.get(pk=plan.pk).status == PlanStatus.DONE
    assert MigrationRun.objects.filter(tenant__in=tenants).count() == TENANTS  # one run per tenant, no more
    # Every task, the plan's advances and the duplicates included, went through a cluster and returned.
    failed = [(t.name, t.result) for t in Task.objects.filter(success=False)]
    assert not failed, f"tasks failed: {failed}"
    runs = list(MigrationRun.objects.filter(tenant__in=tenants).select_related("tenant"))
    assert [(r.tenant.slug, r.status, r.error) for r in runs if r.status != RunStatus.SUCCEEDED] == []

    # Each run was executed by a worker of one of the two clusters, and both clusters ran moves.
    ran_by = {}
    for run in runs:
        match = WORKER.match(run.worker)
        assert match, f"run {run.pk}: worker {run.worker!r} does not name its qcluster"
        assert match["host"] == socket.gethostname() and match["queue"] == redis_broker["Q_NAME"], run.worker
        ran_by.setdefault(int(match["cluster"]), []).append(run.tenant.slug)
    assert set(ran_by) == cluster_pids, f"moves by cluster pid: {ran_by}; the clusters: {cluster_pids}"

    # Every tenant lives in its dedicated database now, with exactly the rows it had.
    for run in runs:
        tenant = Tenant.objects.select_related("credential__server").get(pk=run.tenant_id)
        assert (tenant.placement, tenant.status) == ("database", "active"), tenant.slug
        assert fingerprints(place_of(tenant), tenant.pk) == before[tenant.pk], f"{tenant.slug}: rows differ"
        report = services.verify(tenant)
        assert report["ok"], f"{tenant.slug}: {report['problems']}"
