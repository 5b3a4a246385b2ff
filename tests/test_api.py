"""The staff HTTP API driven end to end with the test client: token authentication, export,
suspend/reactivate, PATCH of settings and placement (a migration run, never a field write),
migration runs started and polled, archive upload and restore; every refusal is a JSON error
with the right status and changes nothing; every call is recorded and visible in the admin."""
import io
import json
import tarfile

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from psycopg import sql

from api.models import ApiCall, ApiToken
from migration_jobs.engine.archive_read import validate_archive
from migration_jobs.engine.places import place_of, shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.models import MigrationRun
from tenancy.models import DatabaseServer, Tenant
from tests.helpers import delete_tenant, make_token

pytestmark = pytest.mark.django_db(transaction=True)


# --- helpers and fixtures ------------------------------------------------------------------

def snapshot(place, tenant_id):
    with place.connect() as conn:
        return {t.name: conn.execute(sql.SQL("SELECT {} FROM {} WHERE tenant_id = %s ORDER BY {}").format(
            sql.SQL(", ").join(map(sql.Identifier, t.columns)), place.table(t.name), sql.Identifier(t.pk)),
            (tenant_id,)).fetchall() for t in tenant_tables()}


def tenant_state():
    return sorted(Tenant.objects.values_list("pk", "slug", "name", "placement", "status", "settings"))


@pytest.fixture
def staff():
    # Every permission (tests/test_api_permissions.py covers users with fewer).
    return get_user_model().objects.create_superuser("ops", "ops@example.test", "pw-ops-123")


@pytest.fixture
def token(staff):
    return make_token(staff)


@pytest.fixture
def api(token):
    """A test client that sends the staff token; .json() helpers on top."""
    class Api:
        def __init__(self):
            self.client = Client()
            self.headers = {"Authorization": f"Bearer {token}"}

        def get(self, url, **kw):
            return self.client.get(url, headers=self.headers, **kw)

        def post(self, url, data=None, **kw):
            if data is not None and "content_type" not in kw and not isinstance(data, dict):
                kw["content_type"] = "application/json"
            if isinstance(data, dict) and kw.pop("as_json", True) and "content_type" not in kw:
                return self.client.post(url, json.dumps(data), content_type="application/json",
                                        headers=self.headers, **kw)
            return self.client.post(url, data, headers=self.headers, **kw)

        def patch(self, url, body, content_type="application/json"):
            raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
            return self.client.patch(url, raw, content_type=content_type, headers=self.headers)

    return Api()


@pytest.fixture
def seeded():
    """Three seeded tenants; returns (largest, smallest)."""
    from benchmarks.seeding import seed

    result = seed(tenants=3, largest=2000, seed=5)
    tenants = sorted(result.tenants, key=lambda t: t.total_rows)
    return Tenant.objects.get(slug=tenants[-1].slug), Tenant.objects.get(slug=tenants[0].slug)


def export(api, tenant) -> bytes:
    response = api.get(f"/api/tenants/export?tenantId={tenant.pk}")
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content)


# --- authentication -------------------------------------------------------------------------

