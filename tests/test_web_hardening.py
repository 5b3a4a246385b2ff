"""Issue 10, the web part: no secret on an error page (finding 1), production defaults, a
bounded host cache that sees new domains at once (9), 400s for bad input on the tenant
pages (10), a short 400 for a bad Host (11), staff paths never tenant-gated (13)."""
import json
import os
import shutil
import subprocess
import sys
from html import escape
from urllib.parse import quote

import psycopg
import pytest
from django.conf import settings
from django.test import Client
from psycopg import sql

from tenancy.models import tenant_host

pytestmark = pytest.mark.django_db


def _forms(secret: str) -> list[str]:
    return [secret, escape(secret), quote(secret, safe=""), repr(secret)[1:-1]]


def _assert_hidden(body: str, *secrets: str) -> None:
    for secret in secrets:
        for form in _forms(secret):
            assert form not in body


@pytest.fixture
def unreachable_tenant(make_tenant, place_tenant, server_conninfo):
    """A database-placed tenant whose dedicated database refuses every connection."""
    tenant = place_tenant(make_tenant("leaky"), "database")
    tenant.refresh_from_db()
    with psycopg.connect(**server_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 0").format(sql.Identifier(tenant.database_name)))
    yield tenant
    with psycopg.connect(**server_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT -1").format(sql.Identifier(tenant.database_name)))


# --- finding 1: secrets on error pages ----------------------------------------------------

def test_debug_page_of_an_unreachable_tenant_database_shows_no_password(settings, unreachable_tenant):
    settings.DEBUG = True
    password = unreachable_tenant.credential.password()
    client = Client(raise_request_exception=False)
    for accept in ("text/html", "text/plain"):
        response = client.get("/shop/summary/", HTTP_HOST=tenant_host("leaky"), HTTP_ACCEPT=accept)
        body = response.content.decode()
        assert response.status_code == 500
        assert "OperationalError" in body  # it is the debug page, with the frames' variables
        _assert_hidden(body, password, settings.SECRET_KEY, settings.TENANT_ENCRYPTION_KEY)


def test_without_debug_the_500_is_plain(settings, unreachable_tenant):
    settings.DEBUG = False
    password = unreachable_tenant.credential.password()
    response = Client(raise_request_exception=False).get("/shop/summary/", HTTP_HOST=tenant_host("leaky"))
    body = response.content.decode()
    assert response.status_code == 500
    assert "Traceback" not in body and "OperationalError" not in body and len(body) < 2000
    _assert_hidden(body, password)


def test_reports_redact_stored_secrets_in_messages_locals_and_request_data(settings, rf):
    """Any known secret, wherever: an exception message, a dict local, a string local, POST data."""
    import sys as _sys

    from django.views.debug import get_exception_reporter_class

    from tenancy.error_reporting import RedactingFormatter, forget_cached_secrets
    from tenancy.models import DatabaseServer

    server = DatabaseServer(name="elsewhere", host="db.example", port=5432, admin_user="admin")
    server_password = "server-admin-pw-Zq81"
    server.set_admin_password(server_password)
    server.save()
    forget_cached_secrets()  # read the stored passwords again, with this one
    settings.TENANT_ENCRYPTION_OLD_KEYS = ["ab" * 32]
    token = "tmt_0123456789ab_" + "S" * 43
    secrets = [server_password, settings.SECRET_KEY, settings.TENANT_ENCRYPTION_KEY, "ab" * 32, token]
    request = rf.post("/shop/customers/", {"note": f"pw={server_password}"}, HTTP_AUTHORIZATION=f"Bearer {token}")

    def fail():
        conn = {"host": "db.example", "pw": server_password}  # noqa: F841 - shown in the report
        blob = f"keys {settings.TENANT_ENCRYPTION_KEY} {settings.SECRET_KEY} {'ab' * 32} {token}"  # noqa: F841
        raise RuntimeError(f"could not connect with {server_password!r}")

    try:
        fail()
    except RuntimeError:
        info = _sys.exc_info()
    reporter = get_exception_reporter_class(request)(request, *info)
    html, text = reporter.get_traceback_html(), reporter.get_traceback_text()
    assert "could not connect with" in text and "RuntimeError" in html
    _assert_hidden(html, *secrets)
    _assert_hidden(text, *secrets)

    import logging

    record = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "failed: %s", (server_password,), info)
    _assert_hidden(RedactingFormatter("%(message)s").format(record), *secrets)


# --- production defaults --------------------------------------------------------------------

def test_production_defaults_debug_off_explicit_hosts_and_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS")}
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    code = ("import json, django; django.setup(); from django.conf import settings as s; "
            "print(json.dumps([s.DEBUG, s.ALLOWED_HOSTS, len(s.SECRET_KEY), s.DEFAULT_EXCEPTION_REPORTER_FILTER]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    debug, hosts, key_length, reporter_filter = json.loads(done.stdout.strip().splitlines()[-1])
    assert debug is False and "*" not in hosts and ".localhost" in hosts and key_length >= 40
    assert reporter_filter.endswith("SecretRedactingFilter")


def test_an_env_file_without_a_secret_key_gets_one(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(settings.BASE_DIR / "scripts" / "ensure_env.py", tmp_path / "scripts")
    (tmp_path / ".env").write_text("TENANT_ENCRYPTION_KEY=" + "0" * 64 + "\n")
    subprocess.run([sys.executable, str(tmp_path / "scripts" / "ensure_env.py")], check=True, capture_output=True)
    lines = (tmp_path / ".env").read_text().splitlines()
    assert lines[0] == "TENANT_ENCRYPTION_KEY=" + "0" * 64
    assert [line for line in lines if line.startswith("DJANGO_SECRET_KEY=") and len(line) > 50]


# --- finding 9: host cache ------------------------------------------------------------------

def test_host_cache_stays_within_its_bound(settings, client, make_tenant):
    from tenancy.routing import routes

    settings.TENANT_HOST_CACHE_SIZE = 50
    make_tenant("real")
    routes.clear()
    for i in range(120):
        assert client.get("/shop/summary/", HTTP_HOST=f"h{i}-{'x' * 200}.localhost").status_code == 404
        assert len(routes._by_host) <= 50
    for i in range(5):  # 30 KB host names: no domain is that long, nothing is cached
        assert client.get("/shop/summary/", HTTP_HOST=f"{i}{'y' * 30_000}.localhost").status_code == 404
        assert len(routes._by_host) <= 50
    assert client.get("/shop/summary/", HTTP_HOST=tenant_host("real")).status_code == 200


def test_a_host_asked_before_its_domain_exists_answers_once_it_does(client, make_tenant):
    from tenancy.models import Domain

    tenant = make_tenant("late")
    assert client.get("/shop/summary/", HTTP_HOST="shop.late.localhost").status_code == 404
    Domain.objects.create(domain="shop.late.localhost", tenant=tenant)
    response = client.get("/shop/summary/", HTTP_HOST="shop.late.localhost")
    assert response.status_code == 200 and response.json()["tenant"] == "late"


# --- finding 10: bad input on the tenant pages -----------------------------------------------

@pytest.mark.parametrize("limit", ["abc", "-1", "1.5", "\u0661\u0662", " 3", "99999999999999999999999"])
def test_bad_limit_is_a_400(client, make_tenant, limit):
    make_tenant("pages")
    response = client.get("/shop/customers/", {"limit": limit}, HTTP_HOST=tenant_host("pages"))
    if limit.isascii() and limit.isdigit():
        assert response.status_code == 200  # a huge limit is capped, not an error
    else:
        assert response.status_code == 400 and "limit" in response.json()["error"]


@pytest.mark.parametrize("body", [
    {"first_name": "x" * 81, "last_name": "y"},
    {"first_name": "x", "last_name": "y" * 81},
    {"first_name": "x\x00y", "last_name": "y"},
    {"first_name": "x", "last_name": "y", "email": "not an email"},
    {"first_name": 3, "last_name": "y"},
    {"last_name": "y"},
    ["not", "an", "object"],
])
def test_bad_customer_is_a_400(client, make_tenant, body):
    make_tenant("pages")
    response = client.post("/shop/customers/", json.dumps(body), content_type="application/json",
                           HTTP_HOST=tenant_host("pages"))
    assert response.status_code == 400 and response.json()["error"].startswith("bad customer")


def test_customer_pages_still_work_and_a_duplicate_email_is_a_409(client, make_tenant):
    make_tenant("pages")
    host = tenant_host("pages")
    body = json.dumps({"first_name": "x" * 80, "last_name": "Doe", "email": "ann@example.com"})
    assert client.post("/shop/customers/", body, content_type="application/json", HTTP_HOST=host).status_code == 201
    assert client.post("/shop/customers/", body, content_type="application/json", HTTP_HOST=host).status_code == 409
    assert client.get("/shop/customers/", {"limit": "0"}, HTTP_HOST=host).json()["results"] == []
    assert client.get("/shop/customers/99999999999999999999/", HTTP_HOST=host).status_code == 404


# --- finding 11: a bad Host -------------------------------------------------------------------

@pytest.mark.parametrize("debug", [True, False])
def test_a_bad_host_is_a_short_400_never_a_debug_page(settings, debug):
    settings.DEBUG = debug
    client = Client(raise_request_exception=False)
    for host in ("bad host!", "evil.example.com"):
        page = client.get("/shop/summary/", HTTP_HOST=host, HTTP_ACCEPT="text/html")
        assert page.status_code == 400 and "text/html" not in page["Content-Type"] and len(page.content) < 200
        api = client.get("/api/admin/tenants", HTTP_HOST=host, HTTP_ACCEPT="text/html")
        assert api.status_code == 400 and api["Content-Type"] == "application/json" and "error" in api.json()


# --- finding 13: staff paths on a tenant's host ---------------------------------------------

def test_staff_paths_are_never_tenant_gated(client, make_tenant):
    from tenancy.models import Domain

    tenant = make_tenant("owner_of_localhost", status="suspended")
    Domain.objects.create(domain="localhost", tenant=tenant)
    assert client.get("/shop/summary/", HTTP_HOST="localhost").status_code == 503  # the tenant is gated
    assert client.get("/admin/login/", HTTP_HOST="localhost").status_code == 200
    assert client.get("/api/admin/tenants", HTTP_HOST="localhost").status_code == 401
    assert client.get("/administrator/", HTTP_HOST="localhost").status_code == 503  # a prefix, not a path


def test_reports_redact_the_smtp_and_redis_broker_passwords(settings, rf):
    """Passwords of the e-mail server and of the Redis broker (Q_BROKER_URL, parsed into
    Q_CLUSTER["redis"]) are secrets too, wherever they appear in a report or a log line."""
    import logging
    import sys as _sys

    from django.views.debug import get_exception_reporter_class

    from tenancy.error_reporting import RedactingFormatter, forget_cached_secrets

    settings.EMAIL_HOST_PASSWORD = "smtp-pw-Hq72x"
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "redis": {"host": "redis.example", "password": "redis-pw-Tk39z"}}
    forget_cached_secrets()
    secrets = ["smtp-pw-Hq72x", "redis-pw-Tk39z"]
    try:
        url = "redis://:redis-pw-Tk39z@redis.example:6379/0"  # noqa: F841 - shown in the report
        raise ConnectionError("could not reach redis://:redis-pw-Tk39z@redis.example (smtp-pw-Hq72x)")
    except ConnectionError:
        info = _sys.exc_info()
    reporter = get_exception_reporter_class(rf.get("/"))(rf.get("/"), *info)
    html, text = reporter.get_traceback_html(), reporter.get_traceback_text()
    assert "could not reach" in text
    _assert_hidden(html, *secrets)
    _assert_hidden(text, *secrets)
    record = logging.LogRecord("django_q", logging.ERROR, __file__, 1, "broker: %s", (secrets[1],), info)
    _assert_hidden(RedactingFormatter("%(message)s").format(record), *secrets)
