"""The admin as a workflow, through real requests (Django test client, logged-in staff):
the tenant list (every sortable column, search by domain, the current run and its state),
Status not editable while a run owns the tenant, the cancel action and the run page."""
import re

import pytest
from django.urls import reverse

from migration_jobs import services
from migration_jobs.models import MigrationRun, RunStatus
from tenancy.models import Domain, Status, Tenant
from tests.helpers import texts

pytestmark = pytest.mark.django_db(transaction=True)

TENANTS = reverse("admin:tenancy_tenant_changelist")
RUNS = reverse("admin:migration_jobs_migrationrun_changelist")


def row_slugs(html) -> list[str]:
    return re.findall(r'<th class="field-slug"><a href="[^"]*">([^<]+)</a>', html)


def sort_links(html) -> dict[str, str]:
    """{column: its sort link} of the list's sortable headers."""
    return dict(re.findall(r'<th scope="col" class="sortable[^"]*column-([\w_]+)[^"]*">\s*'
                           r'(?:<div class="sortoptions">.*?</div>\s*)?<div class="text"><a href="([^"]+)"',
                           html, re.S))


# --- The tenant list ------------------------------------------------------------------------

def test_every_sortable_column_of_the_tenant_list_works(staff, make_tenant):
    for slug in ("bravo", "alpha", "charlie"):
        make_tenant(slug)
    Domain.objects.filter(tenant__slug="alpha").update(domain="zzz.example.test")
    links = sort_links(staff.get(TENANTS).content.decode())
    assert {"slug", "name", "placement", "status", "domain", "created_at"} <= set(links), links
    for column, link in links.items():
        for url in (TENANTS + link, TENANTS + link.replace("o=", "o=-")):
            response = staff.get(url)
            assert response.status_code == 200, (column, url)
            assert len(row_slugs(response.content.decode())) == 3, (column, url)
    by_domain = row_slugs(staff.get(TENANTS + links["domain"]).content.decode())
    assert by_domain[-1] == "alpha" or by_domain[0] == "alpha"  # zzz sorts at one end


def test_search_the_tenant_list_by_domain(staff, make_tenant):
    make_tenant("alpha")
    make_tenant("bravo")
    Domain.objects.create(tenant=Tenant.objects.get(slug="bravo"), domain="shop.bravo-repairs.test")
    response = staff.get(TENANTS, {"q": "bravo-repairs"})
    assert response.status_code == 200 and row_slugs(response.content.decode()) == ["bravo"]


def test_the_tenant_list_shows_the_current_run_linked_with_its_state(staff, make_tenant, cleanup):
    alpha, bravo = make_tenant("alpha"), make_tenant("bravo")
    cleanup(alpha)
    run = services.request_move(alpha, "schema", online=True, hold_cutover=True)
    html = staff.get(TENANTS).content.decode()
    url = reverse("admin:migration_jobs_migrationrun_change", args=[run.pk])
    assert f'<a href="{url}">run {run.pk}</a>: queued' in html
    MigrationRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, current_step="catch_up")
    html = staff.get(TENANTS).content.decode()
    assert f'<a href="{url}">run {run.pk}</a>: held in sync: waiting for you to cut over' in html
    assert html.count("run ") >= 1 and bravo.slug in html
    MigrationRun.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLED)


def test_status_cannot_be_edited_while_a_run_owns_the_tenant(staff, make_tenant, cleanup):
    tenant = make_tenant("alpha")
    cleanup(tenant)
    change = reverse("admin:tenancy_tenant_change", args=[tenant.pk])
    assert 'name="status"' in staff.get(change).content.decode()  # no run: editable
    run = services.request_move(tenant, "schema")
    page = staff.get(change).content.decode()
    assert 'name="status"' not in page  # shown, read-only
    # A form opened before the run took the tenant still cannot change it.
    response = staff.post(change, {"slug": "alpha", "name": "Alpha", "status": Status.SUSPENDED, "settings": "{}",
                                   "domains-TOTAL_FORMS": "0", "domains-INITIAL_FORMS": "0"})
    tenant.refresh_from_db()
    assert tenant.status == Status.ACTIVE
    with pytest.raises(services.Refused, match=f"being moved by run {run.pk}"):
        services.set_status(tenant, Status.SUSPENDED)  # the service refuses it too
    services.cancel(run)
    assert 'name="status"' in staff.get(change).content.decode()
    assert response.status_code == 302, response.content.decode()[-3000:]


# --- Cancel from the admin ------------------------------------------------------------------

def test_cancel_action_lists_what_cannot_be_cancelled_then_cancels(staff, make_tenant, cleanup):
    alpha, bravo = make_tenant("alpha"), make_tenant("bravo")
    cleanup(alpha)
    cleanup(bravo)
    queued = services.request_move(alpha, "schema")
    done = services.request_move(bravo, "schema")
    MigrationRun.objects.filter(pk=done.pk).update(status=RunStatus.SUCCEEDED)
    data = {"action": "cancel_runs", "_selected_action": [queued.pk, done.pk]}
    page = staff.post(RUNS, data).content.decode()
    assert "bravo: cannot be cancelled: it is succeeded" in page and "alpha: shared → schema, queued" in page
    response = staff.post(RUNS, {**data, "confirm": "yes"})
    assert response.status_code == 302
    queued.refresh_from_db()
    assert queued.status == RunStatus.CANCELLED
    assert any("cancelled" in t for t in texts(response)) and any("not cancelled" in t for t in texts(response))
    listing = staff.get(RUNS).content.decode()
    assert "cancelled" in listing