@pytest.mark.parametrize("case, status, message", [
    ("missing", 401, "missing API token"),
    ("not bearer", 401, "must be 'Bearer <token>'"),
    ("garbage", 401, "invalid API token"),
    ("wrong secret", 401, "invalid API token"),
    ("revoked", 403, "revoked"),
    ("non-staff", 403, "staff users only"),
    ("inactive", 403, "staff users only"),
])
def test_tokens_are_checked_before_anything_happens(seeded, staff, token, case, status, message):
    tenant, _ = seeded
    users = get_user_model().objects
    header = {
        "missing": lambda: None,
        "not bearer": lambda: f"Token {token}",
        "garbage": lambda: "Bearer nonsense",
        "wrong secret": lambda: f"Bearer {token[:-4]}{'B' if token[-4:] == 'AAAA' else 'A' * 4}",
        "revoked": lambda: f"Bearer {make_token(staff, 'old', revoked=True)}",
        "non-staff": lambda: f"Bearer {make_token(users.create_user('clerk', is_staff=False))}",
        "inactive": lambda: f"Bearer {make_token(users.create_user('gone', is_staff=True, is_active=False))}",
    }[case]()
    before = tenant_state()
    response = Client().post(f"/api/admin/tenants/{tenant.pk}/suspend",
                             headers={"Authorization": header} if header else {})
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert message in response.json()["error"]
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")
    assert tenant_state() == before
    call = ApiCall.objects.get()
    assert (call.method, call.path, call.status_code) == ("POST", f"/api/admin/tenants/{tenant.pk}/suspend", status)
    assert message in call.detail
    stored = ApiToken.objects.values_list("secret_hash", flat=True)
    assert token not in stored and all(len(h) == 64 for h in stored)  # only hashes are stored


def test_last_used_is_recorded_and_unknown_routes_are_json_404(api, staff):
    response = api.get("/api/nowhere")
    assert response.status_code == 404 and response.json()["error"] == "no API route /api/nowhere"
    assert ApiToken.objects.get(user=staff).last_used_at is not None
    assert api.client.get("/api/nowhere").status_code == 401  # no token: 401 before anything else


# --- export -----------------------------------------------------------------------------------

def test_export_streams_a_valid_archive(api, seeded, tmp_path):
    tenant, _ = seeded
    response = api.get(f"/api/tenants/export?tenantId={tenant.pk}")
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/x-tar"
    assert response["Content-Disposition"].startswith(f'attachment; filename="{tenant.slug}-')
    body = b"".join(response.streaming_content)
    import hashlib

    assert hashlib.sha256(body).hexdigest() == response["X-Archive-SHA256"]
    path = tmp_path / "export.tar"
    path.write_bytes(body)
    manifest = validate_archive(path)
    counts = {name: len(rows) for name, rows in snapshot(shared_place(), tenant.pk).items()}
    assert {t["name"]: t["rows"] for t in manifest["tables"]} == counts
    assert int(response["X-Archive-Rows"]) == sum(counts.values())
    call = ApiCall.objects.get()
    assert call.tenant_id == tenant.pk and call.status_code == 200 and "exported" in call.detail


@pytest.mark.parametrize("query, status, message", [
    ("", 400, "missing query parameter tenantId"),
    ("?tenantId=abc", 400, "must be a number"),
    ("?tenantId=987654", 404, "unknown tenant 987654"),
])
def test_export_refuses_bad_tenant_ids(api, query, status, message):
    response = api.get(f"/api/tenants/export{query}")
    assert response.status_code == status and message in response.json()["error"]


# --- status ------------------------------------------------------------------------------------

def test_suspend_and_reactivate(api, seeded):
    tenant, _ = seeded
    response = api.post(f"/api/admin/tenants/{tenant.pk}/suspend")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "suspended" and response.json()["previous_status"] == "active"
    assert Tenant.objects.get(pk=tenant.pk).status == "suspended"
    from tenancy.routing import routes

    assert routes.by_id(tenant.pk).status == "suspended"  # what the middleware answers 503 from
    response = api.post(f"/api/admin/tenants/{tenant.pk}/reactivate")
    assert response.status_code == 200 and response.json()["status"] == "active"
    assert Tenant.objects.get(pk=tenant.pk).status == "active"
    assert api.get(f"/api/admin/tenants/{tenant.pk}/suspend").status_code == 405
    assert api.post("/api/admin/tenants/987654/suspend").status_code == 404
    assert list(ApiCall.objects.order_by("created_at").values_list("status_code", flat=True)) == [200, 200, 405, 404]


# --- PATCH -------------------------------------------------------------------------------------

