"""Regressions found by clicking through the admin in Chromium (no task cluster here: runs stay
queued, plans never move a tenant; each test takes a few seconds):

- the run history's action bar was missing (the run page's button fragment is named like
  Django's admin/<app>/<model>/actions.html, so it replaced the bar) and actions.js failed;
- a double click on a confirmation page's "Yes" posted the move twice and showed the second
  answer, "refused: ... already has an active run", for a move that had started;
- a double click on a run page's button did the same ("not cancelled: ...");
- messages capitalised the slug they start with ("Acme: ...");
- the plan page's buttons were forms nested in the admin's form: Start posted to the change
  view (403); the plan form had none of the admin's form styles."""
import re

import pytest
from playwright.sync_api import expect

from fleet.models import MovePlan
from migration_jobs import services
from migration_jobs.models import MigrationRun
from tests.browser.conftest import shot
from tests.browser.test_admin_browser import run_action, small_tenants

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = "/admin/migration_jobs/migrationrun/"


def double_click(page, selector: str) -> None:
    """Two clicks 150 ms apart, the second while the first's request is on its way (a user's
    double click on a slow page). The page that comes back is the last answer: the expectations
    that follow wait for it."""
    page.evaluate("""(selector) => { const b = document.querySelector(selector);
                                     b.click(); setTimeout(() => b.click(), 150); }""", selector)
    page.wait_for_timeout(1000)
    page.wait_for_load_state()


def test_double_clicks_start_and_cancel_one_run(admin_login, make_tenant, cleanup, live_server):
    (acme,) = small_tenants(make_tenant, cleanup, "acme")
    page = admin_login()

    run_action(page, live_server, acme, "move_to_database")
    page.uncheck("#id_online")
    expect(page.locator("#id_hold_cutover")).to_be_disabled()  # holding means nothing offline
    double_click(page, "form input[type=submit]")
    expect(page.locator(".messagelist")).to_contain_text(re.compile(r"^\s*acme: run \d+ \(shared → database\) queued"))
    expect(page.locator(".messagelist li.error")).to_have_count(0)
    assert MigrationRun.objects.filter(tenant=acme).count() == 1
    run = MigrationRun.objects.get(tenant=acme)

    page.goto(f"{live_server.url}{RUNS}{run.pk}/change/")
    double_click(page, "#run-actions button[value=cancel]")
    expect(page.locator(".messagelist")).to_contain_text(f"run {run.pk}: cancelled")
    expect(page.locator(".messagelist li.error")).to_have_count(0)
    shot(page, "20-double-click-cancel")
    assert page.errors == []


def test_run_history_has_its_action_bar(admin_login, make_tenant, cleanup, live_server):
    (acme,) = small_tenants(make_tenant, cleanup, "acme")
    run = services.request_move(acme, "schema")  # queued (no cluster)
    page = admin_login()
    page.goto(f"{live_server.url}{RUNS}")
    expect(page.locator("select[name=action] option[value=cancel_runs]")).to_have_count(1)
    page.check(f"input[name=_selected_action][value='{run.pk}']")
    expect(page.locator(".action-counter")).to_contain_text("1 of 1 selected")  # actions.js at work
    page.select_option("select[name=action]", "cancel_runs")
    with page.expect_navigation():
        page.click("button[name=index]")
    expect(page.locator("h1")).to_have_text("Cancel runs")
    with page.expect_navigation():
        page.click("form input[type=submit]")
    expect(page.locator(".messagelist")).to_contain_text(f"run {run.pk}: cancelled")
    shot(page, "21-run-history-cancelled")
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert page.errors == []


