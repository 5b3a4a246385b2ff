"""Every HTTP entry point probed as an attacker would: the URL resolver's whole list (admin
changelists, change / add / delete / history pages, custom admin views, every /api/ route,
/metrics, the /shop/ demo) hit anonymously, as a staff user without permissions, as a
superuser and with API tokens that may not (no permission, read-only scope, revoked,
expired), with odd values in every path segment, query parameter, form field and JSON field.

Expected everywhere: never a 5xx nor a stack trace (a 4xx with a clear message instead), the
documented 401 / 403 / login redirect for whoever may not, nothing changed by a refused call,
and no secret (Django's key, the encryption key, the database password, a token, a stored
tenant or server password) in any body or header. Each test loops over its list and fails
once, naming every offending request."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.admin.sites import site
from django.test import Client
from django.urls import URLResolver, get_resolver
from django.utils import timezone

from api.models import ApiCall, ApiToken
from fleet.models import MovePlan
from migration_jobs.models import MigrationRun, MigrationStep
from tenancy.models import DatabaseCredential, Placement, Tenant, tenant_host
from tenancy.servers import ensure_default_server
from tests.helpers import make_token, staff_user

pytestmark = pytest.mark.django_db(transaction=True)

# Stored in names, errors and messages the pages show: never rendered as markup.
MARKUP = '<img src=x onerror=alert(1)>'
CREDENTIAL_PASSWORD = "probe-cred-Zq81x"
SERVER_PASSWORD = "probe-srv-Kw52y"
# Odd values for a path segment (percent-encoded as a client would send them).
ODD_SEGMENTS = ["%00", "-1", "99999999999999999999", "abc", "%D9%A1%D9%A2", "..%2F..%2Fetc%2Fpasswd",
                "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "1'%20OR%20'1'='1", "%F0%9F%92%A9", "x" * 300]
# Odd query strings for every changelist (filters, search, order, page, date drill-down).
ODD_QUERIES = ["q=%00", "q=%3Cscript%3E", "o=abc", "o=99999999999999999999", "p=-1", "p=abc", "status=%00",
               "status__exact=%00", "x%00=1", "created_at__year=99999999999", "created_at__year=10000",
               "created_at__year=2026&created_at__month=99999999999999", "id__in=1,abc", "id__gt=99999999999999999999",
               "slug__regex=(", "_to_field=password", "e=1", "q=" + "x" * 3000]


def walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern), pattern.callback


def url_of(pattern: str, ids: dict, value: str | None = None) -> str:
    """The pattern with every parameter filled: the real id of its object, or `value`."""
    def fill(match):
        return value if value is not None else str(ids.get(match.group(1), 1))

    path = re.sub(r"<(?:\w+:)?(\w+)>", fill, pattern)
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: value or ("tenancy" if m.group(1) == "app_label" else "nowhere"),
                  path)
    return "/" + path.replace("^", "").replace("$", "")


def model_of(pattern: str) -> str | None:
    """"app/model" of an admin model URL, None for others."""
    parts = pattern.split("/")
    models = {f"{m._meta.app_label}/{m._meta.model_name}" for m in site._registry}
    name = "/".join(parts[1:3])
    return name if pattern.startswith("admin/") and name in models else None


@pytest.fixture
def world(make_tenant):
    shared = make_tenant("probe_shared", name=MARKUP)
    placed = make_tenant("probe_db")
    server = ensure_default_server()
    credential = DatabaseCredential(tenant=placed, server=server, database="probe_nowhere_db", role="probe_role")
    credential.set_password(CREDENTIAL_PASSWORD)
    credential.save()
    Tenant.objects.filter(pk=placed.pk).update(placement=Placement.DATABASE)
    other = type(server).objects.create(name="probe_srv", host="127.0.0.1", port=1, admin_user="nobody")
    other.set_admin_password(SERVER_PASSWORD)
    other.save()
    run = MigrationRun.objects.create(tenant=shared, kind="move", source_placement="shared", target_placement="schema",
                                      status="failed", error=MARKUP, current_step=MARKUP, report={MARKUP: MARKUP})
    MigrationStep.objects.create(run=run, name="preflight", order=1, status="failed", message=MARKUP,
                                 details={MARKUP: MARKUP})
    plan = MovePlan.objects.create(name=MARKUP, target="schema", error=MARKUP)
    boss = staff_user("boss", superuser=True)
    nobody = staff_user("nobody")
    tokens = {"boss": make_token(boss, "boss"), "nobody": make_token(nobody, "nobody"),
              "read": make_token(boss, "read", scope="read"), "revoked": make_token(boss, "revoked", revoked=True),
              "expired": make_token(boss, "expired", expires_at=timezone.now() - timedelta(minutes=1))}
    token = ApiToken.objects.get(name="boss")
    ApiCall.objects.create(token=token, user=boss, method="GET", path="/api/x", status_code=200, duration_ms=1)
    ids = {"run_id": run.pk, "plan_id": plan.pk, "token_id": token.pk, "tenant_id": shared.pk, "pk": 1,
           "id": boss.pk, "content_type_id": 1, "object_id": 1}
    objects = {"tenancy/tenant": shared.pk, "tenancy/databaseserver": other.pk,
               "tenancy/databasecredential": credential.pk, "migration_jobs/migrationrun": run.pk,
               "fleet/moveplan": plan.pk, "api/apitoken": token.pk, "api/apicall": ApiCall.objects.get().pk,
               "auth/user": boss.pk}
    secrets = [settings.SECRET_KEY, settings.TENANT_ENCRYPTION_KEY, settings.DATABASES["default"].get("PASSWORD"),
               CREDENTIAL_PASSWORD, SERVER_PASSWORD, *tokens.values()]
    return {"shared": shared, "run": run, "plan": plan, "boss": boss, "nobody": nobody, "tokens": tokens, "ids": ids,
            "objects": objects, "secrets": [s for s in secrets if s and len(s) >= 8]}


def state():
    """What a refused call must leave as it was."""
    return (sorted(Tenant.objects.values_list("pk", "slug", "name", "placement", "status", "settings")),
            sorted(MigrationRun.objects.values_list("pk", "status", "cancel_requested", "read_percent")),
            sorted(MovePlan.objects.values_list("pk", "status")),
            sorted(ApiToken.objects.values_list("pk", "revoked")))


class Prober:
    """Sends requests and collects every answer that breaks the rules, for one failure at the end."""

    def __init__(self, world):
        self.world, self.bad = world, []

    def client(self, user=None, token=None, host=None):
        headers = {"Authorization": f"Bearer {self.world['tokens'][token]}"} if token else {}
        client = Client(raise_request_exception=False, headers=headers, **({"HTTP_HOST": host} if host else {}))
        if user:
            client.force_login(self.world[user])
        return client

    def send(self, client, who, method, url, **kwargs):
        response = getattr(client, method)(url, **kwargs)
        where = f"{who} {method.upper()} {url[:160]}"
        body = b"" if getattr(response, "streaming", False) else response.content
        if response.status_code >= 500:
            self.bad.append(f"{where} -> {response.status_code} {body[:120]!r}")
        if b"Traceback" in body or b"Exception Value" in body:
            self.bad.append(f"{where} -> a stack trace in the page")
        text = body.decode("utf-8", "replace") + " ".join(f"{k}: {v}" for k, v in response.items())
        if response.get("Content-Type", "").startswith("text/html") and MARKUP in text:
            self.bad.append(f"{where} -> stored text rendered as markup (not escaped)")
        for secret in self.world["secrets"]:
            if secret in text and not (who.startswith("token") and secret == self.world["tokens"].get(who[6:])):
                self.bad.append(f"{where} -> a secret ({secret[:3]}...) in the answer")
        return response

    def expect(self, response, allowed, what):
        if response.status_code not in allowed:
            self.bad.append(f"{what} -> {response.status_code}, expected {sorted(allowed)} {response.content[:120]!r}")

    def check(self):
        assert not self.bad, f"{len(self.bad)} bad answers:\n" + "\n".join(self.bad)


def test_every_url_with_every_kind_of_caller_and_odd_path_values(world):
    probe = Prober(world)
    anon, nobody, boss = probe.client(), probe.client("nobody"), probe.client("boss")
    patterns = [(p, cb) for p, cb in walk(get_resolver().url_patterns) if not p.startswith("admin/logout")]
    for pattern, callback in patterns:
        url = url_of(pattern, {**world["ids"], "object_id": world["objects"].get(model_of(pattern) or "", 1)})
        is_api = pattern.startswith(("api/", "metrics")) and getattr(callback, "api_methods", None) is not None
        public_api = is_api and pattern == "api/openapi.json"
        for method in ("get", "post"):
            before = state()
            response = probe.send(anon, "anon", method, url)
            if pattern.startswith("admin/") and "login" not in pattern:
                probe.expect(response, {302, 405} if method == "post" or "password_change" in pattern or
                             pattern.startswith("admin/(?P") else {302}, f"anon {method} {url}")
                if response.status_code == 302 and "/admin/login/" not in response["Location"]:
                    probe.bad.append(f"anon {method} {url} redirected to {response['Location']}, not the login")
            elif is_api and not public_api:
                probe.expect(response, {401}, f"anon {method} {url}")
            response = probe.send(nobody, "nobody", method, url)
            if is_api and not public_api:  # a session is no token: the csrf-exempt API never takes one
                probe.expect(response, {401}, f"session {method} {url}")
            model = model_of(pattern)
            if model and response.status_code == 200:
                probe.bad.append(f"staff without permissions {method} {url} -> 200")
            if state() != before:
                probe.bad.append(f"{method} {url} by a caller who may not changed something")
            if method == "get":
                probe.send(boss, "boss", method, url)
        for value in ODD_SEGMENTS:
            odd = url_of(pattern, {}, value)
            if odd != url:
                for method in ("get", "post"):
                    probe.send(boss, "boss", method, odd)
                if is_api:
                    probe.send(probe.client(token="boss"), "token boss", "get", odd)
    probe.check()


def test_every_api_route_refuses_tokens_that_may_not(world):
    probe = Prober(world)
    routes = [(p, cb) for p, cb in walk(get_resolver().url_patterns)
              if getattr(cb, "api_methods", None) is not None and p != "api/openapi.json"]
    assert any(p == "metrics" for p, _ in routes) and len(routes) > 15
    expected = {"revoked": 403, "expired": 401}
    for pattern, callback in routes:
        url = url_of(pattern, world["ids"])
        for method in callback.api_methods:
            perms = callback.api_permissions[method]
            for who in ("nobody", "read", "revoked", "expired"):
                before = state()
                response = probe.send(probe.client(token=who), f"token {who}", method.lower(), url,
                                      **({"data": "{}", "content_type": "application/json"} if method != "GET" else {}))
                if who in expected:
                    want = expected[who]
                elif not perms:  # the JSON 404 of an unknown route
                    want = 404
                elif who == "nobody" or method not in ("GET", "HEAD"):
                    want = 403
                else:
                    continue  # a read token reading: allowed
                probe.expect(response, {want}, f"token {who} {method} {url}")
                if response["Content-Type"] != "application/json" or not response.json().get("error"):
                    probe.bad.append(f"token {who} {method} {url}: the refusal is not a JSON error")
                if state() != before:
                    probe.bad.append(f"token {who} {method} {url}: a refused call changed something")
        # Authorization headers that are no token (a NUL in the prefix reached PostgreSQL: a 500).
        for header in ("Bearer tmt_a\x00b_c", "Bearer tmt_" + "a" * 3000 + "_x", "Bearer tmt__", "Basic YTpi",
                       "Bearer \u00e9", "Bearer", "Bearer tmt_%s_x" % ApiToken.objects.first().prefix):
            response = probe.send(Client(raise_request_exception=False, headers={"Authorization": header}),
                                  "odd header", "get", url)
            probe.expect(response, {401}, f"Authorization {header[:20]!r} GET {url}")
    probe.check()


BIG = "1" + "0" * 5000
ODD_JSON = ['{"a":1,"a":2}', "[]", '"x"', "{", "\x00", '{"name": ' + BIG + "}", '{"settings": {"x": NaN}}',
            '{"settings": {"x": Infinity}}', '{"settings": {"x": -1e999}}', '{"name": 1}', '{"name": null}',
            '{"name": "' + "x" * 5000 + '"}', '{"name": "<script>alert(1)</script>"}', '{"placement": "../../etc"}',
            '{"placement": "database", "server": "x\\u0000"}', '{"to": 1}', '{"to": "schema", "dry_run": NaN}',
            '{"to": "database", "server": "' + "y" * 5000 + '"}', '{"tenants": [{}], "to": "schema"}',
            '{"tenants": ["probe_shared"], "to": "schema", "max_parallel": 99999999999999999999}',
            '{"tenants": ["probe_shared"], "to": "schema", "max_parallel": "99999999999999999999", "dry_run": true}',
            '{"tenants": ["probe_shared"], "to": "schema", "max_parallel": 2147483648}',
            '{"tenants": ["probe_shared"], "to": "schema", "window_start": "9999-12-31T23:59:59-14:00"}',
            '{"tenants": ["probe_shared"], "to": "schema", "name": "' + "n" * 5000 + '"}']


def test_odd_json_bodies_and_content_types_are_a_json_4xx(world):
    probe = Prober(world)
    api = probe.client(token="boss")
    t, run, plan = world["shared"].pk, world["run"].pk, world["plan"].pk
    writes = [("patch", f"/api/admin/tenants/{t}"), ("post", f"/api/admin/tenants/{t}/migrations"),
              ("post", "/api/admin/plans"), ("post", f"/api/admin/plans/{plan}/pause"),
              ("post", f"/api/admin/migrations/{run}/cancel"), ("post", "/api/admin/tenants/restore")]
    for method, url in writes:
        bodies = [(b, "application/json") for b in ODD_JSON]
        bodies += [("\x00\xff --zzz\r\n", ct) for ct in ("text/plain", "application/x-www-form-urlencoded",
                                                       "multipart/form-data", "multipart/form-data; boundary=zzz",
                                                       "application/x-tar", "application/json; charset=utf-16")]
        for body, content_type in bodies:
            before = state()
            response = probe.send(api, "token boss", method, url, data=body, content_type=content_type)
            if response.status_code >= 400 and response["Content-Type"] != "application/json":
                probe.bad.append(f"{method} {url} {body[:40]!r}: a {response.status_code} that is not JSON")
            if 400 <= response.status_code < 500 and state() != before:
                probe.bad.append(f"{method} {url} {body[:40]!r}: refused ({response.status_code}) but changed "
                                 "something")
    for query in ("exact=abc", "all=%00", "exact=" + "1" * 3000):
        probe.send(api, "token boss", "get", f"/api/admin/candidates?{query}")
    probe.check()


def test_admin_lists_filters_actions_and_forms_with_odd_input(world):
    probe = Prober(world)
    boss, nobody = probe.client("boss"), probe.client("nobody")
    t = world["shared"]
    changelists = {}
    for model, model_admin in site._registry.items():
        url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        changelists[url] = model_admin
        for query in ODD_QUERIES:
            response = probe.send(boss, "boss", "get", f"{url}?{query}")
            if "%00" in query:
                probe.expect(response, {400}, f"boss GET {url}?{query}")
    # Every action of every list, with ids that cannot be, by a superuser and by a user without permissions.
    for url, model_admin in changelists.items():
        for action in [*model_admin.actions, "delete_selected", "no_such_action"]:
            name = action if isinstance(action, str) else action.__name__
            for selected in ("", "abc", "1.5", "\x00", "99999999999999999999"):
                probe.send(boss, "boss", "post", url, data={"action": name, "_selected_action": selected, "index": "0"})
            before = state()
            target = world["objects"].get("/".join(url.split("/")[2:4]), 1)  # a real object of the list
            probe.send(nobody, "nobody", "post", url, data={"action": name, "_selected_action": target, "confirm": "yes"})
            if state() != before:
                probe.bad.append(f"nobody POST {url} action {name}: changed something")
    # A move to a server whose name PostgreSQL cannot take, refused before anything runs.
    before = state()
    response = probe.send(boss, "boss", "post", "/admin/tenancy/tenant/",
                          data={"action": "move_to_database", "_selected_action": t.pk, "confirm": "yes",
                                "server": "x\x00"})
    probe.expect(response, {400}, "move_to_database with a NUL in the server name")
    if state() != before:
        probe.bad.append("move_to_database with a NUL in the server name changed something")
    # The run page's buttons with ops that are not.
    control = f"/admin/migration_jobs/migrationrun/{world['run'].pk}/control/"
    for op in ("", "\x00", "read_share_99999999999999999999", "read_share_7", "read_share_-1", "x" * 300):
        probe.send(boss, "boss", "post", control, data={"op": op})
    # Tenant settings the jsonb column cannot take are a form error, and an empty field is {}.
    form = {"slug": t.slug, "name": "Probe", "status": "active", "dedicated_reason": "", "dedicated_note": "",
            "domains-TOTAL_FORMS": "0", "domains-INITIAL_FORMS": "0", "domains-MIN_NUM_FORMS": "0",
            "domains-MAX_NUM_FORMS": "1000"}
    change = f"/admin/tenancy/tenant/{t.pk}/change/"
    for value in ['{"x": NaN}', '{"x": Infinity}', "[1e999]", '{"x": ' + BIG + "}", '{"a\\u0000": 1}',
                  '{"x": "\\u0000"}', '"\\ud800"', "not json"]:
        for url, data in ((change, form), ("/admin/tenancy/tenant/add/", {**form, "slug": "probe_new"})):
            before = state()
            response = probe.send(boss, "boss", "post", url, data={**data, "settings": value})
            probe.expect(response, {200}, f"tenant form with settings {value[:30]!r} (the form again, with an error)")
            if state() != before:
                probe.bad.append(f"tenant form with settings {value[:30]!r} changed something")
    response = probe.send(boss, "boss", "post", change, data={**form, "settings": ""})
    probe.expect(response, {302}, "tenant form with empty settings")
    if Tenant.objects.get(pk=t.pk).settings != {}:
        probe.bad.append("empty tenant settings were not saved as {}")
    # A plan with more moves at once than its column holds is a form error.
    plan_form = {"selection": "chosen", "tenants": [t.pk], "target": "schema", "order": "biggest_first",
                 "on_failure": "stop"}
    for value in ("99999999999999999999", "2147483648"):
        for button in ("_preview", "_save"):
            before = state()
            response = probe.send(boss, "boss", "post", "/admin/fleet/moveplan/add/",
                                  data={**plan_form, "max_parallel": value, button: "1"})
            probe.expect(response, {200}, f"plan form max_parallel={value} {button}")
            if state() != before:
                probe.bad.append(f"plan form max_parallel={value} {button} changed something")
    probe.check()


def test_shop_demo_endpoints_with_odd_input(world):
    probe = Prober(world)
    shop = probe.client(host=tenant_host(world["shared"].slug))
    for url in ("/shop/customers/", "/shop/summary/", "/shop/customers/1/", "/shop/customers/99999999999999999999/"):
        for method in ("get", "post", "delete", "patch"):
            probe.send(shop, "anon", method, url)
    for query in ("limit=%00", "limit=-1", "x%00=1", "limit=1.5"):
        response = probe.send(shop, "anon", "get", f"/shop/customers/?{query}")
        probe.expect(response, {400}, f"GET /shop/customers/?{query}")
    probe.send(shop, "anon", "get", "/shop/customers/?limit=99999999999999999999")  # at most 500 rows
    for body in ODD_JSON[:8] + ['{"first_name": "a", "last_name": "b", "email": "\\u0000@x.io"}',
                                '{"first_name": "a\\u0000", "last_name": "b"}', '{"first_name": 1, "last_name": []}']:
        response = probe.send(shop, "anon", "post", "/shop/customers/", data=body, content_type="application/json")
        probe.expect(response, {400}, f"POST /shop/customers/ {body[:40]!r}")
    probe.check()