def test_patch_name_and_settings_merge(api, seeded):
    tenant, _ = seeded
    url = f"/api/admin/tenants/{tenant.pk}"
    response = api.patch(url, {"name": "Acme Repairs Ltd", "settings": {"plan": "gold", "limits": {"users": 5,
                                                                                                  "sites": 2}}})
    assert response.status_code == 200, response.content
    assert response.json()["changed"] == ["name", "settings"]
    response = api.patch(url, {"settings": {"limits": {"sites": None}}})
    tenant.refresh_from_db()
    assert tenant.name == "Acme Repairs Ltd"
    assert tenant.settings["plan"] == "gold" and tenant.settings["limits"] == {"users": 5}
    assert "seed_demo" in tenant.settings  # untouched keys stay
    assert api.get(url).json()["settings"] == tenant.settings
    listed = api.get(f"/api/admin/tenants?slug={tenant.slug}").json()["tenants"]
    assert listed == [{"id": tenant.pk, "slug": tenant.slug, "name": "Acme Repairs Ltd", "placement": "shared",
                       "status": "active"}]
    assert len(api.get("/api/admin/tenants").json()["tenants"]) == 3


@pytest.mark.parametrize("body, status, message", [
    ("{not json", 400, "malformed JSON"),
    ("[1, 2]", 400, "must be an object"),
    ({"placement": "moon"}, 400, "unknown placement 'moon'"),
    ({"colour": "red"}, 400, "unknown fields: colour"),
    ({"name": ""}, 400, "name must be"),
    ({"settings": "gold"}, 400, "settings must be a JSON object"),
    ({"settings": {"database": {"type": "dedicated",
                                "connectionString": "postgresql://user:pass@host/tenant_1"}}},
     400, "settings.database.connectionString is refused"),
    ({"settings": {"smtp": {"password": "hunter2"}}}, 400, "may not hold credentials"),
    ({"name": "Renamed", "placement": "schema", "server": "default"}, 400, "server applies"),
    ('{"name": "' + "x" * 3_000_000 + '"}', 413, "request body too large"),
])
def test_patch_refuses_bad_input_and_changes_nothing(api, seeded, body, status, message):
    tenant, _ = seeded
    before = tenant_state()
    raw = body if isinstance(body, str) else json.dumps(body)
    response = api.patch(f"/api/admin/tenants/{tenant.pk}", raw)
    assert response.status_code == status, response.content
    assert message in response.json()["error"]
    assert "hunter2" not in response.content.decode() and "user:pass" not in response.content.decode()
    assert tenant_state() == before
    assert not MigrationRun.objects.exists()


def test_patch_placement_runs_a_move_and_back(api, seeded, cleanup):
    """The runbook's "update tenant configuration" call: a migration run, never a field write."""
    _, tenant = seeded
    cleanup(tenant)
    before = snapshot(shared_place(), tenant.pk)
    url = f"/api/admin/tenants/{tenant.pk}"
    response = api.patch(url, {"name": "Moved", "settings": {"database": {"type": "dedicated"}}})
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status_url"] == f"/api/admin/migrations/{body['run_id']}" == response["Location"]
    assert body["target"] == "database" and body["changed"] == ["name"]
    report = api.get(body["status_url"]).json()  # Q_CLUSTER sync in tests: the run is done
    assert report["status"] == "succeeded", report["error"]
    assert report["finished"] and [s["status"] for s in report["steps"]] == ["succeeded"] * len(report["steps"])
    tenant.refresh_from_db()
    assert tenant.placement == "database" and tenant.status == "active" and tenant.name == "Moved"
    assert "database" not in tenant.settings  # placement is not a setting
    assert snapshot(place_of(tenant), tenant.pk) == before
    detail = api.get(url).json()
    assert detail["database"] == {"server": "default", "name": tenant.database_name}
    assert tenant.credential.password() not in json.dumps(detail) + json.dumps(report)
    # Back, the runbook's rollback call:
    response = api.patch(url, {"settings": {"database": {"type": "shared"}}})
    assert response.status_code == 202, response.content
    assert api.get(response.json()["status_url"]).json()["status"] == "succeeded"
    tenant.refresh_from_db()
    assert tenant.placement == "shared"
    assert snapshot(shared_place(), tenant.pk) == before
    # The same placement again: nothing to do, no run.
    response = api.patch(url, {"placement": "shared"})
    assert response.status_code == 200 and MigrationRun.objects.filter(tenant=tenant).count() == 2


