"""The tenant-move management commands, end to end: real PostgreSQL, real runs, real
dedicated schemas and databases (dropped in teardown), called through call_command."""
import json
import socket

import pytest
from django.db import connection
from django.utils import timezone

from migration_jobs import services
from migration_jobs.engine import provision
from migration_jobs.models import MigrationRun, RunStatus
from migration_jobs.runs.faults import Faults
from migration_jobs.runs.steps.common import Verify
from shop.models import Customer
from tenancy.context import tenant_context
from tenancy.models import DatabaseCredential, DatabaseServer, Placement, Status, Tenant
from tests.helpers import SHOP, crash_move, fill, place_counts, run_cmd, shared_counts

pytestmark = pytest.mark.django_db(transaction=True)



# --- helpers ------------------------------------------------------------------------------

def shared_rows(tenant) -> dict:
    """Every column of every shop row of the tenant in the shared tables."""
    return {m._meta.db_table: sorted(map(repr, m.unscoped.filter(tenant_id=tenant.pk).order_by("pk").values_list()))
            for m in SHOP}


def last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- migrate_tenant -----------------------------------------------------------------------

def test_migrate_to_schema_moves_every_row_and_prints_json(make_tenant, cleanup):
    tenant = make_tenant("alpha")
    other = make_tenant("other")
    cleanup(tenant)
    fill(tenant)
    fill(other, 2)
    before = shared_counts(tenant)

    code, out, err = run_cmd("migrate_tenant", "alpha", "--to", "schema", "--json")

    assert code == 0, err
    report = last_json(out)
    run = MigrationRun.objects.get()
    assert report["run_id"] == run.pk and report["status"] == "succeeded" == run.status
    assert report["target"] == "schema" and report["schema"] == tenant.schema_name
    assert set(report["tables"]) >= {m._meta.db_table for m in SHOP}
    for name, rows in before.items():
        assert report["tables"][name]["rows"] == rows
        assert report["tables"][name]["ok"] is True and ":" in report["tables"][name]["checksum"]
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SCHEMA, Status.ACTIVE)
    assert place_counts(tenant) == before
    assert place_counts(other) == shared_counts(other)  # the other tenant did not move
    assert "copy" in err  # progress lines (stderr is not a terminal here)


def test_migrate_to_database_human_output_never_shows_the_password(make_tenant, cleanup):
    tenant = make_tenant("bravo")
    cleanup(tenant)
    fill(tenant, 3)
    before = shared_counts(tenant)

    code, out, err = run_cmd("migrate_tenant", "bravo", "--to", "database")
    code_json, out_json, err_json = run_cmd("migration_status", "bravo", "--json")

    assert code == 0, err
    assert "succeeded" in out and "verify" in out
    tenant.refresh_from_db()
    assert tenant.placement == Placement.DATABASE
    credential = DatabaseCredential.objects.get(tenant=tenant)
    assert credential.database == tenant.database_name
    assert place_counts(tenant) == before
    password = credential.password()
    report = json.dumps(services.run_report(MigrationRun.objects.get()))
    for text in (out, err, out_json, err_json, report):
        assert password not in text
    assert last_json(out_json)[0]["status"] == "succeeded"


def test_online_move_and_move_back(make_tenant, cleanup):
    tenant = make_tenant("online")
    cleanup(tenant)
    fill(tenant, 2)
    before = shared_rows(tenant)

    code, out, err = run_cmd("migrate_tenant", "online", "--to", "schema", "--online", "--json")
    assert code == 0, err
    report = last_json(out)
    assert report["online"] is True and report["status"] == "succeeded"
    assert report["freeze_seconds"] is not None
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SCHEMA, Status.ACTIVE)

    code, out, err = run_cmd("rollback_tenant", "online", "--online")
    assert code == 0, err
    assert "[online]" in out and "writes frozen" in out
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    assert shared_rows(tenant) == before


def test_dry_run_prints_preflight_and_changes_nothing(make_tenant):
    tenant = make_tenant("charlie")
    fill(tenant, 2)
    before = shared_rows(tenant)

    code, out, err = run_cmd("migrate_tenant", "charlie", "--to", "database", "--dry-run")
    code2, out2, _ = run_cmd("tenant_preflight", "charlie", "--to", "schema", "--json")

    assert code == 0, err
    assert "preflight: OK" in out and "shop_customer" in out
    assert code2 == 0 and last_json(out2)["preflight"]["ok"] is True
    assert last_json(out2)["dry_run"] is True
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    assert shared_rows(tenant) == before
    assert not provision.schema_exists(tenant.schema_name)
    assert not provision.database_exists(DatabaseServer.objects.get(is_default=True), tenant.database_name)
    assert not DatabaseCredential.objects.exists()
    assert set(MigrationRun.objects.values_list("dry_run", "status")) == {(True, "succeeded")}


