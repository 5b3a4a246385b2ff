"""Online moves: the tenant keeps writing during the copy; the cutover freezes it briefly;
afterwards every acknowledged write is in the new place exactly once and nothing is left of
the capture."""
import random
import threading
import time

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from migration_jobs import services
from migration_jobs.engine import capture, guard, provision
from migration_jobs.engine.places import place_of, shared_place
from migration_jobs.models import RunStatus
from migration_jobs.runs import executor
from migration_jobs.runs.faults import Faults
from shop.models import Customer
from tenancy.context import tenant_context
from tenancy.models import Tenant, tenant_host
from tests.helpers import crash_move, execute_held, fingerprints, snapshot

pytestmark = pytest.mark.django_db(transaction=True)

SEEDED = {"largest": 3000, "seed": 11}  # the conftest `seeded` tenant


class Writer(threading.Thread):
    """Inserts, updates and deletes customers of one tenant at a steady pace, remembering
    what the database acknowledged (committed) so the final state can be checked."""

    def __init__(self, tenant_id, pace=0.005, seed=1):
        super().__init__(daemon=True)
        self.tenant_id, self.pace, self.random = tenant_id, pace, random.Random(seed)
        self.expected: dict[int, int] = {}  # pk -> loyalty_points last acknowledged
        self.deleted: set[int] = set()
        self.acknowledged = self.refused = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def step(self):
        choice = self.random.random()
        with tenant_context(self.tenant_id), transaction.atomic():
            if choice < 0.5 or not self.expected:
                c = Customer.objects.create(first_name="w", last_name="writer", created_at=timezone.now(),
                                            loyalty_points=self.random.randint(0, 10 ** 6))
                result = ("set", c.pk, c.loyalty_points)
            elif choice < 0.85:
                pk = self.random.choice(list(self.expected))
                points = self.random.randint(0, 10 ** 6)
                if Customer.objects.filter(pk=pk).update(loyalty_points=points) != 1:
                    raise AssertionError(f"acknowledged row {pk} is gone")
                result = ("set", pk, points)
            else:
                pk = self.random.choice(list(self.expected))
                Customer.objects.filter(pk=pk).delete()
                result = ("del", pk, None)
        kind, pk, points = result
        if kind == "set":
            self.expected[pk] = points
        else:
            self.expected.pop(pk)
            self.deleted.add(pk)
        self.acknowledged += 1

    def run(self):
        from tenancy.exceptions import TenantWriteRefused

        try:
            while not self.stop.is_set():
                try:
                    self.step()
                except (TenantWriteRefused, psycopg.Error):
                    self.refused += 1  # frozen: not acknowledged, tried again later
                except Exception as exc:  # noqa: BLE001
                    if "refuses writes" in str(exc) or "is migrating" in str(exc):
                        self.refused += 1
                    else:
                        self.errors.append(repr(exc))
                        return
                time.sleep(self.pace)
        finally:
            connection.close()

    def finish(self):
        self.stop.set()
        self.join(30)
        assert not self.is_alive()

    def check(self, tenant):
        """Every acknowledged write is in the tenant's place, exactly once, with its last value."""
        with tenant_context(tenant):
            rows = dict(Customer.objects.filter(pk__in=list(self.expected) + list(self.deleted))
                        .values_list("pk", "loyalty_points"))
        assert rows == self.expected, "acknowledged writes lost or changed"


def leftover_capture(place):
    with place.connect() as conn:
        return capture.leftovers(conn)


def run_online(request_run, writers, settings, faults=None):
    settings.MIGRATION_CUTOVER_MAX_CHANGES = 20
    for writer in writers:
        writer.start()
    time.sleep(0.3)
    try:
        run = executor.execute(request_run().pk, faults=faults)
    finally:
        time.sleep(0.2)  # some writes on the new placement too
        for writer in writers:
            writer.finish()
    return run