def test_patch_placement_refused_by_the_service_changes_nothing(api, seeded):
    _, tenant = seeded
    api.post(f"/api/admin/tenants/{tenant.pk}/suspend")
    before = tenant_state()
    response = api.patch(f"/api/admin/tenants/{tenant.pk}", {"name": "X", "placement": "schema"})
    assert response.status_code == 409 and "reactivate it first" in response.json()["error"]
    assert tenant_state() == before  # the name change was rolled back with it
    assert not MigrationRun.objects.exists()


# --- migration runs ------------------------------------------------------------------------

def test_start_a_run_and_poll_it(api, seeded, cleanup):
    _, tenant = seeded
    cleanup(tenant)
    before = snapshot(shared_place(), tenant.pk)
    url = f"/api/admin/tenants/{tenant.pk}/migrations"
    assert api.post(url, {}).status_code == 400
    assert "unknown target 'moon'" in api.post(url, {"to": "moon"}).json()["error"]
    assert api.post(url, {"to": "schema", "server": "default"}).status_code == 400
    assert api.post(url, "{oops").status_code == 400
    assert not MigrationRun.objects.exists()
    response = api.post(url, {"to": "schema"})
    assert response.status_code == 202, response.content
    run_id = response.json()["run_id"]
    report = api.get(f"/api/admin/migrations/{run_id}").json()
    assert report["status"] == "succeeded" and report["target"] == "schema" and report["schema"] == tenant.schema_name
    assert [s["name"] for s in report["steps"]][:2] == ["preflight", "suspend"]
    assert all(t["ok"] for t in report["tables"].values())
    tenant.refresh_from_db()
    assert tenant.placement == "schema"
    assert snapshot(place_of(tenant), tenant.pk) == before
    listed = api.get(url).json()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
    conflict = api.post(url, {"to": "database"})
    assert conflict.status_code == 409 and "already in schema placement" in conflict.json()["error"]
    assert api.get("/api/admin/migrations/987654").status_code == 404
    run = MigrationRun.objects.get(pk=run_id)
    assert run.requested_via == "api" and run.requested_by.username == "ops"
    assert ApiCall.objects.filter(run_id=run_id, tenant_id=tenant.pk).count() >= 2


# --- restore -------------------------------------------------------------------------------