@pytest.mark.parametrize("case", ["unknown tenant", "already dedicated", "active run", "unreachable server",
                                  "bad server name", "bad --to", "server for schema"])
def test_bad_input_is_refused_in_one_line_with_status_2(make_tenant, place_tenant, case):
    tenant = make_tenant("delta")
    args = ["delta", "--to", "database"]
    if case == "unknown tenant":
        args[0] = "nobody"
    elif case == "already dedicated":
        place_tenant(tenant, "schema")
        args[2] = "schema"
    elif case == "active run":
        services.request_move(tenant, "schema")  # queued, never executed
    elif case == "unreachable server":
        DatabaseServer.objects.create(name="gone", host="127.0.0.1", port=closed_port(), admin_user="x")
        args += ["--server", "gone"]
    elif case == "bad server name":
        args += ["--server", "nope"]
    elif case == "bad --to":
        args[2] = "elsewhere"
    elif case == "server for schema":
        args[2:] = ["schema", "--server", "default"]
    runs_before = MigrationRun.objects.count()

    code, out, err = run_cmd("migrate_tenant", *args)

    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert out == ""
    assert MigrationRun.objects.count() == runs_before
    assert Tenant.objects.get(pk=tenant.pk).status == Status.ACTIVE


def test_refusal_from_the_command_line_is_one_error_line_with_status_2(make_tenant, capsys):
    """Through run_from_argv, as a shell would see it."""
    from django.core.management import ManagementUtility

    with pytest.raises(SystemExit) as exit_info:
        ManagementUtility(["manage.py", "migrate_tenant", "ghost", "--to", "schema"]).execute()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == ["error: unknown tenant 'ghost'"]
    assert captured.out == ""


def test_async_enqueues_to_django_q(make_tenant, cleanup):
    tenant = make_tenant("echo")
    cleanup(tenant)
    fill(tenant, 1)

    code, out, err = run_cmd("migrate_tenant", "echo", "--to", "schema", "--async", "--json")

    assert code == 0, err
    report = last_json(out)
    assert report["task_id"]
    from django_q.models import Task

    assert Task.objects.filter(id=report["task_id"], success=True).exists()  # sync mode ran it
    assert MigrationRun.objects.get(pk=report["run_id"]).status == RunStatus.SUCCEEDED


def test_failed_run_exits_1_with_its_error(make_tenant, cleanup, monkeypatch):
    tenant = make_tenant("foxtrot")
    cleanup(tenant)
    fill(tenant, 1)
    # The command runs the move in this process: its verify step fails as an injected fault would.
    faults = Faults({"before:verify": RuntimeError})
    monkeypatch.setattr(Verify, "run", lambda self, ctx, step: faults.checkpoint("before:verify"))
    code, out, err = run_cmd("migrate_tenant", "foxtrot", "--to", "schema", "--json")

    assert code == 1
    assert "injected fault at before:verify" in err
    assert last_json(out)["status"] == "rolled_back"
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    assert not provision.schema_exists(tenant.schema_name)


# --- rollback_tenant, resume_tenant_move --------------------------------------------------

def test_rollback_moves_a_dedicated_tenant_back_with_every_row(make_tenant, cleanup):
    tenant = make_tenant("golf")
    cleanup(tenant)
    fill(tenant, 3)
    assert run_cmd("migrate_tenant", "golf", "--to", "database")[0] == 0
    # Written in the dedicated database after the move: must come back too.
    with tenant_context(Tenant.objects.get(pk=tenant.pk)):
        Customer.objects.create(first_name="New", last_name="Comer", created_at=timezone.now())
        Customer.objects.filter(first_name="First0").update(loyalty_points=7)
    expected = place_counts(tenant)

    code, out, err = run_cmd("rollback_tenant", "golf", "--json")

    assert code == 0, err
    report = last_json(out)
    assert report["kind"] == "move_back" and report["status"] == "succeeded"
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    assert shared_counts(tenant) == expected
    assert Customer.unscoped.get(tenant=tenant, first_name="First0").loyalty_points == 7
    assert Customer.unscoped.filter(tenant=tenant, first_name="New").exists()
    assert report["tables"]["shop_customer"]["rows"] == expected["shop_customer"]

    code, _, err = run_cmd("rollback_tenant", "golf")
    assert code == 2 and "already in shared placement" in err


