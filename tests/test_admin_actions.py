"""The tenant-move admin through real requests (test client, superuser), the real django-q2
(sync mode: an enqueued run executes within the request) and real PostgreSQL."""
import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from migration_jobs import services
from migration_jobs.models import MigrationRun, MigrationStep, RunStatus
from tenancy.models import DatabaseCredential, DatabaseServer, Placement, Status, Tenant
from tests.helpers import crash_move, fill, place_counts, shared_counts, staff_user, texts

pytestmark = pytest.mark.django_db(transaction=True)

TENANTS = reverse("admin:tenancy_tenant_changelist")
RUNS = reverse("admin:migration_jobs_migrationrun_changelist")


def act(client, action, tenants, url=TENANTS, **extra):
    data = {"action": action, "_selected_action": [t.pk for t in tenants], **extra}
    return client.post(url, data)


# --- Moves --------------------------------------------------------------------------------

def test_move_to_schema_confirm_then_run(staff, make_tenant, cleanup):
    tenant = make_tenant("acme")
    cleanup(tenant)
    fill(tenant, 3)
    before = shared_counts(tenant)

    page = act(staff, "move_to_schema", [tenant])
    assert page.status_code == 200
    html = page.content.decode()
    assert "acme" in html and tenant.schema_name in html
    assert 'name="confirm" value="yes"' in html and 'name="server"' not in html
    assert not MigrationRun.objects.exists()  # nothing before the confirmation

    done = act(staff, "move_to_schema", [tenant], confirm="yes")

    assert done.status_code == 302
    run = MigrationRun.objects.get()
    assert (run.status, run.requested_via, run.requested_by_id) == (RunStatus.SUCCEEDED, "admin", staff.user.pk)
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SCHEMA, Status.ACTIVE)
    assert place_counts(tenant) == before
    [message] = texts(done, as_html=True)
    assert "succeeded" in message
    assert f'<a href="{reverse("admin:migration_jobs_migrationrun_change", args=[run.pk])}">run {run.pk}</a>' \
        in message
    # The message is rendered as a link on the next page.
    follow = staff.get(TENANTS)
    assert f'href="/admin/migration_jobs/migrationrun/{run.pk}/change/"' in follow.content.decode()


def test_move_to_database_offers_servers_and_uses_the_chosen_one(staff, make_tenant, cleanup):
    tenant = make_tenant("bolt")
    cleanup(tenant)
    fill(tenant, 2)
    DatabaseServer.objects.create(name="spare", host="127.0.0.1", port=1, admin_user="x")

    page = act(staff, "move_to_database", [tenant])
    html = page.content.decode()
    assert page.status_code == 200 and tenant.database_name in html
    options = re.findall(r'<option value="([^"]+)"( selected)?>', html)
    assert ("default", " selected") in options and ("spare", "") in options

    done = act(staff, "move_to_database", [tenant], confirm="yes", server="default")

    run = MigrationRun.objects.get()
    assert run.status == RunStatus.SUCCEEDED and run.target_server.name == "default"
    tenant.refresh_from_db()
    assert tenant.placement == Placement.DATABASE
    password = DatabaseCredential.objects.get(tenant=tenant).password()
    for url in (RUNS, reverse("admin:migration_jobs_migrationrun_change", args=[run.pk]),
                reverse("admin:tenancy_databasecredential_changelist")):
        assert password not in staff.get(url).content.decode()
    assert "succeeded" in texts(done)[0]


def test_unreachable_server_is_refused_naming_the_tenant(staff, make_tenant):
    tenant = make_tenant("cove")
    DatabaseServer.objects.create(name="spare", host="127.0.0.1", port=1, admin_user="x")

    done = act(staff, "move_to_database", [tenant], confirm="yes", server="spare")

    assert done.status_code == 302
    [message] = texts(done)
    assert message.startswith("cove: refused:") and "unreachable" in message
    assert not MigrationRun.objects.exists()


def test_refused_move_shows_an_error_and_changes_nothing(staff, make_tenant, place_tenant):
    placed = place_tenant(make_tenant("dune"), "schema")
    pooled = make_tenant("echo")
    services.request_move(pooled, "schema")  # echo has a queued run: refused too

    done = act(staff, "move_to_schema", [placed, pooled], confirm="yes")

    assert done.status_code == 302
    messages = texts(done)
    assert any(m.startswith("dune: refused:") and "already in schema placement" in m for m in messages)
    assert any(m.startswith("echo: refused:") and "already has an active run" in m for m in messages)
    assert MigrationRun.objects.count() == 1  # only the queued one made above
    assert Tenant.objects.get(pk=placed.pk).placement == Placement.SCHEMA
    assert Tenant.objects.get(pk=pooled.pk).placement == Placement.SHARED


