"""The admin as staff use it, in a real browser (headless Chromium): log in, move a tenant
online from the tenant list and watch its run page follow the run to the end by itself, drive a
held online move (read switch, cut over), cancel a queued run and a running one, sort every
column of the tenant list. Moves are executed by a real django-q2 cluster (tests/browser/conftest.py).

Screenshots of each key moment land in /tmp/browser-shots/ (BROWSER_SHOTS)."""
import json
import re

import pytest
from playwright.sync_api import expect

from migration_jobs import services
from migration_jobs.engine import provision
from migration_jobs.models import MigrationRun
from tenancy.models import Placement, Status, Tenant, tenant_host
from tenancy.routing import routes
from tests.browser.conftest import shot
from tests.helpers import fill, place_counts, shared_counts

pytestmark = pytest.mark.django_db(transaction=True)

TENANTS = "/admin/tenancy/tenant/"
# A small move takes a few seconds; a cold cluster on a busy 2-core machine, more.
RUN_TIMEOUT = 90_000


def small_tenants(make_tenant, cleanup, *slugs):
    tenants = []
    for n, slug in enumerate(slugs):
        tenant = make_tenant(slug)
        fill(tenant, n=3 + n)
        cleanup(tenant)
        tenants.append(tenant)
    return tenants


def run_action(page, live_server, tenant, action: str):
    """Tick the tenant on the tenant list, pick the action and press Go: the confirmation page."""
    page.goto(f"{live_server.url}{TENANTS}")
    page.check(f"input[name=_selected_action][value='{tenant.pk}']")
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")
    expect(page.locator("body")).to_have_class(re.compile(r"tenant-move-confirmation"))


def confirm(page) -> None:
    """Press "Yes" on a confirmation page: back on the list, with what became of each tenant."""
    with page.expect_navigation():
        page.click("form input[type=submit]")


def open_new_run(page, tenant) -> MigrationRun:
    """After "Yes": the tenant list says which run was made; follow its link to the run page."""
    run = MigrationRun.objects.filter(tenant=tenant).latest("created_at")
    link = page.locator(".messagelist a", has_text=f"run {run.pk}")
    expect(link).to_be_visible()
    link.click()
    page.wait_for_url(re.compile(rf"/admin/migration_jobs/migrationrun/{run.pk}/change/"))
    return run


def wait_for_status(page, status: str, timeout: float = RUN_TIMEOUT) -> None:
    """The run page's header reaches `status` by itself (its live refresh; no reload here)."""
    expect(page.locator("#run-header")).to_have_attribute("data-status", status, timeout=timeout)


def button(page, op: str):
    return page.locator(f"form .run-actions button[name=op][value={op}], .run-actions form button[name=op][value={op}]")


def press(page, op: str) -> None:
    """Press one of the run page's buttons; the page comes back with the outcome as a message."""
    with page.expect_navigation():
        button(page, op).first.click()


def start_held_move(page, live_server, tenant) -> MigrationRun:
    """An online move with a held cutover, from the tenant list; its page, followed by itself
    (no reload here) until the run is held in sync."""
    run_action(page, live_server, tenant, "move_to_schema")
    page.check("#id_hold_cutover")
    confirm(page)
    run = open_new_run(page, tenant)
    expect(page.locator("#run-state")).to_contain_text("waiting for you to cut over", timeout=RUN_TIMEOUT)
    expect(page.locator("#run-header")).to_have_attribute("data-status", "running")
    return run


def check_steps(page, run: MigrationRun) -> None:
    """Where the run page has its steps timeline, each step shows the status it has."""
    run.refresh_from_db()
    timeline = page.locator("#run-steps")
    if timeline.count() == 0:
        return
    for step in run.steps.all():
        expect(timeline.locator(f"[data-step='{step.name}']").first).to_have_attribute("data-status", step.status)


def tenant_site(page, live_server, tenant, path: str) -> str:
    """A URL of the tenant's own site, <slug>.localhost on the live server's port."""
    return f"http://{tenant_host(tenant.slug)}:{live_server.url.rsplit(':', 1)[1]}{path}"


