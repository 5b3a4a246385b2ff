"""Bad input answered cleanly (issue 10, findings 6, 10, 11, 12, 13): ids are ASCII digits only,
the API answers hostile input with a JSON 4xx (never a 500) and records every call, tenant
settings never hold a credential, and every command answers bad input with one `error:` line
and exit status 2."""
from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import load_command_class
from django.test import Client, override_settings

from api.models import ApiCall, ApiToken
from migration_jobs.models import MigrationRun
from tenancy.models import Tenant
from tests.helpers import rewrite, run_cmd

pytestmark = pytest.mark.django_db(transaction=True)
SEEDED = {"largest": 500, "seed": 5}  # the conftest `seeded` tenant (one archive test)


def cli(capsys, app, name, *args):
    """(exit status, stdout, stderr) of a command run as from the command line (the real
    `error:` line and exit status), in this process and on the test database."""
    command = load_command_class(app, name)
    try:
        command.run_from_argv(["manage.py", name, *args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tenant_with_pk(pk, slug):
    return Tenant.objects.create(pk=pk, slug=slug, name=slug)


def state():
    return (sorted(Tenant.objects.values_list("pk", "slug", "name", "placement", "status", "settings")),
            MigrationRun.objects.count())


@pytest.fixture
def api():
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_superuser("bad", "bad@example.test", "pw-Bad-123")
    token = ApiToken(name="bad", user=user, created_by=user, scope="read-write")
    plaintext = token.issue()
    token.save()
    return Client(headers={"Authorization": f"Bearer {plaintext}"})


# --- finding 6: ids are ASCII digits only ------------------------------------------------------

@pytest.mark.parametrize("app, args, pk", [
    ("migration_jobs", ["migrate_tenant", "١٢", "--to", "schema"], 12),
    ("migration_jobs", ["rollback_tenant", "٣"], 3),
    ("migration_jobs", ["verify_tenant", "²"], 2),
    ("migration_jobs", ["retire_tenant_legacy", "١٢"], 12),
    ("migration_jobs", ["export_tenant", "٣"], 3),
])
def test_non_ascii_digits_are_not_tenant_ids(capsys, app, args, pk):
    tenant_with_pk(pk, f"t{pk}")
    before = state()
    code, _out, err = cli(capsys, app, *args)
    assert code == 2, err
    assert err.strip().splitlines() == [f"error: unknown tenant {args[1]!r}"]
    assert state() == before


def test_ids_in_the_services_are_ascii_digits_only():
    from migration_jobs import services
    from migration_jobs.exceptions import BadRequest, NotFound

    tenant_with_pk(12, "t12")
    for value in ("١٢", "²", "12 ", "+12", "-12", "1_2"):
        with pytest.raises(BadRequest):
            services.tenant_id(value)
        with pytest.raises(NotFound):
            services.get_tenant(value)
    assert services.get_tenant("12").slug == services.get_tenant("t12").slug == "t12"
    with pytest.raises(NotFound):
        services.get_run("²")


# --- finding 10: API 500s from bad input ----------------------------------------------------

def nested(depth):
    return "{\"settings\": " + "{\"a\": " * depth + "1" + "}" * depth + "}"


@pytest.mark.parametrize("case", ["slug NUL", "name NUL", "settings NUL", "settings key NUL", "nested 5000",
                                  "nested 40", "tenantId superscript", "tenantId arabic", "lone surrogate"])
def test_hostile_api_input_is_a_json_4xx(api, case):
    tenant_with_pk(12, "t12")
    t = Tenant.objects.get(pk=12)
    before = state()
    url, body = {
        "slug NUL": ("/api/admin/tenants?slug=x%00y", None),
        "name NUL": (f"/api/admin/tenants/{t.pk}", json.dumps({"name": "a\u0000b"})),
        "settings NUL": (f"/api/admin/tenants/{t.pk}", json.dumps({"settings": {"plan": "x\u0000"}})),
        "settings key NUL": (f"/api/admin/tenants/{t.pk}", json.dumps({"settings": {"p\u0000": 1}})),
        "nested 5000": (f"/api/admin/tenants/{t.pk}", nested(5000)),
        "nested 40": (f"/api/admin/tenants/{t.pk}", nested(40)),
        "tenantId superscript": ("/api/tenants/export?tenantId=%C2%B2", None),
        "tenantId arabic": ("/api/tenants/export?tenantId=%D9%A1%D9%A2", None),
        "lone surrogate": (f"/api/admin/tenants/{t.pk}", '{"name": "a\\ud800b"}'),
    }[case]
    if body is None:
        response = api.get(url)
    else:
        response = api.patch(url, body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json" and response.json()["error"]
    assert state() == before
    assert ApiCall.objects.get().status_code == 400


# --- finding 11: every call is recorded ---------------------------------------------------------

@pytest.mark.parametrize("url", ["/api/admin/tenants/99999999999999999999",
                                 "/api/tenants/export?tenantId=99999999999999999999",
                                 "/api/admin/tenants/99999999999999999999/suspend",
                                 "/api/admin/migrations/99999999999999999999"])
def test_ids_beyond_bigint_are_404_and_recorded(api, url):
    method = api.post if url.endswith("suspend") else api.get
    response = method(url)
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    call = ApiCall.objects.get()
    assert call.status_code == 404 and call.tenant_id is None and call.run_id is None
    assert "99999999999999999999" in call.detail


@override_settings(MIDDLEWARE=["api.middleware.RecordApiCalls", *settings.MIDDLEWARE])
def test_calls_that_never_reach_an_api_view_are_recorded():
    response = Client().get("/api")
    assert response.status_code == 301
    call = ApiCall.objects.get()
    assert (call.path, call.status_code) == ("/api", 301) and "redirected to /api/" in call.detail
    ApiCall.objects.all().delete()
    with override_settings(ALLOWED_HOSTS=["good.example"]):
        response = Client().get("/api/admin/tenants", headers={"host": "evil.example"})
    assert response.status_code == 400
    call = ApiCall.objects.get()
    assert (call.path, call.status_code) == ("/api/admin/tenants", 400)


# --- finding 12: no credential in tenant settings --------------------------------------------

@pytest.mark.parametrize("settings_patch, named", [
    ({"pwd": "x"}, "settings.pwd"),
    ({"password": "x"}, "settings.password"),
    ({"passwd": "x"}, "settings.passwd"),
    ({"secret": "x"}, "settings.secret"),
    ({"token": "x"}, "settings.token"),
    ({"api_key": "x"}, "settings.api_key"),
    ({"apikey": "x"}, "settings.apikey"),
    ({"apiKey": "x"}, "settings.apiKey"),
    ({"private_key": "x"}, "settings.private_key"),
    ({"credentials": {"user": "u"}}, "settings.credentials"),
    ({"connectionString": "Host=x"}, "settings.connectionString"),
    ({"smtp": {"relay": {"authToken": "x"}}}, "settings.smtp.relay.authToken"),
    ({"hooks": [{"db_pwd": "x"}]}, "settings.hooks[0].db_pwd"),
    ({"backup": "postgres://app:s3cret@db.example/x"}, "settings.backup (a URL with a password)"),
    ({"mirrors": ["https://u:p@example.test/"]}, "settings.mirrors[0] (a URL with a password)"),
])
def test_credentials_in_settings_are_refused_naming_the_key(api, settings_patch, named):
    tenant_with_pk(12, "t12")
    before = state()
    response = api.patch("/api/admin/tenants/12", json.dumps({"settings": settings_patch}),
                         content_type="application/json")
    assert response.status_code == 400
    assert named in response.json()["error"] and "may not hold credentials" in response.json()["error"]
    assert "s3cret" not in response.json()["error"]
    assert state() == before


def test_settings_that_only_look_like_credentials_are_kept(api):
    tenant_with_pk(12, "t12")
    harmless = {"max_tokens": 5, "compass": "north", "homepage": "https://example.test/a:b",
                "keyboard": "azerty", "bypass_cache": True}
    response = api.patch("/api/admin/tenants/12", json.dumps({"settings": harmless}), content_type="application/json")
    assert response.status_code == 200, response.content
    assert Tenant.objects.get(pk=12).settings == harmless


# --- finding 13: one error format for every command ------------------------------------------

def test_retire_tenant_legacy_answers_with_one_error_line(capsys):
    tenant_with_pk(12, "t12")
    code, _out, err = cli(capsys, "migration_jobs", "retire_tenant_legacy", "t12")
    assert code == 2 and "CommandError" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tenant t12 lives in the shared tables")
    code, _out, err = cli(capsys, "migration_jobs", "retire_tenant_legacy", "nobody")
    assert (code, err.strip()) == (2, "error: unknown tenant 'nobody'")


@pytest.mark.parametrize("where", ["missing", "folder", "no folder"])
def test_rotate_with_a_bad_path_is_exit_2(capsys, tmp_path, where):
    path = {"missing": tmp_path / "nothing.env", "folder": tmp_path,
            "no folder": tmp_path / "none" / "x.env"}[where]
    code, _out, err = cli(capsys, "tenancy", "rotate_encryption_key", "--generate-into", str(path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Nothing was changed" in lines[0]


def test_rotate_with_a_bad_key_is_one_error_line(capsys):
    from tenancy import crypto
    from tenancy.models import DatabaseServer

    server = DatabaseServer.objects.create(name="bad-key-test", host="localhost", port=1, admin_user="x",
                                           maintenance_db="postgres")
    server.set_admin_password("pw-for-the-key-test")
    server.save()
    with override_settings(TENANT_ENCRYPTION_KEY="not-a-key"):
        code, _out, err = cli(capsys, "tenancy", "rotate_encryption_key")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: TENANT_ENCRYPTION_KEY is malformed"), err
    with override_settings(TENANT_ENCRYPTION_KEY=crypto.generate_key(), TENANT_ENCRYPTION_OLD_KEYS=[]):
        code, _out, err = cli(capsys, "tenancy", "rotate_encryption_key")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Nothing was changed" in lines[0], err
    assert "pw-for-the-key-test" not in err


def test_credentials_in_settings_are_refused_by_the_tenant_admin_form_too(make_tenant):
    tenant = make_tenant("formsecret")
    tenant.settings = {"billing": {"api_key": "sk_live_x"}}
    with pytest.raises(ValidationError) as info:
        tenant.full_clean()
    assert "settings.billing.api_key" in str(info.value) and "sk_live_x" not in str(info.value)


def test_a_restore_refuses_an_archive_whose_new_tenant_settings_hold_a_credential(exported, tmp_path):
    tenant, path, _ = exported
    hostile = rewrite(path, tmp_path / "secret.tar",
                      manifest=lambda m: m["tenant"]["settings"].update(db="postgres://u:hunter2@db/x"))
    code, _, err = run_cmd("restore_tenant", str(hostile), "--as", "copy_with_secret", "--into", "schema")
    assert code == 2 and "tenant.settings.db (a URL with a password)" in err and "hunter2" not in err
    assert not Tenant.objects.filter(slug="copy_with_secret").exists()