def test_move_back_to_shared(staff, make_tenant, cleanup):
    tenant = make_tenant("fern")
    cleanup(tenant)
    fill(tenant, 2)
    act(staff, "move_to_schema", [tenant], confirm="yes")
    assert Tenant.objects.get(pk=tenant.pk).placement == Placement.SCHEMA

    page = act(staff, "move_back_to_shared", [tenant])
    assert page.status_code == 200 and "fern" in page.content.decode()
    assert 'name="online" value="yes"' in page.content.decode()
    done = act(staff, "move_back_to_shared", [tenant], confirm="yes", online="yes")

    back = MigrationRun.objects.filter(kind="move_back").get()
    assert back.status == RunStatus.SUCCEEDED and back.online
    assert "(online)" in staff.get(RUNS).content.decode()
    assert Tenant.objects.get(pk=tenant.pk).placement == Placement.SHARED
    assert "succeeded" in texts(done)[0]
    again = act(staff, "move_back_to_shared", [tenant], confirm="yes")
    assert "already in shared placement" in texts(again)[0]


# --- Verify, suspend, reactivate ----------------------------------------------------------

def test_verify_action_reports_the_result(staff, make_tenant):
    tenant = make_tenant("gale")
    fill(tenant, 2)

    done = act(staff, "verify", [tenant])

    assert done.status_code == 302
    [message] = texts(done)
    assert message.startswith("gale: verified") and f"{sum(shared_counts(tenant).values())} rows" in message
    from django_q.models import Task

    assert Task.objects.filter(func="migration_jobs.tasks.verify_tenant", success=True).count() == 1


def test_suspend_needs_confirmation_and_reactivate_does_not(staff, make_tenant):
    tenant = make_tenant("hail")

    page = act(staff, "suspend", [tenant])
    assert page.status_code == 200 and "hail" in page.content.decode()
    assert Tenant.objects.get(pk=tenant.pk).status == Status.ACTIVE

    done = act(staff, "suspend", [tenant], confirm="yes")
    assert done.status_code == 302 and Tenant.objects.get(pk=tenant.pk).status == Status.SUSPENDED
    assert texts(done) == ["hail: suspended."]

    done = act(staff, "reactivate", [tenant])
    assert done.status_code == 302 and Tenant.objects.get(pk=tenant.pk).status == Status.ACTIVE


def test_suspend_is_refused_while_a_run_owns_the_status(staff, make_tenant):
    tenant = make_tenant("iris")
    run = services.request_move(tenant, "schema")

    done = act(staff, "suspend", [tenant], confirm="yes")

    link = f'<a href="/admin/migration_jobs/migrationrun/{run.pk}/change/">run {run.pk}</a>'  # one click away
    assert texts(done, as_html=True) == [f"iris: refused: tenant iris is being moved by {link}; its status is managed by that run"]
    assert Tenant.objects.get(pk=tenant.pk).status == Status.ACTIVE


def test_tenant_changelist_offers_the_actions(staff, make_tenant):
    make_tenant("jade")
    html = staff.get(TENANTS).content.decode()
    for label in ("Move to dedicated schema", "Move to dedicated database", "Move back to shared", "Verify",
                  "Suspend", "Reactivate"):
        assert label in html


# --- Run history --------------------------------------------------------------------------

def test_run_changelist_and_change_page(staff, make_tenant, cleanup):
    tenant = make_tenant("kite")
    other = make_tenant("lake")
    cleanup(tenant)
    fill(tenant, 2)
    act(staff, "move_to_schema", [tenant], confirm="yes")
    services.request_move(other, "database", dry_run=True)  # stays queued
    run = MigrationRun.objects.get(tenant=tenant)

    html = staff.get(RUNS).content.decode()
    assert "kite" in html and "lake" in html and "shared → schema" in html and "100%" in html

    assert "kite" not in staff.get(RUNS, {"status__exact": "queued"}).content.decode()
    assert "lake" not in staff.get(RUNS, {"status__exact": "succeeded"}).content.decode()
    assert "kite" not in staff.get(RUNS, {"target_placement__exact": "database"}).content.decode()
    assert "lake" not in staff.get(RUNS, {"q": "kite"}).content.decode()
    assert "kite" in staff.get(RUNS, {"kind__exact": "move", "q": "kite"}).content.decode()
    day = run.created_at
    dated = staff.get(RUNS, {"created_at__year": day.year, "created_at__month": day.month,
                             "created_at__day": day.day})
    assert dated.status_code == 200 and "kite" in dated.content.decode()

    page = staff.get(reverse("admin:migration_jobs_migrationrun_change", args=[run.pk]))
    assert page.status_code == 200
    page_html = page.content.decode()
    steps = list(MigrationStep.objects.filter(run=run).order_by("order").values_list("name", flat=True))
    assert re.findall(r'<li data-step="(\w+)"', page_html) == steps  # the timeline, in order
    assert len(steps) == 10
    assert "&quot;verify&quot;" in page_html  # the pretty-printed report
    assert 'name="_save"' not in page_html and "deletelink" not in page_html