def check_served_from_new_place(page, live_server, tenant, placement: str, customers: int) -> None:
    """The tenant is active in its new placement, and its own users, at <slug>.localhost, read its
    rows and write a new one where it lives now (its old rows in the shared tables are fenced: a
    write there would be refused)."""
    tenant.refresh_from_db()
    assert (tenant.placement, tenant.status) == (placement, Status.ACTIVE)
    routes.clear()  # what NOTIFY does in a process with the listener (the test settings have none)
    response = page.goto(tenant_site(page, live_server, tenant, "/shop/customers/"))
    assert response.status == 200, response.text()
    assert json.loads(response.text())["count"] == customers
    # From the page (same origin): Chromium resolves *.localhost itself, the system resolver may not.
    status, body = page.evaluate("""async () => {
        const r = await fetch("/shop/customers/", {method: "POST", headers: {"Content-Type": "application/json"},
            body: JSON.stringify({first_name: "Ada", last_name: "After", email: "ada@after.test"})});
        return [r.status, await r.text()];
    }""")
    assert status == 201, body
    assert shared_counts(tenant)["shop_customer"] == customers  # the legacy rows, untouched
    assert place_counts(tenant)["shop_customer"] == customers + 1


def test_login_then_move_online_from_the_tenant_list(admin_login, qcluster, make_tenant, cleanup, live_server):
    acme, _ = small_tenants(make_tenant, cleanup, "acme", "beta")
    qcluster.start()
    page = admin_login()
    expect(page.locator("#site-name")).to_contain_text("Tenant moves")

    page.goto(f"{live_server.url}{TENANTS}")
    expect(page.locator("#result_list")).to_contain_text("acme")
    shot(page, "01-tenant-list")

    run_action(page, live_server, acme, "move_to_schema")
    expect(page.locator("#id_online")).to_be_checked()  # online is the default
    expect(page.locator("#id_hold_cutover")).not_to_be_checked()
    expect(page.locator(".selected-objects")).to_contain_text("acme")
    shot(page, "02-confirm-move")
    confirm(page)

    run = open_new_run(page, acme)
    expect(page.locator("#run-header")).to_be_visible()
    shot(page, "03-run-page-live")
    wait_for_status(page, "succeeded")
    expect(page.locator("#run-state")).to_contain_text("succeeded")
    check_steps(page, run)
    shot(page, "04-run-page-success")

    run.refresh_from_db()
    assert run.online and run.requested_via == "admin"
    check_served_from_new_place(page, live_server, acme, Placement.SCHEMA, customers=3)
    assert page.errors == []


def test_held_run_read_switch_then_cut_over(admin_login, qcluster, make_tenant, cleanup, live_server):
    (acme,) = small_tenants(make_tenant, cleanup, "acme")
    qcluster.start()
    page = admin_login()

    run = start_held_move(page, live_server, acme)
    expect(button(page, "cut_over")).to_be_visible()
    shot(page, "05-held-run")

    for percent in (10, 50, 100):
        press(page, f"read_share_{percent}")
        expect(page.locator(".messagelist")).to_contain_text(f"{percent}% of acme's read-only requests")
        expect(button(page, f"read_share_{percent}")).to_be_disabled()  # the share in force
        run.refresh_from_db()
        assert (run.read_percent, run.status, run.hold_cutover) == (percent, "running", True)
    shot(page, "06-held-run-reads-100")

    press(page, "cut_over")
    expect(page.locator(".messagelist")).to_contain_text("cutover released")
    wait_for_status(page, "succeeded")
    check_steps(page, run)
    shot(page, "07-held-run-cut-over")

    check_served_from_new_place(page, live_server, acme, Placement.SCHEMA, customers=3)
    assert page.errors == []


