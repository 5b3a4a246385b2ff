"""Run control: cancel a queued run (its task then does nothing), cancel a held online move
(its worker rolls it back at the next safe point), cancel twice (refused, one line), from the
services, the command and the API; the one downtime figure (writes_refused_seconds) and the
Retry-After that follows the expected remaining refusal. Real PostgreSQL, real runs."""
import json

import pytest
from django.test import Client

from migration_jobs import services, tasks
from migration_jobs.engine import capture, provision
from migration_jobs.engine.places import shared_place
from migration_jobs.models import MigrationRun, RunStatus, StepStatus
from tenancy.models import Placement, Status
from tests.helpers import execute_held, fill, make_token, run_cmd, shared_counts, staff_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_cancel_a_queued_run_then_its_task_does_nothing(make_tenant, cleanup):
    tenant = make_tenant("quay")
    cleanup(tenant)
    fill(tenant, 2)
    run = services.request_move(tenant, "schema")

    cancelled = services.cancel(run)

    assert cancelled.status == RunStatus.CANCELLED and cancelled.finished_at is not None
    assert tasks.execute_run(run.pk) == f"run {run.pk}: cancelled"  # the queued task, delivered later
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.started_at is None
    assert set(run.steps.values_list("status", flat=True)) == {StepStatus.PENDING}
    assert not provision.schema_exists(tenant.schema_name)
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    assert services.active_run(tenant) is None  # a new move may be asked for


def test_cancel_twice_is_refused_with_one_line(make_tenant, cleanup):
    tenant = make_tenant("twice")
    cleanup(tenant)
    run = services.request_move(tenant, "schema")

    code, out, err = run_cmd("cancel_tenant_move", "twice")
    assert code == 0 and f"run {run.pk} of twice: cancelled" in out, (out, err)
    code, out, err = run_cmd("cancel_tenant_move", str(run.pk))
    assert code == 2 and err.strip() == f"error: run {run.pk} is cancelled: nothing to cancel", err
    code, out, err = run_cmd("cancel_tenant_move", "twice")
    assert code == 2 and err.strip() == "error: tenant twice has no queued or running move to cancel", err
    with pytest.raises(services.Refused, match="nothing to cancel"):
        services.cancel(run)


def test_cancel_through_the_api(make_tenant, cleanup, django_user_model):
    tenant = make_tenant("apic")
    cleanup(tenant)
    staff = staff_user("ops", ["migration_jobs.view_migrationrun", "tenancy.move_tenant"])
    headers = {"Authorization": f"Bearer {make_token(staff)}"}
    run = services.request_move(tenant, "schema")
    client = Client()

    response = client.post(f"/api/admin/migrations/{run.pk}/cancel", headers=headers)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "cancelled" and body["finished"] is True
    again = client.post(f"/api/admin/migrations/{run.pk}/cancel", headers=headers)
    assert again.status_code == 409 or again.status_code == 400, again.content
    assert "nothing to cancel" in json.dumps(again.json())


def test_cancel_a_held_online_move_rolls_it_back(make_tenant, cleanup, settings):
    """Held in sync after its copy: cancel, and the worker rolls back at its next catch-up
    round. The tenant stays active in shared with its rows, nothing of the move is left."""
    tenant = make_tenant("held")
    cleanup(tenant)
    fill(tenant, 5)
    before = shared_counts(tenant)
    settings.MIGRATION_HOLD_MAX_SECONDS = 120.0  # the run gives up if this test's staff thread dies
    run = services.request_move(tenant, "schema", online=True, hold_cutover=True)
    seen = {}

    def staff():
        seen["asked"] = services.cancel(run).status
        try:
            services.cancel(run)
        except services.Refused as exc:
            seen["second"] = str(exc)

    finished = execute_held(run, staff, seen, rounds=1)

    assert "error" not in seen, seen
    assert seen["asked"] == RunStatus.RUNNING  # asked; the worker did the rest
    assert seen["second"] == f"run {run.pk}: cancel already requested; its worker stops at the next safe point"
    assert finished.status == RunStatus.CANCELLED, finished.error
    assert "cancelled on request" in finished.error
    assert finished.writes_refused_seconds == 0.0  # the tenant never refused a write
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)
    assert shared_counts(tenant) == before
    assert not provision.schema_exists(tenant.schema_name)
    with shared_place().connect() as conn:
        assert capture.leftovers(conn) == []
        assert capture.fence_reason(conn, shared_place(), tenant.pk) is None
    assert finished.steps.get(name="cutover").status == StepStatus.PENDING