# --- Confirmation pages check each tenant ---------------------------------------------------

def refused_items(html) -> list[str]:
    block = re.search(r'<ul class="refused-objects errorlist">(.*?)</ul>', html, re.S)
    return [re.sub(r"<[^>]+>", "", li).strip() for li in re.findall(r"<li>(.*?)</li>", block.group(1), re.S)] \
        if block else []


def test_move_page_lists_the_tenants_that_cannot_move_and_defaults_to_online(staff, make_tenant, place_tenant):
    ready, suspended = make_tenant("ready"), make_tenant("napping", status=Status.SUSPENDED)
    placed = place_tenant(make_tenant("placed"), "database")
    html = staff.post(TENANTS, {"action": "move_to_schema",
                                "_selected_action": [ready.pk, suspended.pk, placed.pk]}).content.decode()
    assert sorted(refused_items(html)) == [
        "napping: tenant napping is suspended; reactivate it first",
        "placed: tenant placed is already in database placement; move it back first"]
    assert "ready</strong>: Shared database, active → schema tenant_ready" in html
    assert re.search(r'name="online" value="yes" id="id_online" checked', html)
    assert not MigrationRun.objects.exists()


def test_move_back_page_defaults_to_online_and_says_what_online_means(staff, make_tenant, place_tenant):
    shared = make_tenant("stay")
    placed = place_tenant(make_tenant("home"), "schema")
    html = staff.post(TENANTS, {"action": "move_back_to_shared",
                                "_selected_action": [shared.pk, placed.pk]}).content.decode()
    assert refused_items(html) == ["stay: tenant stay is already in shared placement"]
    assert "read-only during the move" not in html and "writes pause only for a short cutover" in html
    assert re.search(r'name="online" value="yes" id="id_online" checked', html)


def test_retire_page_says_where_each_tenants_legacy_is(staff, make_tenant, place_tenant):
    never = make_tenant("never")
    moved = place_tenant(make_tenant("moved"), "schema")
    MigrationRun.objects.create(tenant=moved, kind="move", source_placement="shared", target_placement="schema",
                                target_schema=moved.schema_name, status=RunStatus.SUCCEEDED,
                                finished_at="2020-01-01T00:00:00Z")
    html = staff.post(TENANTS, {"action": "retire_legacy",
                                "_selected_action": [never.pk, moved.pk]}).content.decode()
    assert refused_items(html) == ["never: tenant never lives in the shared tables and no dedicated place of it "
                                   "is left: it has no legacy rows"]
    assert "moved</strong>: Dedicated schema: its old rows in the shared tables (deleted in batches)" in html


# --- The run page ---------------------------------------------------------------------------

def test_run_page_header_buttons_live_json_and_folded_report(staff, make_tenant, cleanup):
    tenant = make_tenant("alpha")
    cleanup(tenant)
    run = services.request_move(tenant, "schema", online=True, hold_cutover=True)
    MigrationRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, current_step="catch_up", rows_total=200,
                                                  rows_copied=100, lag_changes=3, lag_seconds=0.5,
                                                  report={"preflight": {"ok": True}})
    page_url = reverse("admin:migration_jobs_migrationrun_change", args=[run.pk])
    html = staff.get(page_url).content.decode()
    assert 'id="run-state">held in sync: waiting for you to cut over<' in html
    assert "alpha: shared → schema (online)" in html and 'value="50.000000"' in html
    assert "3 changes, 0.5s" in html
    for op in ("cancel", "read_share_0", "read_share_10", "read_share_50", "read_share_100", "cut_over"):
        assert f'name="op" value="{op}"' in html, op
    assert html.index('id="run-steps"') < html.index('<details class="run-report">')  # steps, then report
    live = staff.get(reverse("admin:migration_jobs_migrationrun_live", args=[run.pk])).json()
    assert live["live"] is True and live["progress_percent"] == 50.0 and live["state"].startswith("held")
    # The buttons work: cut over releases the hold, cancel asks the worker (none: rolled back here).
    control = reverse("admin:migration_jobs_migrationrun_control", args=[run.pk])
    assert staff.post(control, {"op": "cut_over"}).status_code == 302
    run.refresh_from_db()
    assert run.hold_cutover is False
    response = staff.post(control, {"op": "cancel"})
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED, run.error
    html = staff.get(page_url).content.decode()
    assert 'id="run-state">cancelled<' in html and 'name="op" value="cancel"' not in html
    assert staff.get(reverse("admin:migration_jobs_migrationrun_live", args=[run.pk])).json()["live"] is False


def test_admin_pages_have_a_favicon(staff):
    assert '<link rel="icon" href="data:,">' in staff.get(TENANTS).content.decode()
