"""End to end: a seeded tenant moves to a schema, to a database (on this server and on a
second one), back to shared; every row is compared; injected failures end in a clean
rollback or a successful resume."""
import threading

import psycopg
import pytest
from django.utils import timezone
from psycopg import sql

from migration_jobs import services
from migration_jobs.engine import capture, provision
from migration_jobs.engine.places import place_of, shared_place
from migration_jobs.models import RunStatus
from migration_jobs.runs import executor
from migration_jobs.runs.faults import Faults, WorkerKilled
from migration_jobs.runs.plans import MOVE_STEPS
from migration_jobs.runs.steps.common import Verify
from shop.models import Customer
from tenancy.context import tenant_context
from tenancy.models import DatabaseCredential, Tenant
from tests.helpers import fingerprints, schema_exists, snapshot

pytestmark = pytest.mark.django_db(transaction=True)

SEEDED = {"largest": 3000, "seed": 7}  # the conftest `seeded` tenant


# --- helpers ------------------------------------------------------------------------------

def database_exists(server, name):
    return provision.database_exists(server, name)


def role_exists(server, role):
    with provision.admin_connection(server) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def move(tenant, target, faults=None, **kwargs):
    run = services.request_move(tenant, target, **kwargs)
    return executor.execute(run.pk, faults=faults)


def fences_of(place, tenant_id):
    """The tenant's fence rows and per-tenant triggers (earlier versions) in `place`."""
    with place.connect() as conn:
        triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE %s",
                                (f"tenant_fence_{tenant_id}_%",)).fetchone()[0]
        return triggers + (capture.fence_reason(conn, place, tenant_id) is not None)


def assert_clean_rollback(tenant, run, before):
    tenant.refresh_from_db()
    assert fences_of(shared_place(), tenant.pk) == 0
    assert run.status == RunStatus.ROLLED_BACK, (run.status, run.error)
    assert tenant.placement == "shared" and tenant.status == "active"
    assert fingerprints(shared_place(), tenant.pk) == before  # shared rows untouched
    if run.target_placement == "schema":
        assert not schema_exists(run.target_schema)
    else:
        assert not database_exists(run.target_server, run.target_database)
        assert not role_exists(run.target_server, provision.role_name(run.target_database))
        assert not DatabaseCredential.objects.filter(tenant=tenant).exists()