def test_plan_page_buttons_start_pause_cancel(admin_login, make_tenant, cleanup, live_server):
    acme, beta = small_tenants(make_tenant, cleanup, "acme", "beta")
    page = admin_login()
    page.goto(f"{live_server.url}/admin/fleet/moveplan/add/?tenants={acme.pk},{beta.pk}")
    # The admin's form styles: labels in a column of their own.
    expect(page.locator("link[href$='admin/css/forms.css']")).to_have_count(1)
    with page.expect_navigation():
        page.click("input[name=_save]")
    plan = MovePlan.objects.get()
    expect(page.locator("#plan-state")).to_contain_text("draft")

    for label, status in (("Start", "running"), ("Pause", "paused"), ("Cancel", "cancel")):
        with page.expect_navigation() as nav:
            page.locator("#plan-actions button", has_text=label).click()
        assert nav.value.status == 200, f"{label}: {nav.value.status}"
        expect(page.locator("ul.selected-objects")).to_contain_text(plan.name)  # the confirmation page
        with page.expect_navigation():
            page.click("form input[type=submit]")
        page.wait_for_url(re.compile(rf"/admin/fleet/moveplan/{plan.pk}/change/"))
        expect(page.locator(".messagelist")).to_contain_text(f"plan {plan.pk}: {label.lower()} done")
        expect(page.locator("#plan-state")).to_contain_text(status)
    shot(page, "22-plan-cancelled")
    expect(page.locator("#plan-actions button")).to_have_count(0)
    assert page.errors == []


def test_a_rolled_back_run_says_why_at_the_top(admin_login, make_tenant, cleanup, live_server):
    """The reason a run failed is in its header, not only in the record at the bottom."""
    acme, beta = small_tenants(make_tenant, cleanup, "acme", "beta")
    failed = services.request_move(acme, "schema")
    MigrationRun.objects.filter(pk=failed.pk).update(status="rolled_back",
                                                     error='create_tables: relation "shop_customer" already exists')
    cancelled = services.cancel(services.request_move(beta, "schema"))
    page = admin_login()
    page.goto(f"{live_server.url}{RUNS}{failed.pk}/change/")
    expect(page.locator("#run-header #run-error")).to_contain_text('relation "shop_customer" already exists')
    page.goto(f"{live_server.url}{RUNS}{cancelled.pk}/change/")
    expect(page.locator("#run-header")).to_have_attribute("data-status", "cancelled")
    expect(page.locator("#run-error")).to_have_count(0)  # cancelled on request: not an error
    assert page.errors == []


def test_yes_skips_the_tenants_the_confirmation_refused(admin_login, make_tenant, cleanup, place_tenant, live_server):
    """A selection where one tenant cannot take the action: the confirmation lists it apart as
    skipped, and "Yes" does not send it again only to report it refused, in red, afterwards."""
    acme, beta = small_tenants(make_tenant, cleanup, "acme", "beta")
    place_tenant(acme, "schema")
    page = admin_login()
    page.goto(f"{live_server.url}/admin/tenancy/tenant/")
    for tenant in (acme, beta):
        page.check(f"input[name=_selected_action][value='{tenant.pk}']")
    page.select_option("select[name=action]", "move_back_to_shared")
    with page.expect_navigation():
        page.click("button[name=index]")
    expect(page.locator("ul.refused-objects")).to_contain_text("beta")
    confirm_page_options = page.locator("#id_online")
    expect(confirm_page_options).to_be_checked()
    with page.expect_navigation():
        page.click("form input[type=submit]")
    expect(page.locator(".messagelist li")).to_have_count(1)
    expect(page.locator(".messagelist li.error")).to_have_count(0)
    expect(page.locator(".messagelist")).to_contain_text("acme: run")
    assert MigrationRun.objects.filter(tenant=acme).count() == 1

    # Nothing that can take the action: no options to set, only the way back.
    run_action(page, live_server, beta, "move_back_to_shared")
    expect(page.locator("ul.refused-objects")).to_contain_text("beta")
    expect(page.locator("#id_online")).to_have_count(0)
    expect(page.locator("form input[type=submit]")).to_have_count(0)
    assert page.errors == []


def test_an_interrupted_run_says_its_worker_is_gone(admin_login, make_tenant, cleanup, live_server):
    """A run left running with no worker holding it (a crashed or stopped cluster): its header
    still shows its status, "running", so the page says why it offers Resume and Roll back."""
    (acme,) = small_tenants(make_tenant, cleanup, "acme")
    run = services.request_move(acme, "schema")
    MigrationRun.objects.filter(pk=run.pk).update(status="running", current_step="copy")
    page = admin_login()
    page.goto(f"{live_server.url}{RUNS}{run.pk}/change/")
    expect(page.locator("#run-actions button[value=resume]")).to_be_visible()
    expect(page.locator("#run-interrupted")).to_contain_text("No worker is executing this run any more")
    expect(page.locator("#run-interrupted")).to_contain_text("copy")
    shot(page, "23-interrupted-run")
    assert page.errors == []