@pytest.mark.parametrize("target", ["schema", "database"])
def test_online_move_under_writes_loses_nothing(seeded, settings, target):
    tenant = seeded
    other = Tenant.objects.exclude(pk=tenant.pk).first()
    mine, theirs = Writer(tenant.pk, seed=1), Writer(other.pk, seed=2)
    run = run_online(lambda: services.request_move(tenant, target, online=True), [mine, theirs], settings)
    assert run.status == RunStatus.SUCCEEDED, run.error
    tenant.refresh_from_db()
    try:
        assert tenant.placement == target and tenant.status == "active"
        assert not mine.errors and not theirs.errors
        assert mine.acknowledged > 20 and theirs.acknowledged > 20
        mine.check(tenant)
        theirs.check(other)
        assert theirs.refused == 0  # other tenants are never frozen
        assert run.freeze_seconds is not None and 0 < run.freeze_seconds < 30
        assert run.steps.get(name="catch_up").rows > 0  # changes made during the copy were applied
        assert leftover_capture(shared_place()) == []
        # The legacy rows are fenced: a stale writer cannot change them.
        with shared_place().connect() as conn, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            conn.execute("DELETE FROM shop_customer WHERE tenant_id = %s", (tenant.pk,))
    finally:
        if target == "schema":
            provision.drop_schema(tenant.schema_name)
        else:
            provision.drop_database(run.target_server, run.target_database, provision.role_name(run.target_database))


def test_online_move_back_under_writes_loses_nothing(seeded, settings):
    tenant = seeded
    out = services.execute(services.request_move(tenant, "database", online=True))
    assert out.status == RunStatus.SUCCEEDED, out.error
    tenant.refresh_from_db()
    try:
        # Another tenant inserts into the shared tables meanwhile: its new keys must not meet
        # the ones the moving tenant takes in its dedicated database before the cutover.
        other = Tenant.objects.exclude(pk=tenant.pk).first()
        mine, theirs = Writer(tenant.pk, seed=3), Writer(other.pk, seed=5)
        back = run_online(lambda: services.request_move_back(tenant, online=True), [mine, theirs], settings)
        assert back.status == RunStatus.SUCCEEDED, back.error
        tenant.refresh_from_db()
        assert tenant.placement == "shared" and tenant.status == "active"
        assert not mine.errors and not theirs.errors and mine.acknowledged > 20 and theirs.acknowledged > 20
        mine.check(tenant)
        theirs.check(other)
        assert theirs.refused == 0
        assert leftover_capture(place_of(tenant)) == []
        with psycopg.connect(**out.target_server.conninfo(out.target_database)) as conn:
            assert capture.leftovers(conn) == []
            # Now the dedicated copy is the legacy one, and fenced.
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                conn.execute("DELETE FROM shop_customer")
    finally:
        provision.drop_database(out.target_server, out.target_database, provision.role_name(out.target_database))


@pytest.mark.parametrize("where", ["catch_up:round", "cutover:applied", "cutover:before-switch"])
def test_failure_before_the_switch_unfreezes_on_shared_with_nothing_lost(seeded, settings, where):
    tenant = seeded
    mine = Writer(tenant.pk, seed=4)
    run = run_online(lambda: services.request_move(tenant, "schema", online=True), [mine], settings,
                     faults=Faults({where: RuntimeError}))
    assert run.status == RunStatus.ROLLED_BACK, run.error
    tenant.refresh_from_db()
    assert tenant.placement == "shared" and tenant.status == "active"
    assert not mine.errors
    mine.check(tenant)
    assert leftover_capture(shared_place()) == []
    with shared_place().connect() as conn:  # writable again, no fence left
        assert capture.fence_reason(conn, shared_place(), tenant.pk) is None
    with tenant_context(tenant):
        Customer.objects.create(first_name="after", last_name="failure", created_at=timezone.now())