def test_cancel_after_the_cutover_is_refused(make_tenant, cleanup):
    tenant = make_tenant("late")
    cleanup(tenant)
    fill(tenant, 2)
    run = services.request_move(tenant, "schema", online=True)
    done = services.execute(run)
    assert done.status == RunStatus.SUCCEEDED, done.error
    with pytest.raises(services.Refused, match="is succeeded: nothing to cancel"):
        services.cancel(run)
    # A run stuck after its cutover (worker gone) cannot be cancelled either.
    MigrationRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, current_step="cleanup")
    with pytest.raises(services.Refused, match="point of no return"):
        services.cancel(run)
    MigrationRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED)


# --- One downtime figure ----------------------------------------------------------------

def test_offline_move_records_how_long_writes_were_refused(make_tenant, cleanup, client, django_user_model):
    tenant = make_tenant("offl")
    cleanup(tenant)
    fill(tenant, 3)
    code, out, err = run_cmd("migrate_tenant", "offl", "--to", "schema")
    assert code == 0, err
    run = MigrationRun.objects.get(tenant=tenant)
    suspend, reactivate = run.steps.get(name="suspend"), run.steps.get(name="reactivate")
    expected = (reactivate.finished_at - suspend.started_at).total_seconds()
    assert run.writes_refused_seconds == pytest.approx(expected, abs=0.002) and run.writes_refused_seconds > 0
    shown = services.human_refusal(run.writes_refused_seconds)
    assert f"writes frozen {shown}" in out  # the command
    assert services.run_report(run)["writes_refused_seconds"] == round(run.writes_refused_seconds, 3)  # JSON
    staff = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-Admin-81")
    client.force_login(staff)
    listing = client.get("/admin/migration_jobs/migrationrun/").content.decode()
    page = client.get(f"/admin/migration_jobs/migrationrun/{run.pk}/change/").content.decode()
    assert shown in listing and shown in page  # the list and the page, the same way


def test_online_move_refuses_writes_only_for_its_freeze(make_tenant, cleanup):
    tenant = make_tenant("onl")
    cleanup(tenant)
    fill(tenant, 3)
    run = services.execute(services.request_move(tenant, "schema", online=True))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.writes_refused_seconds == run.freeze_seconds and run.freeze_seconds < 5
    copy = run.steps.get(name="copy")  # the rate is the copy's, not the whole run's
    assert run.rows_per_second == pytest.approx(run.rows_copied / (copy.finished_at - copy.started_at).total_seconds())
    assert run.lag_changes is None and run.lag_seconds is None  # no stale lag on a finished run
    assert services.human_refusal(0.046) == "46 ms" and services.human_refusal(6.14) == "6.1s"


def _refused_retry_after(client, tenant) -> str:
    from tenancy import refusal
    from tenancy.models import tenant_host

    refusal.forget()
    response = client.post("/shop/customers/", data='{"first_name": "A", "last_name": "B"}',
                           content_type="application/json", HTTP_HOST=tenant_host(tenant.slug))
    assert response.status_code == 503
    return response["Retry-After"]


def test_retry_after_follows_the_expected_remaining_refusal(make_tenant, client, settings):
    settings.TENANT_RETRY_AFTER = 30
    tenant = make_tenant("retry")
    tenant.status = Status.MIGRATING
    tenant.save()
    assert _refused_retry_after(client, tenant) == "30"  # no run tells more: the setting
    run = MigrationRun.objects.create(tenant=tenant, source_placement="shared", target_placement="schema",
                                      online=True, status=RunStatus.RUNNING, current_step="cutover")
    assert _refused_retry_after(client, tenant) == "1"  # an online move's freeze
    # Offline, copying 1000 rows at 100 rows/s, half done: 5 s of copy + 5 s of verify + 1.
    MigrationRun.objects.filter(pk=run.pk).update(online=False, current_step="copy", rows_total=1000,
                                                  rows_copied=500, rows_per_second=100.0)
    assert _refused_retry_after(client, tenant) == "11"
    MigrationRun.objects.filter(pk=run.pk).update(rows_total=100_000)  # long: capped by the setting
    assert _refused_retry_after(client, tenant) == "30"
    MigrationRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED)