def test_restore_upload_round_trip_and_refusals(api, seeded, cleanup, settings):
    tenant, _ = seeded
    cleanup(tenant)
    archive = export(api, tenant)
    before = snapshot(shared_place(), tenant.pk)
    url = "/api/admin/tenants/restore"

    # Existing rows, tenant active: refused, 409.
    response = api.post(url, {"archive": io.BytesIO(archive)}, as_json=False)
    assert response.status_code == 409 and "--replace" in response.json()["error"]
    assert response.json()["existing_rows"] == sum(map(len, before.values()))

    # The runbook's rollback: suspend, restore over the tenant's rows, reactivate.
    assert api.post(f"/api/admin/tenants/{tenant.pk}/suspend").status_code == 200
    with shared_place().connect() as conn:  # damage the live rows
        conn.execute("DELETE FROM shop_repairstatushistory WHERE tenant_id = %s", (tenant.pk,))
    response = api.post(url, {"archive": io.BytesIO(archive), "replace": "true"}, as_json=False)
    assert response.status_code == 200, response.content
    assert response.json()["rows"] == sum(map(len, before.values())) and not response.json()["created"]
    assert snapshot(shared_place(), tenant.pk) == before
    assert api.post(f"/api/admin/tenants/{tenant.pk}/reactivate").status_code == 200

    # A deleted tenant comes back from its archive, same id, as a new tenant row: 201.
    delete_tenant(tenant)
    response = api.post(url, {"archive": io.BytesIO(archive)}, as_json=False)
    assert response.status_code == 201, response.content
    assert response.json()["tenant_id"] == tenant.pk and response.json()["created"]
    assert snapshot(shared_place(), tenant.pk) == before

    # Raw body, options in the query string: a copy in a fresh schema.
    copy_slug = f"{tenant.slug}_copy"
    response = api.client.post(f"{url}?into=schema&as={copy_slug}", archive, content_type="application/x-tar",
                               headers=api.headers)
    assert response.status_code == 201, response.content
    copy = Tenant.objects.get(slug=copy_slug)
    cleanup(copy)
    assert copy.placement == "schema" and response.json()["tenant_id_rewritten"]
    ApiCall.objects.all().delete()

    # Refusals: each a JSON error, nothing changed.
    state = tenant_state(), snapshot(shared_place(), tenant.pk)
    truncated = archive[: len(archive) // 2]
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames()[-1] == "manifest.json"
    cases = [
        (lambda: api.post(url, {"archive": io.BytesIO(truncated), "as": "other"}, as_json=False), 422, "truncated"),
        (lambda: api.post(url, {"archive": io.BytesIO(b"junk" * 100), "as": "other"}, as_json=False), 422,
         "not a tenant archive"),
        (lambda: api.post(url, {"archive": io.BytesIO(archive), "as": "other", "into": "moon"}, as_json=False), 400,
         "unknown target"),
        (lambda: api.post(url, {"archive": io.BytesIO(archive), "as": "other", "colour": "red"}, as_json=False),
         400, "unknown options: colour"),
        (lambda: api.post(url, {"into": "shared"}, as_json=False), 400, "no archive in the upload"),
        (lambda: api.post(url, {"tenantId": 1}), 415, "send the archive"),
        (lambda: api.post(url, {"archive": io.BytesIO(archive), "as": f"{tenant.slug}_twin", "into": "shared"},
                          as_json=False), 409, "collide with other tenants' rows"),
    ]
    for call, status, message in cases:
        response = call()
        assert response.status_code == status, (message, response.content)
        assert message in response.json()["error"], response.json()
    settings.API_MAX_UPLOAD_BYTES = 1000
    response = api.post(url, {"archive": io.BytesIO(archive), "as": "other"}, as_json=False)
    assert response.status_code == 413 and "larger than the limit of 1000 bytes" in response.json()["error"]
    response = api.client.post(f"{url}?as=other", archive, content_type="application/x-tar", headers=api.headers)
    assert response.status_code == 413
    assert (tenant_state(), snapshot(shared_place(), tenant.pk)) == state
    assert not Tenant.objects.filter(slug__in=["other", f"{tenant.slug}_twin"]).exists()
    assert sorted(ApiCall.objects.values_list("status_code", flat=True)) == sorted(
        [s for _, s, _ in cases] + [413, 413])


# --- the record and the admin -----------------------------------------------------------------

def test_every_call_is_recorded_and_visible_in_the_admin(api, seeded, staff):
    tenant, _ = seeded
    api.post(f"/api/admin/tenants/{tenant.pk}/suspend")
    api.post(f"/api/admin/tenants/{tenant.pk}/reactivate")
    api.patch(f"/api/admin/tenants/{tenant.pk}", "{bad")
    Client().get(f"/api/admin/tenants/{tenant.pk}")
    calls = list(ApiCall.objects.order_by("created_at"))
    assert [(c.method, c.status_code) for c in calls] == [("POST", 200), ("POST", 200), ("PATCH", 400), ("GET", 401)]
    assert all(c.user == staff for c in calls[:3]) and calls[3].user is None
    assert all(c.tenant_id == tenant.pk for c in calls[:3]) and calls[0].detail == "status active -> suspended"
    admin = get_user_model().objects.create_superuser("root", "root@example.test", "pw-root-123")
    browser = Client()
    browser.force_login(admin)
    page = browser.get("/admin/api/apicall/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"/api/admin/tenants/{tenant.pk}/suspend" in html and "/reactivate" in html
    assert "Add API call" not in html  # read-only record
    detail = browser.get(f"/admin/api/apicall/{calls[2].pk}/change/")
    assert detail.status_code == 200 and "malformed JSON" in detail.content.decode()
    assert browser.post(f"/admin/api/apicall/{calls[0].pk}/delete/").status_code == 403


def test_a_token_made_in_the_admin_is_shown_once_and_works(staff, seeded):
    tenant, _ = seeded
    admin = get_user_model().objects.create_superuser("root", "root@example.test", "pw-root-123")
    browser = Client()
    browser.force_login(admin)
    form = browser.get("/admin/api/apitoken/add/")
    assert form.status_code == 200
    assert "root" not in form.context["adminform"].form.fields["user"].queryset.filter(is_staff=False).values_list(
        "username", flat=True)
    response = browser.post("/admin/api/apitoken/add/", {"name": "runbook", "user": staff.pk, "scope": "read"},
                            follow=True)
    assert response.status_code == 200 and response.redirect_chain[0][1] == 302
    plaintext = response.context["token"]
    assert ApiToken.objects.get(name="runbook").created_by == admin
    assert plaintext.startswith("tmt_") and plaintext in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    stored = ApiToken.objects.get(name="runbook")
    assert plaintext not in (stored.secret_hash, stored.prefix) and stored.matches(plaintext)
    listing = browser.get("/admin/api/apitoken/").content.decode()
    change = browser.get(f"/admin/api/apitoken/{stored.pk}/change/").content.decode()
    assert plaintext not in listing and plaintext not in change  # never shown again
    ok = Client().get(f"/api/admin/tenants/{tenant.pk}", headers={"Authorization": f"Bearer {plaintext}"})
    assert ok.status_code == 200 and ok.json()["slug"] == tenant.slug
    browser.post("/admin/api/apitoken/", {"action": "revoke", "_selected_action": [stored.pk]})
    revoked = Client().get(f"/api/admin/tenants/{tenant.pk}", headers={"Authorization": f"Bearer {plaintext}"})
    assert revoked.status_code == 403


def test_a_tenant_database_that_does_not_answer_is_a_503_without_its_address(api, seeded, cleanup):
    """Exporting a tenant whose dedicated server is down: 503 + Retry-After (was a bare 500),
    naming neither the server's address nor any credential."""
    _, tenant = seeded
    cleanup(tenant)
    response = api.patch(f"/api/admin/tenants/{tenant.pk}", {"placement": "database"})
    assert api.get(response.json()["status_url"]).json()["status"] == "succeeded"
    tenant.refresh_from_db()
    credential = tenant.credential
    server = credential.server
    down = DatabaseServer.objects.create(name="down", host="127.0.0.1", port=1, admin_user="x")  # nothing there
    credential.server = down
    credential.save(update_fields=["server"])
    try:
        response = api.get(f"/api/tenants/export?tenantId={tenant.pk}")
    finally:
        credential.server = server
        credential.save(update_fields=["server"])
    assert response.status_code == 503 and response["Retry-After"] == "30", response.status_code
    body = response.content.decode()
    assert "unreachable" in response.json()["error"]
    assert "127.0.0.1" not in body and ":1" not in body and tenant.credential.password() not in body
    assert ApiCall.objects.filter(path="/api/tenants/export").latest("pk").status_code == 503