def test_gradual_read_switch_then_cutover(seeded, settings, client):
    """Held in sync, the tenant's reads move 0 -> 50 -> 100 % to the target while its writes
    stay on shared; source and target are compared meanwhile; then staff release the cutover."""
    tenant = seeded
    settings.MIGRATION_DIVERGENCE_INTERVAL = 0.0
    settings.MIGRATION_HOLD_MAX_SECONDS = 90.0  # the run gives up if this test's staff thread dies
    run = services.request_move(tenant, "schema", online=True, hold_cutover=True)
    host = tenant_host(tenant.slug)
    seen = {}

    def staff():
        for share in (0, 50, 100):
            services.set_read_share(run, share)
            places = [client.get("/shop/summary/", HTTP_HOST=host).json()["placement"] for _ in range(60)]
            seen[share] = places.count("schema")
        # Writes keep going to shared while reads are switched.
        response = client.post("/shop/customers/", data='{"first_name": "During", "last_name": "Switch"}',
                               content_type="application/json", HTTP_HOST=host)
        seen["write"] = response.status_code
        time.sleep(0.5)
        seen["comparisons"] = run.steps.get(name="catch_up").details.get("comparisons", 0)
        services.release_cutover(run)

    finished = execute_held(run, staff, seen, rounds=2)
    assert "error" not in seen, seen
    assert finished.status == RunStatus.SUCCEEDED, finished.error
    assert seen[0] == 0 and seen[100] == 60 and 10 <= seen[50] <= 50, seen
    assert seen["write"] == 201 and seen["comparisons"] >= 1
    with tenant_context(tenant):
        assert Customer.objects.filter(first_name="During").count() == 1  # caught up into the target
    provision.drop_schema(tenant.schema_name)


def test_online_rollback_after_a_killed_worker_removes_capture(seeded, settings):
    tenant = seeded
    before = fingerprints(shared_place(), tenant.pk)
    run = crash_move(tenant, "database", "catch_up:round", online=True)
    assert [o["kind"] for o in leftover_capture(shared_place())]
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    with pytest.raises(SystemExit) as exit_status:  # the check command lists them as orphaned
        call_command("tenant_move_leftovers", stdout=out)
    assert exit_status.value.code == 1 and f"tenant_move_log_{run.pk}" in out.getvalue()
    rolled = services.rollback_unfinished(tenant)
    assert rolled.status == RunStatus.ROLLED_BACK
    assert leftover_capture(shared_place()) == []
    call_command("tenant_move_leftovers", stdout=StringIO())  # exit 0: nothing left
    assert fingerprints(shared_place(), tenant.pk) == before
    assert not provision.database_exists(run.target_server, run.target_database)


def test_online_resume_after_a_killed_worker_in_catch_up(seeded, settings):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    run = crash_move(tenant, "schema", "catch_up:round", online=True)
    resumed = services.execute(services.resumable_run(tenant), resume=True)
    assert resumed.status == RunStatus.SUCCEEDED, resumed.error
    tenant.refresh_from_db()
    assert snapshot(place_of(tenant), tenant.pk) == before
    assert leftover_capture(shared_place()) == []
    provision.drop_schema(tenant.schema_name)


@pytest.mark.parametrize("where", ["cutover:applied", "cutover:before-switch"])
def test_online_rollback_after_a_worker_killed_in_the_freeze_unfreezes(seeded, settings, where):
    """Killed inside the cutover's freeze (fence closed, tenant `migrating`): the rollback
    reopens the tenant where it lives, with no fence left."""
    tenant = seeded
    before = fingerprints(shared_place(), tenant.pk)
    run = crash_move(tenant, "schema", where, online=True)
    tenant.refresh_from_db()
    assert tenant.status == "migrating"  # what the kill left
    rolled = services.rollback_unfinished(tenant)
    assert rolled.status == RunStatus.ROLLED_BACK, rolled.error
    assert "writes allowed again" in rolled.steps.get(name="cutover").message
    tenant.refresh_from_db()
    assert tenant.placement == "shared" and tenant.status == "active"
    assert leftover_capture(shared_place()) == []
    with shared_place().connect() as conn:  # no fence left; the guard's triggers are the same for all
        assert capture.fence_reason(conn, shared_place(), tenant.pk) is None
        assert set(guard.guarded_tables(conn, "public").values()) <= {3}
    assert fingerprints(shared_place(), tenant.pk) == before
    assert not provision.schema_exists(run.target_schema)
    with tenant_context(tenant):  # writable again
        Customer.objects.create(first_name="after", last_name="kill", created_at=timezone.now())