# --- moves --------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["schema", "database"])
def test_move_copies_every_row_and_routes_the_tenant(seeded, made_places, target):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    assert sum(map(len, before.values())) > 1000
    run = move(tenant, target)
    assert run.status == RunStatus.SUCCEEDED, run.error
    tenant.refresh_from_db()
    made_places.append(("schema", tenant.schema_name) if target == "schema" else
                   ("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    assert tenant.placement == target and tenant.status == "active"
    assert snapshot(place_of(tenant), tenant.pk) == before  # every row of every table, value for value
    assert run.rows_copied == sum(map(len, before.values()))
    assert [s.status for s in run.steps.all()] == ["succeeded"] * run.steps.count()
    assert run.report["verify"]["ok"] and run.report["preflight"]["ok"]
    # The router now reads the new place; the legacy rows stay in shared, unreachable for it.
    with tenant_context(tenant):
        assert Customer.objects.count() == len(before["shop_customer"])
        Customer.objects.create(first_name="After", last_name="Move", created_at=timezone.now())
    assert Customer.unscoped.filter(tenant=tenant, first_name="After").count() == 0
    assert snapshot(shared_place(), tenant.pk) == before
    # A process with a stale route cache cannot write the legacy rows: the database refuses.
    with shared_place().connect() as conn, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                                                         match=f"tenant {tenant.slug} refuses writes"):
        conn.execute("UPDATE shop_customer SET loyalty_points = 0 WHERE tenant_id = %s", (tenant.pk,))


def test_move_to_a_database_on_a_second_server(seeded, made_places, second_server):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    run = move(tenant, "database", server_name=second_server.name)
    assert run.status == RunStatus.SUCCEEDED, run.error
    made_places.append(("database", second_server, run.target_database, provision.role_name(run.target_database)))
    tenant.refresh_from_db()
    assert tenant.credential.server == second_server
    assert snapshot(place_of(tenant), tenant.pk) == before
    from django.db import connections

    with tenant_context(tenant) as route:
        assert connections.settings[route.db_alias]["PORT"] == str(second_server.port)
        assert Customer.objects.count() == len(before["shop_customer"])


def test_move_while_other_tenants_keep_writing(seeded, made_places):
    tenant = seeded
    other = Tenant.objects.exclude(pk=tenant.pk).first()
    stop, written, errors = threading.Event(), [], []

    def writer():
        from django.db import connection

        try:
            while not stop.is_set():
                with tenant_context(other):
                    written.append(Customer.objects.create(first_name="w", last_name=str(len(written)),
                                                           created_at=timezone.now()).pk)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        run = move(tenant, "schema")
    finally:
        stop.set()
        thread.join(10)
    made_places.append(("schema", tenant.schema_name))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert not errors and len(written) > 0
    assert Customer.unscoped.filter(pk__in=written, tenant=other).count() == len(written)


def test_move_back_to_shared_restores_every_row(seeded, made_places):
    tenant = seeded
    run = move(tenant, "database")
    assert run.status == RunStatus.SUCCEEDED, run.error
    made_places.append(("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    tenant.refresh_from_db()
    with tenant_context(tenant):  # the tenant keeps working in its new place
        Customer.objects.create(first_name="Written", last_name="Dedicated", created_at=timezone.now())
        Customer.objects.filter(pk=Customer.objects.order_by("pk").first().pk).delete()
    dedicated = snapshot(place_of(tenant), tenant.pk)
    back = executor.execute(services.request_move_back(tenant).pk)
    assert back.status == RunStatus.SUCCEEDED, back.error
    tenant.refresh_from_db()
    assert tenant.placement == "shared" and tenant.status == "active"
    assert snapshot(shared_place(), tenant.pk) == dedicated
    # The legacy rows still in the shared tables were reused: only the buckets of keys that
    # changed (customers, and what the customer's delete cascaded to) were copied.
    copied = back.steps.get(name="copy_back").details
    untouched = [name for name in ("shop_employee", "shop_sparepart")]
    assert all(copied["tables"][name]["copied"] == 0 < copied["tables"][name]["rows"] for name in untouched)
    assert 0 < copied["tables"]["shop_customer"]["copied"]
    assert copied["legacy_rows_reused"] == sum(t["rows"] - t["copied"] for t in copied["tables"].values()) > 0
    with tenant_context(tenant):
        assert Customer.objects.filter(first_name="Written").count() == 1
        Customer.objects.create(first_name="After", last_name="Back", created_at=timezone.now())  # sequences ok


@pytest.mark.parametrize("target,online", [("schema", False), ("database", False), ("database", True)])
def test_out_back_and_out_again(seeded, made_places, target, online):
    """A tenant moved back can move out again: its old place, with rows from before the move
    back and a legacy fence, is emptied and reused, and the tenant is writable there."""
    tenant = seeded
    run = move(tenant, target, online=online)
    assert run.status == RunStatus.SUCCEEDED, run.error
    made_places.append(("schema", tenant.schema_name) if target == "schema" else
                   ("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    back = executor.execute(services.request_move_back(Tenant.objects.get(pk=tenant.pk), online=online).pk)
    assert back.status == RunStatus.SUCCEEDED, back.error
    with tenant_context(Tenant.objects.get(pk=tenant.pk)):  # back in shared: written there only
        Customer.objects.create(first_name="Between", last_name="Moves", created_at=timezone.now())
    shared = snapshot(shared_place(), tenant.pk)
    again = move(Tenant.objects.get(pk=tenant.pk), target, online=online)
    assert again.status == RunStatus.SUCCEEDED, again.error
    tenant = Tenant.objects.get(pk=tenant.pk)
    assert tenant.placement == target and tenant.status == "active"
    assert snapshot(place_of(tenant), tenant.pk) == shared
    with tenant_context(tenant):
        assert Customer.objects.filter(first_name="Between").count() == 1
        Customer.objects.create(first_name="Out", last_name="Again", created_at=timezone.now())


@pytest.mark.parametrize("target", ["schema", "database"])
def test_the_place_a_move_back_left_retires_after_the_grace_period(seeded, made_places, settings, target):
    tenant = seeded
    run = move(tenant, target)
    assert run.status == RunStatus.SUCCEEDED, run.error
    made_places.append(("schema", tenant.schema_name) if target == "schema" else
                   ("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    back = executor.execute(services.request_move_back(Tenant.objects.get(pk=tenant.pk)).pk)
    assert back.status == RunStatus.SUCCEEDED, back.error
    tenant = Tenant.objects.get(pk=tenant.pk)
    with pytest.raises(services.Refused, match="may be retired from"):
        services.request_retire(tenant)
    shared = fingerprints(shared_place(), tenant.pk)
    retire = executor.execute(services.request_retire(tenant, ignore_grace=True).pk)
    assert retire.status == RunStatus.SUCCEEDED, retire.error
    assert [s.name for s in retire.steps.order_by("order")] == ["retire_check", "backup", "retire_drop"]
    if target == "schema":
        assert not schema_exists(tenant.schema_name)
    else:
        assert not database_exists(run.target_server, run.target_database)
        assert not role_exists(run.target_server, provision.role_name(run.target_database))
        assert not DatabaseCredential.objects.filter(tenant=tenant).exists()
    from migration_jobs.engine.archive_read import read_manifest

    manifest = read_manifest(retire.steps.get(name="backup").details["path"])  # the dropped rows, archived
    assert {t["name"]: t["rows"] for t in manifest["tables"]} == {n: fp.rows for n, fp in shared.items()}
    assert fingerprints(shared_place(), tenant.pk) == shared  # where it lives: untouched
    tenant.refresh_from_db()
    assert tenant.placement == "shared" and tenant.status == "active"
    with tenant_context(tenant):
        Customer.objects.create(first_name="Still", last_name="Here", created_at=timezone.now())
    with pytest.raises(services.Refused, match="no legacy rows"):
        services.request_retire(tenant)


def test_copy_back_that_loses_a_row_commits_nothing(seeded, made_places, monkeypatch):
    """The comparison of the replaced buckets catches a copy back that went wrong, and the
    shared tables stay exactly as they were."""
    from migration_jobs.engine import copy_back as copy_back_module

    tenant = seeded
    run = move(tenant, "schema")
    assert run.status == RunStatus.SUCCEEDED, run.error
    made_places.append(("schema", tenant.schema_name))
    tenant.refresh_from_db()
    with tenant_context(tenant):
        Customer.objects.create(first_name="Only", last_name="Dedicated", created_at=timezone.now())
    legacy = fingerprints(shared_place(), tenant.pk)
    original = copy_back_module.copy_table

    def lossy_copy(src, dst, source, target, table, tenant_id, **kwargs):
        result = original(src, dst, source, target, table, tenant_id, **kwargs)
        if table.name == "shop_customer":  # a bug that loses the newest row
            dst.execute(sql.SQL("DELETE FROM {t} WHERE id = (SELECT max(id) FROM {t} WHERE tenant_id = %s)").format(
                t=target.table(table.name)), (tenant_id,))
        return result

    monkeypatch.setattr(copy_back_module, "copy_table", lossy_copy)
    back = executor.execute(services.request_move_back(tenant).pk)
    assert back.status == RunStatus.ROLLED_BACK
    assert "rows differ after copying back: shop_customer" in back.error
    assert fingerprints(shared_place(), tenant.pk) == legacy
    tenant.refresh_from_db()
    assert tenant.placement == "schema" and tenant.status == "active"


def test_move_back_detects_key_collisions_before_writing(seeded, made_places):
    tenant = seeded
    run = move(tenant, "schema")
    assert run.status == RunStatus.SUCCEEDED
    made_places.append(("schema", tenant.schema_name))
    tenant.refresh_from_db()
    other = Tenant.objects.exclude(pk=tenant.pk).first()
    with tenant_context(tenant):
        mine = Customer.objects.create(first_name="Mine", last_name="X", created_at=timezone.now())
    # Another tenant's row takes the same id in the shared table.
    Customer.unscoped.create(pk=mine.pk, tenant=other, first_name="Theirs", last_name="Y", created_at=timezone.now())
    shared_before = fingerprints(shared_place(), tenant.pk)
    back = executor.execute(services.request_move_back(tenant).pk)
    assert back.status == RunStatus.ROLLED_BACK
    assert "shop_customer.id" in back.error
    tenant.refresh_from_db()
    assert tenant.placement == "schema" and tenant.status == "active"
    assert fingerprints(shared_place(), tenant.pk) == shared_before


# --- failures -----------------------------------------------------------------------------

STEP_NAMES = [s.name for s in MOVE_STEPS]


@pytest.mark.parametrize("where", [f"{when}:{name}" for name in STEP_NAMES for when in ("before", "after")])
def test_failure_at_every_step_boundary_rolls_back_cleanly(seeded, where):
    tenant = seeded
    before = fingerprints(shared_place(), tenant.pk)
    run = move(tenant, "schema", faults=Faults({where: RuntimeError}))
    assert "injected fault" in run.error
    assert_clean_rollback(tenant, run, before)


@pytest.mark.parametrize("where", ["copy:shop_repair", "copy:before-indexes", "before:verify", "after:switch"])
def test_failure_in_a_database_move_rolls_back_cleanly(seeded, where):
    tenant = seeded
    before = fingerprints(shared_place(), tenant.pk)
    run = move(tenant, "database", faults=Faults({where: RuntimeError}))
    assert_clean_rollback(tenant, run, before)


def test_verification_mismatch_fails_the_run_and_rolls_back(seeded):
    tenant = seeded
    before = fingerprints(shared_place(), tenant.pk)

    class Tamper(Exception):
        pass

    original = Verify.run

    def tampering_verify(self, ctx, step):
        with ctx.target.connect() as conn:
            conn.execute(sql.SQL("UPDATE {} SET loyalty_points = loyalty_points + 1 WHERE id = "
                                 "(SELECT min(id) FROM {})").format(ctx.target.table("shop_customer"),
                                                                    ctx.target.table("shop_customer")))
            conn.commit()
        return original(self, ctx, step)

    Verify.run = tampering_verify
    try:
        run = move(tenant, "schema")
    finally:
        Verify.run = original
    assert "verification failed for shop_customer" in run.error
    assert_clean_rollback(tenant, run, before)


@pytest.mark.parametrize("where", ["after:backup", "copy:shop_device", "after:copy", "after:switch"])
def test_killed_worker_then_resume_finishes_the_move(seeded, made_places, where):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    run = services.request_move(tenant, "database")
    with pytest.raises(WorkerKilled):
        executor.execute(run.pk, faults=Faults({where: WorkerKilled}))
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING  # interrupted, not finished
    # A second delivery of the task without --resume is a no-op.
    assert executor.execute(run.pk).status == RunStatus.RUNNING
    resumed = services.execute(services.resumable_run(tenant), resume=True)
    assert resumed.status == RunStatus.SUCCEEDED, resumed.error
    made_places.append(("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    tenant.refresh_from_db()
    assert tenant.placement == "database" and tenant.status == "active"
    assert snapshot(place_of(tenant), tenant.pk) == before


def test_killed_worker_then_rollback_is_clean(seeded):
    tenant = seeded
    before = fingerprints(shared_place(), tenant.pk)
    run = services.request_move(tenant, "database")
    with pytest.raises(WorkerKilled):
        executor.execute(run.pk, faults=Faults({"copy:shop_customer": WorkerKilled}))
    rolled = services.rollback_unfinished(tenant)
    assert_clean_rollback(tenant, rolled, before)


def test_a_second_run_for_the_same_tenant_is_refused_by_the_database(seeded):
    from django.db import IntegrityError

    from migration_jobs.models import MigrationRun

    tenant = seeded
    services.request_move(tenant, "schema")
    with pytest.raises(services.Refused, match="already has an active run"):
        services.request_move(tenant, "database")
    with pytest.raises(IntegrityError):  # even code that skips the service check
        MigrationRun.objects.create(tenant=tenant, source_placement="shared", target_placement="schema")


def test_passwords_never_reach_run_records(seeded, made_places):
    tenant = seeded
    run = move(tenant, "database")
    made_places.append(("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    tenant.refresh_from_db()
    password = tenant.credential.password()
    import json

    blob = json.dumps(services.run_report(run)) + json.dumps(run.report) + run.error + "".join(
        s.message + json.dumps(s.details) for s in run.steps.all())
    assert password not in blob
    assert password not in tenant.credential.password_encrypted


def test_legacy_rows_retire_after_the_grace_period_only(seeded, made_places, settings):
    tenant = seeded
    other = Tenant.objects.exclude(pk=tenant.pk).first()
    run = move(tenant, "schema")
    assert run.status == RunStatus.SUCCEEDED, run.error
    made_places.append(("schema", tenant.schema_name))
    tenant.refresh_from_db()
    with pytest.raises(services.Refused, match="may be retired from"):
        services.request_retire(tenant)
    legacy = fingerprints(shared_place(), tenant.pk)
    others = fingerprints(shared_place(), other.pk)
    dedicated = snapshot(place_of(tenant), tenant.pk)
    settings.TENANT_LEGACY_BATCH_ROWS = 97  # many small batches
    from django.core.management import call_command

    call_command("retire_tenant_legacy", tenant.slug, "--ignore-grace")
    retire = tenant.migration_runs.get(kind="retire")
    assert retire.status == RunStatus.SUCCEEDED, retire.error
    assert all(fp.rows == 0 for fp in fingerprints(shared_place(), tenant.pk).values())
    assert fingerprints(shared_place(), other.pk) == others  # nobody else touched
    assert snapshot(place_of(tenant), tenant.pk) == dedicated
    assert fences_of(shared_place(), tenant.pk) == 0
    deleted = retire.steps.get(name="retire_delete").details["deleted"]
    assert deleted == {name: fp.rows for name, fp in legacy.items() if fp.rows}
    from migration_jobs.engine.archive_read import read_manifest

    manifest = read_manifest(retire.steps.get(name="backup").details["path"])
    assert {t["name"]: t["rows"] for t in manifest["tables"]} == {n: fp.rows for n, fp in legacy.items()}
    with pytest.raises(services.Refused):
        services.request_retire(Tenant.objects.get(pk=other.pk))  # pooled: nothing to retire
    # Nothing left to reuse: a move back copies every row.
    back = executor.execute(services.request_move_back(Tenant.objects.get(pk=tenant.pk)).pk)
    assert back.status == RunStatus.SUCCEEDED, back.error
    assert snapshot(shared_place(), tenant.pk) == dedicated
    copied = back.steps.get(name="copy_back").details
    assert copied["legacy_rows_reused"] == 0 and copied["rows"] == sum(fp.rows for fp in legacy.values())