def test_rollback_of_an_interrupted_run_and_resume(make_tenant, cleanup):
    tenant = make_tenant("hotel")
    cleanup(tenant)
    fill(tenant, 2)
    run = crash_move(tenant, "schema")
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING  # as a crash leaves it

    code, out, err = run_cmd("rollback_tenant", "hotel")
    assert code == 0, err
    run.refresh_from_db()
    assert run.status == RunStatus.ROLLED_BACK
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    assert not provision.schema_exists(tenant.schema_name)

    # Crash again, and resume this time.
    crash_move(tenant, "schema")
    code, out, err = run_cmd("resume_tenant_move", "hotel", "--json")
    assert code == 0, err
    assert last_json(out)["status"] == "succeeded"
    tenant.refresh_from_db()
    assert tenant.placement == Placement.SCHEMA
    assert place_counts(tenant) == shared_counts(tenant)  # legacy rows are still there, identical

    code, _, err = run_cmd("resume_tenant_move", "hotel")
    assert code == 2 and "no interrupted run" in err


# --- verify_tenant, migration_status ------------------------------------------------------

def test_verify_tenant_in_shared_and_in_schema(make_tenant, cleanup):
    tenant = make_tenant("india")
    cleanup(tenant)
    fill(tenant, 2)

    code, out, err = run_cmd("verify_tenant", "india")
    assert code == 0, err
    assert "OK" in out and "shop_customer" in out

    assert run_cmd("migrate_tenant", "india", "--to", "schema")[0] == 0
    code, out, err = run_cmd("verify_tenant", "india", "--json")
    assert code == 0, err
    report = last_json(out)
    assert report["ok"] and report["placement"] == "schema" and not report["problems"]
    assert report["tables"]["shop_customer"]["rows"] == 2
    assert report["tables"]["shop_customer"]["foreign_rows"] == 0
    assert report["legacy_shared_total"] == sum(shared_counts(tenant).values())
    move = MigrationRun.objects.get()
    for name, entry in report["tables"].items():
        assert entry["checksum"] == move.report["verify"]["tables"][name]["target_checksum"]

    # A table missing from the schema is a problem, not a fall-through to public.
    with connection.cursor() as cursor:
        cursor.execute(f'DROP TABLE "{tenant.schema_name}".shop_signature')
        cursor.execute(f'INSERT INTO "{tenant.schema_name}".shop_sparepart '
                       "(tenant_id, sku, name, unit_price, stock, reorder_level, compatible_models, is_discontinued) "
                       "VALUES (%s, 'X', 'Y', 1, 1, 1, '{}', false)", [tenant.pk + 1000])
    code, out, err = run_cmd("verify_tenant", "india", "--json")
    report = last_json(out)
    assert code == 1 and not report["ok"]
    assert report["tables"]["shop_signature"]["exists"] is False
    assert report["tables"]["shop_sparepart"]["foreign_rows"] == 1
    assert "shop_signature" in err.splitlines()[-1]


def test_verify_unknown_tenant_is_refused(db):
    code, out, err = run_cmd("verify_tenant", "nobody")
    assert code == 2 and err.strip() == "error: unknown tenant 'nobody'"


def test_migration_status_lists_runs_newest_first(make_tenant):
    make_tenant("juliet"), make_tenant("kilo")
    assert run_cmd("tenant_preflight", "juliet", "--to", "schema")[0] == 0
    assert run_cmd("tenant_preflight", "kilo", "--to", "database")[0] == 0

    code, out, err = run_cmd("migration_status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["id", "tenant", "kind", "move", "status"]
    assert "kilo" in lines[2] and "juliet" in lines[3]  # newest first
    assert "shared->database" in lines[2] and "succeeded" in lines[2]

    code, out, _ = run_cmd("migration_status", "juliet", "--json")
    rows = last_json(out)
    assert [r["tenant"] for r in rows] == ["juliet"] and rows[0]["dry_run"] is True
    assert run_cmd("migration_status", "nobody")[0] == 2