def test_cancel_a_queued_run(admin_login, qcluster, make_tenant, cleanup, live_server):
    """No cluster yet: the run stays queued. Cancelled on its page, it is cancelled at once, and
    when the cluster then takes its task, the task does nothing."""
    (acme,) = small_tenants(make_tenant, cleanup, "acme")
    page = admin_login()
    run_action(page, live_server, acme, "move_to_database")
    confirm(page)
    run = open_new_run(page, acme)
    expect(page.locator("#run-header")).to_have_attribute("data-status", "queued")
    expect(page.locator("#run-state")).to_contain_text("queued")

    press(page, "cancel")
    expect(page.locator("#run-header")).to_have_attribute("data-status", "cancelled")
    expect(button(page, "cancel")).to_have_count(0)
    shot(page, "08-queued-run-cancelled")

    qcluster.start()
    task = qcluster.wait_for_task(f"tenant-move-run-{run.pk}")
    assert task.success, task.result
    run.refresh_from_db()
    acme.refresh_from_db()
    assert run.status == "cancelled" and run.started_at is None
    assert (acme.placement, acme.status) == (Placement.SHARED, Status.ACTIVE)
    page.reload()
    expect(page.locator("#run-state")).to_contain_text("cancelled")
    assert page.errors == []


def test_cancel_a_running_run(admin_login, qcluster, make_tenant, cleanup, live_server):
    """A running (held online) move: cancel asks its worker to stop at the next safe point and
    roll back; the page follows it to "cancelled" and the tenant stays shared and writable."""
    (acme,) = small_tenants(make_tenant, cleanup, "acme")
    qcluster.start()
    page = admin_login()
    run = start_held_move(page, live_server, acme)
    expect(button(page, "cancel")).to_be_visible()

    press(page, "cancel")
    expect(page.locator(".messagelist")).to_contain_text("cancel requested")
    wait_for_status(page, "cancelled")
    shot(page, "09-running-run-cancelled")

    run.refresh_from_db()
    acme.refresh_from_db()
    assert run.status == "cancelled" and run.cancel_requested
    assert (acme.placement, acme.status) == (Placement.SHARED, Status.ACTIVE)
    assert not provision.schema_exists(acme.schema_name)  # the target is dropped
    assert page.errors == []


def test_sort_every_column_of_the_tenant_list(admin_login, make_tenant, cleanup, place_tenant, live_server):
    """Every sortable header, both ways, on a list with a tenant in each placement and one
    with a run: each loads (no error page) and the slug and domain columns come out in order."""
    shared, schema, database, queued = small_tenants(make_tenant, cleanup, "delta", "bravo", "charlie", "alpha")
    place_tenant(schema, Placement.SCHEMA)
    place_tenant(database, Placement.DATABASE)
    services.request_move(queued, Placement.SCHEMA)  # queued, never executed: the "current run" column
    page = admin_login()
    page.goto(f"{live_server.url}{TENANTS}")
    headers = page.locator("#result_list thead th.sortable")
    count = headers.count()
    assert count >= 6, page.locator("#result_list thead").inner_text()
    names = []
    for i in range(count):
        name = page.locator("#result_list thead th.sortable").nth(i).inner_text().strip()
        names.append(name)
        seen = []
        # The header's link makes the column the first sort key (or flips it when it already is);
        # then its toggle flips it: both directions, clicked as a user does.
        for link in (".text a", ".sortoptions a.toggle"):
            with page.expect_navigation() as nav:
                page.locator("#result_list thead th.sortable").nth(i).locator(link).first.click()
            assert nav.value.status == 200, f"sorting by {name}: {nav.value.status}"
            expect(page.locator("#result_list tbody tr")).to_have_count(4)
            header = page.locator("#result_list thead th.sortable").nth(i)
            expect(header).to_have_class(re.compile(r"\bsorted\b"))
            descending = "descending" in header.get_attribute("class").split()
            seen.append(descending)
            if name.lower() in ("slug", "domain"):
                cells = page.locator(f"#result_list tbody .field-{name.lower()}").all_inner_texts()
                assert cells == sorted(cells, reverse=descending), (name, descending, cells)
        assert sorted(seen) == [False, True], f"{name}: not sorted both ways"
    shot(page, "10-tenant-list-sorted")
    assert {"slug", "domain"} <= {n.lower() for n in names}, names
    assert page.errors == []
    assert Tenant.objects.count() == 4