def test_tenant_page_links_to_its_runs(staff, make_tenant):
    tenant, other = make_tenant("lime"), make_tenant("lynx")
    services.request_move(tenant, "schema", dry_run=True)
    services.request_move(other, "schema", dry_run=True)
    html = staff.get(reverse("admin:tenancy_tenant_change", args=[tenant.pk])).content.decode()
    link = re.search(r'<a href="([^"]+\?tenant__id__exact=\d+)">Migration runs</a>', html).group(1)
    runs = staff.get(link)
    assert runs.status_code == 200
    assert "lime" in runs.content.decode() and "lynx" not in runs.content.decode()


def test_runs_cannot_be_added_changed_or_deleted(staff, make_tenant):
    run = services.request_move(make_tenant("mint"), "schema", dry_run=True)
    assert staff.get(reverse("admin:migration_jobs_migrationrun_add")).status_code == 403
    assert staff.get(reverse("admin:migration_jobs_migrationrun_delete", args=[run.pk])).status_code == 403
    change = reverse("admin:migration_jobs_migrationrun_change", args=[run.pk])
    staff.post(change, {"status": "succeeded"})
    assert MigrationRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    assert "delete_selected" not in staff.get(RUNS).content.decode()
    response = act(staff, "delete_selected", [run], url=RUNS, post="yes")
    assert MigrationRun.objects.filter(pk=run.pk).exists() and response.status_code in (200, 302)


def test_runs_are_read_with_the_view_permission_as_in_the_api(client, make_tenant):
    run = services.request_move(make_tenant("nova"), "schema", dry_run=True)
    page = reverse("admin:migration_jobs_migrationrun_change", args=[run.pk])
    live = reverse("admin:migration_jobs_migrationrun_live", args=[run.pk])
    client.force_login(staff_user("clerk"))  # staff, no permission: nothing of the runs
    assert [client.get(url).status_code for url in (RUNS, page, live)] == [403, 403, 403]
    assert "migration_jobs" not in client.get("/admin/").content.decode()
    client.force_login(staff_user("reader", ["migration_jobs.view_migrationrun"]))
    assert [client.get(url).status_code for url in (RUNS, page, live)] == [200, 200, 200]
    assert "Roll back" not in client.get(RUNS).content.decode()  # actions need tenant move permission
    client.force_login(staff_user("mover", ["tenancy.move_tenant"]))  # watches the runs it starts
    assert [client.get(url).status_code for url in (RUNS, page, live)] == [200, 200, 200]


def test_roll_back_and_resume_interrupted_runs(staff, make_tenant, cleanup):
    tenant = make_tenant("opal")
    cleanup(tenant)
    fill(tenant, 2)

    run = crash_move(tenant, "schema")
    page = act(staff, "roll_back_runs", [run], url=RUNS)
    assert page.status_code == 200 and "opal" in page.content.decode()
    done = act(staff, "roll_back_runs", [run], url=RUNS, confirm="yes")
    run.refresh_from_db()
    assert run.status == RunStatus.ROLLED_BACK
    assert "rolled back" in texts(done)[0]
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (Placement.SHARED, Status.ACTIVE)

    # A finished run is skipped, not touched.
    skipped = act(staff, "resume_runs", [run], url=RUNS, confirm="yes")
    assert "not resumed" in texts(skipped)[0]

    run = crash_move(tenant, "schema")
    page = act(staff, "resume_runs", [run], url=RUNS)
    assert page.status_code == 200 and "copy" not in texts(page)
    done = act(staff, "resume_runs", [run], url=RUNS, confirm="yes")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert "succeeded" in texts(done)[0]
    assert Tenant.objects.get(pk=tenant.pk).placement == Placement.SCHEMA


@pytest.mark.django_db(transaction=True)
def test_retire_legacy_action_respects_the_grace_period(admin_client, make_tenant, settings):
    """Through the admin: refused within the grace period, done after it."""
    from migration_jobs import services
    from migration_jobs.engine import provision
    from migration_jobs.models import MigrationRun

    tenant = make_tenant("retiring")
    fill(tenant, 5)
    run = services.execute(services.request_move(tenant, "schema"))
    assert run.status == "succeeded", run.error
    try:
        url = "/admin/tenancy/tenant/"
        post = {"action": "retire_legacy", "_selected_action": [tenant.pk]}
        page = admin_client.post(url, post)
        assert page.status_code == 200 and b"Retire legacy rows" in page.content  # confirmation first
        response = admin_client.post(url, {**post, "confirm": "yes"}, follow=True)
        assert "may be retired from" in response.content.decode()
        assert not MigrationRun.objects.filter(tenant=tenant, kind="retire").exists()
        settings.TENANT_LEGACY_GRACE_DAYS = 0
        response = admin_client.post(url, {**post, "confirm": "yes"}, follow=True)
        retire = MigrationRun.objects.get(tenant=tenant, kind="retire")
        assert retire.status == "succeeded", retire.error
        assert shared_counts(tenant) == {k: 0 for k in shared_counts(tenant)}
    finally:
        provision.drop_schema(tenant.schema_name)
