"""The staff admin through real requests: tenant list, and secrets that never reach a page."""
import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from shop.models import Customer, Employee
from tenancy.models import DatabaseCredential, DatabaseServer, Domain, Placement, Tenant

LOGIN_PASSWORD = "staff-login-Vb52"
SERVER_SECRET = "server-plain-Qx93"
CREDENTIAL_SECRET = "cred-plain-Lm40"


@pytest.fixture
def staff(client, db):
    get_user_model().objects.create_superuser("boss", "boss@example.com", LOGIN_PASSWORD)
    assert client.login(username="boss", password=LOGIN_PASSWORD)
    return client


def make_tenant(slug, placement=Placement.SHARED, customers=0, employees=0):
    tenant = Tenant(slug=slug, name=slug.title(), placement=placement)
    tenant.save()
    now = timezone.now()
    for i in range(customers):
        Customer.unscoped.create(tenant=tenant, first_name="C", last_name=str(i), created_at=now)
    for i in range(employees):
        Employee.unscoped.create(tenant=tenant, full_name=f"E{i}", email=f"e{i}@{slug}.test",
                                 hired_on=now.date(), hourly_rate="20.00")
    return tenant


def cell(html, slug, field):
    """The text of one column in the changelist row of a tenant."""
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S):
        if re.search(rf">{slug}</a>", row):
            match = re.search(rf'<td class="field-{field}[^"]*">(.*?)</td>', row, re.S)
            return match.group(1).strip() if match else None
    raise AssertionError(f"no row for {slug}")


# --- Tenants ------------------------------------------------------------------------------

@pytest.fixture
def seeded(db):
    acme = make_tenant("acme", customers=3, employees=2)
    Domain.objects.create(tenant=acme, domain="acme.localhost")
    make_tenant("bolt")
    cove = make_tenant("cove", Placement.SCHEMA)
    make_tenant("dune", Placement.DATABASE)
    # cove's rows live in its schema (which lacks some shop tables): 4 + 3 rows.
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{cove.schema_name}"')
        for table, rows in (("shop_customer", 4), ("shop_employee", 3)):
            cursor.execute(f'CREATE TABLE "{cove.schema_name}".{table} (id int)')
            cursor.execute(f'INSERT INTO "{cove.schema_name}".{table} SELECT generate_series(1, {rows})')


def test_tenant_changelist_shows_placement_status_rows_and_domain(staff, seeded):
    html = staff.get(reverse("admin:tenancy_tenant_changelist")).content.decode()
    assert cell(html, "acme", "placement") == "Shared database"
    assert cell(html, "acme", "status") == "Active"
    assert cell(html, "acme", "row_count") == "5"
    assert cell(html, "acme", "domain") == "acme.localhost"
    assert cell(html, "bolt", "row_count") == "0"
    assert cell(html, "bolt", "domain") == "—"
    assert cell(html, "cove", "placement") == "Dedicated schema"
    assert cell(html, "cove", "row_count") == "7"
    assert cell(html, "dune", "row_count") == "— (dedicated database)"


def test_tenant_changelist_filters_and_search(staff, seeded):
    url = reverse("admin:tenancy_tenant_changelist")
    html = staff.get(url, {"placement": "schema"}).content.decode()
    assert ">cove</a>" in html and ">acme</a>" not in html
    html = staff.get(url, {"q": "acm"}).content.decode()
    assert ">acme</a>" in html and ">bolt</a>" not in html


def test_tenant_changelist_query_count_does_not_grow_with_tenants(staff, seeded):
    url = reverse("admin:tenancy_tenant_changelist")
    staff.get(url)  # warm up (session, content types)
    with CaptureQueriesContext(connection) as before:
        assert staff.get(url).status_code == 200
    for slug in ("eel", "fox", "gnu"):
        make_tenant(slug, customers=1)
    make_tenant("hen", Placement.SCHEMA)
    with CaptureQueriesContext(connection) as after:
        assert staff.get(url).status_code == 200
    assert len(after) == len(before)


def test_add_tenant_with_domain_through_admin(staff, db):
    response = staff.post(reverse("admin:tenancy_tenant_add"), {
        "slug": "newco", "name": "New Co", "status": "active", "settings": "{}",
        "domains-TOTAL_FORMS": "1", "domains-INITIAL_FORMS": "0",
        "domains-0-domain": "newco.localhost", "domains-0-is_primary": "on", "_save": "Save"})
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant = Tenant.objects.get(slug="newco")
    assert tenant.placement == Placement.SHARED and tenant.schema_name.endswith("newco")
    assert tenant.domains.get().domain == "newco.localhost"
    # Placement is not editable: it changes only through a migration run.
    page = staff.get(reverse("admin:tenancy_tenant_change", args=[tenant.pk])).content.decode()
    assert 'name="placement"' not in page and 'name="slug"' not in page


# --- Servers and credentials: secrets stay out of every page -------------------------------

@pytest.fixture
def server(db):
    server = DatabaseServer(name="east", host="east.db.example", admin_user="postgres")
    server.set_admin_password(SERVER_SECRET)
    server.save()
    return server


def assert_no_secret(html, *secrets):
    for secret in secrets:
        assert secret not in html
        if secret.startswith("v1:"):  # a token: nor its ciphertext part
            assert secret.split(":", 2)[2] not in html
    assert "admin_password_encrypted" not in html and "password_encrypted" not in html


def server_form(server, **changes):
    data = {"name": server.name, "host": server.host, "port": server.port, "admin_user": server.admin_user,
            "maintenance_db": server.maintenance_db, "notes": server.notes, "new_password": "", "_save": "Save"}
    return {**data, **changes}


def test_server_pages_never_show_the_password(staff, server):
    token = server.admin_password_encrypted
    for url in (reverse("admin:tenancy_databaseserver_changelist"),
                reverse("admin:tenancy_databaseserver_change", args=[server.pk])):
        html = staff.get(url).content.decode()
        assert f"set (key {token.split(':')[1]})" in html
        assert_no_secret(html, SERVER_SECRET, token)
    html = staff.get(reverse("admin:tenancy_databaseserver_change", args=[server.pk])).content.decode()
    assert re.search(r'<input type="password" name="new_password"[^>]*>', html)
    assert 'name="new_password" value' not in html


def test_blank_password_keeps_the_stored_one_and_a_new_one_replaces_it(staff, server):
    url = reverse("admin:tenancy_databaseserver_change", args=[server.pk])
    token = server.admin_password_encrypted

    assert staff.post(url, server_form(server, notes="renamed")).status_code == 302
    server.refresh_from_db()
    assert server.notes == "renamed"
    assert server.admin_password_encrypted == token and server.admin_password() == SERVER_SECRET

    # A form that fails validation does not echo the password just typed either.
    response = staff.post(url, server_form(server, port="not-a-port", new_password="typed-Wd11"))
    assert response.status_code == 200 and "typed-Wd11" not in response.content.decode()

    assert staff.post(url, server_form(server, new_password="fresh-Kp66")).status_code == 302
    server.refresh_from_db()
    assert server.admin_password() == "fresh-Kp66"
    assert_no_secret(staff.get(url).content.decode(), "fresh-Kp66", server.admin_password_encrypted)

    assert staff.post(url, server_form(server, clear_password="on")).status_code == 302
    server.refresh_from_db()
    assert server.admin_password_encrypted == ""
    assert "not set" in staff.get(url).content.decode()


def test_add_server_with_password(staff, db):
    response = staff.post(reverse("admin:tenancy_databaseserver_add"), {
        "name": "west", "host": "west.db.example", "port": "5432", "admin_user": "postgres",
        "maintenance_db": "postgres", "notes": "", "new_password": "west-Jj20", "_save": "Save"})
    assert response.status_code == 302
    assert DatabaseServer.objects.get(name="west").admin_password() == "west-Jj20"


def test_credential_pages_are_read_only_and_never_show_the_password(staff, server):
    tenant = make_tenant("vault", Placement.DATABASE)
    credential = DatabaseCredential(tenant=tenant, server=server, database="tenant_vault", role="tenant_vault")
    credential.set_password(CREDENTIAL_SECRET)
    credential.save()
    token = credential.password_encrypted

    for url in (reverse("admin:tenancy_databasecredential_changelist"),
                reverse("admin:tenancy_databasecredential_change", args=[credential.pk])):
        response = staff.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        assert "stored encrypted" in html and "tenant_vault" in html
        assert_no_secret(html, CREDENTIAL_SECRET, token)
    change_url = reverse("admin:tenancy_databasecredential_change", args=[credential.pk])
    assert 'name="role"' not in staff.get(change_url).content.decode()  # a view page, no form fields
    assert staff.get(reverse("admin:tenancy_databasecredential_add")).status_code == 403
    staff.post(change_url, {"role": "hijack"})
    credential.refresh_from_db()
    assert credential.role == "tenant_vault" and credential.password() == CREDENTIAL_SECRET


# --- The demo login -----------------------------------------------------------------------

def test_ensure_demo_admin_prints_a_working_login_and_resets_it(client, db):
    def run():
        out = StringIO()
        call_command("ensure_demo_admin", stdout=out)
        return re.search(r"Admin login: admin / (\S+)", out.getvalue()).group(1)

    first = run()
    assert client.login(username="admin", password=first)
    second = run()
    assert second != first
    assert not client.login(username="admin", password=first)
    assert client.login(username="admin", password=second)
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser and user.is_staff

    out = StringIO()
    call_command("ensure_demo_admin", "--username", "demo", stdout=out)
    assert "Admin login: demo / " in out.getvalue()
