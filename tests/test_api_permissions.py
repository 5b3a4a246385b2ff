"""The API acts through Django's permissions (issue 10, finding 2): every route needs the
permission the same action needs in the admin, held by BOTH the token's user and the staff
user who made the token, within the token's scope and expiry. Tested per route with a user
without permissions, a view-only one and a full one; a refused call changes nothing and is
recorded naming the token's user and creator. Also: the OpenAPI schema covers every route,
and schemathesis fuzzes the API from it (no 500, every error JSON, refusals change nothing)."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import URLPattern, URLResolver
from django.utils import timezone

from api.models import ApiCall, ApiToken
from fleet.models import MovePlan
from migration_jobs.models import MigrationRun
from tenancy.models import Tenant
from tests.helpers import make_token, staff_user

pytestmark = pytest.mark.django_db(transaction=True)

VIEW = ["tenancy.view_tenant", "migration_jobs.view_migrationrun", "fleet.view_moveplan"]
FULL = VIEW + ["tenancy.change_tenant", "tenancy.move_tenant", "tenancy.export_tenant_data",
               "tenancy.restore_tenant_data"]


def call(token, method, url, body=None):
    client = Client()
    kwargs = {"headers": {"Authorization": f"Bearer {token}"}}
    if body is not None:
        kwargs.update(data=json.dumps(body), content_type="application/json")
    return getattr(client, method.lower())(url, **kwargs)


def state():
    return (sorted(Tenant.objects.values_list("pk", "slug", "name", "placement", "status", "settings")),
            MigrationRun.objects.count(), sorted(MovePlan.objects.values_list("pk", "status")))


@pytest.fixture
def tenant(make_tenant):
    return make_tenant("perm_t", name="Perm T")


# (method, url, body, permission-free status for the full user, needs write scope)
def routes(tenant, run):
    t = tenant.pk
    plan = MovePlan.objects.create(name="perm plan", target="schema")
    return [
        ("GET", "/api/admin/candidates", None, 200, False),
        ("GET", "/api/admin/plans", None, 200, False),
        ("GET", f"/api/admin/plans/{plan.pk}", None, 200, False),
        ("POST", "/api/admin/plans", {"tenants": [tenant.slug], "to": "schema", "dry_run": True}, 200, True),
        ("POST", f"/api/admin/plans/{plan.pk}/pause", None, 409, True),  # a draft: refused after the check
        ("POST", f"/api/admin/plans/{plan.pk}/resume", None, 409, True),
        ("POST", f"/api/admin/plans/{plan.pk}/cancel", None, 200, True),
        ("POST", f"/api/admin/plans/{plan.pk}/start", None, 409, True),  # cancelled just above
        ("GET", "/api/admin/tenants", None, 200, False),
        ("GET", f"/api/admin/tenants/{t}", None, 200, False),
        ("GET", f"/api/admin/tenants/{t}/migrations", None, 200, False),
        ("GET", f"/api/admin/migrations/{run.pk}", None, 200, False),
        ("GET", f"/api/tenants/export?tenantId={t}", None, 200, False),
        ("PATCH", f"/api/admin/tenants/{t}", {"name": "Renamed"}, 200, True),
        # Moves refused after the permission check (unknown server, server for a schema move): nothing runs.
        ("PATCH", f"/api/admin/tenants/{t}", {"placement": "database", "server": "nowhere"}, 409, True),
        ("POST", f"/api/admin/tenants/{t}/suspend", None, 200, True),
        ("POST", f"/api/admin/tenants/{t}/reactivate", None, 200, True),
        ("POST", f"/api/admin/tenants/{t}/migrations", {"to": "schema", "server": "nowhere"}, 400, True),
        ("POST", "/api/admin/tenants/restore?check=1", None, 400, True),  # no archive in the upload
    ]


@pytest.fixture
def run(tenant):
    return MigrationRun.objects.create(tenant=tenant, kind="move", source_placement="shared",
                                       target_placement="schema", status="failed")


def test_every_route_needs_its_permission_for_none_view_only_and_full_users(tenant, run):
    none, viewer, full = staff_user("none"), staff_user("viewer", VIEW), staff_user("full", FULL)
    tokens = {"none": make_token(none), "view": make_token(viewer), "full": make_token(full)}
    for method, url, body, full_status, writes in routes(tenant, run):
        for who, token in tokens.items():
            before = state()
            response = call(token, method, url, body)
            assert response["Content-Type"] in ("application/json", "application/x-tar"), (who, method, url)
            allowed = who == "full" or (who == "view" and not writes and "export" not in url)
            if allowed:
                assert response.status_code not in (401, 403), (who, method, url, response.content)
                if who == "full":
                    assert response.status_code == full_status, (who, method, url, response.content)
            else:
                assert response.status_code == 403, (who, method, url, response.content)
                assert "permission denied" in response.json()["error"]
                assert state() == before, (who, method, url)  # a refused call changes nothing
            recorded = ApiCall.objects.order_by("-pk").first()
            assert (recorded.path, recorded.status_code) == (url.split("?")[0], response.status_code)
            assert recorded.user.username == {"none": "none", "view": "viewer", "full": "full"}[who]


def test_a_placement_change_by_patch_needs_the_move_permission(tenant):
    changer = staff_user("changer", ["tenancy.view_tenant", "tenancy.change_tenant"])
    token = make_token(changer)
    before = state()
    response = call(token, "PATCH", f"/api/admin/tenants/{tenant.pk}", {"name": "New", "placement": "schema"})
    assert response.status_code == 403 and "tenancy.move_tenant" in response.json()["error"]
    assert state() == before
    assert call(token, "PATCH", f"/api/admin/tenants/{tenant.pk}", {"name": "New"}).status_code == 200


def test_a_token_never_does_more_than_its_creator(tenant):
    full, viewer = staff_user("full", FULL), staff_user("viewer", VIEW)
    token = make_token(full, created_by=viewer)
    assert call(token, "GET", f"/api/admin/tenants/{tenant.pk}").status_code == 200
    before = state()
    response = call(token, "POST", f"/api/admin/tenants/{tenant.pk}/suspend")
    assert response.status_code == 403
    assert "token's creator 'viewer'" in response.json()["error"] and "tenancy.change_tenant" in response.json()["error"]
    assert state() == before
    recorded = ApiCall.objects.order_by("-pk").first()
    assert (recorded.user, recorded.creator, recorded.status_code) == (full, viewer, 403)
    # A creator made inactive takes the token's powers with them.
    boss = staff_user("boss", superuser=True)
    token = make_token(full, created_by=boss)
    assert call(token, "POST", f"/api/admin/tenants/{tenant.pk}/suspend").status_code == 200
    get_user_model().objects.filter(pk=boss.pk).update(is_active=False)
    assert call(token, "POST", f"/api/admin/tenants/{tenant.pk}/reactivate").status_code == 403


def test_scope_expiry_and_creator_are_enforced(tenant):
    full = staff_user("full", FULL)
    reader = make_token(full, scope="read")
    assert call(reader, "GET", f"/api/admin/tenants/{tenant.pk}").status_code == 200
    before = state()
    response = call(reader, "POST", f"/api/admin/tenants/{tenant.pk}/suspend")
    assert response.status_code == 403 and "scope" in response.json()["error"]
    assert state() == before
    expired = make_token(full, expires_at=timezone.now() - timedelta(minutes=1))
    response = call(expired, "GET", f"/api/admin/tenants/{tenant.pk}")
    assert response.status_code == 401 and "expired" in response.json()["error"]
    later = make_token(full, expires_at=timezone.now() + timedelta(days=1))
    assert call(later, "GET", f"/api/admin/tenants/{tenant.pk}").status_code == 200
    orphan = make_token(full)
    ApiToken.objects.filter(prefix=ApiToken.prefix_of(orphan)).update(created_by=None)
    response = call(orphan, "GET", f"/api/admin/tenants/{tenant.pk}")
    assert response.status_code == 403 and "no creator" in response.json()["error"]


def test_the_admin_refuses_a_token_for_a_user_who_may_do_more_than_its_creator(tenant):
    clerk = staff_user("clerk", ["api.add_apitoken", "api.view_apitoken", "tenancy.view_tenant"])
    full, root = staff_user("full", FULL), staff_user("root", superuser=True)
    peer = staff_user("peer", ["tenancy.view_tenant"])
    browser = Client()
    browser.force_login(clerk)
    for target in (full, root):
        response = browser.post("/admin/api/apitoken/add/", {"name": "x", "user": target.pk, "scope": "read"})
        assert response.status_code == 200 and "token" not in response.context
        assert "can never do more than the person who makes it" in response.content.decode()
    assert not ApiToken.objects.exists()
    response = browser.post("/admin/api/apitoken/add/", {"name": "ok", "user": peer.pk, "scope": "read"}, follow=True)
    assert response.context["token"].startswith("tmt_")
    made = ApiToken.objects.get()
    assert (made.user, made.created_by) == (peer, clerk)
    assert call(response.context["token"], "GET", f"/api/admin/tenants/{tenant.pk}").status_code == 200
    recorded = ApiCall.objects.get()
    assert (recorded.user, recorded.creator) == (peer, clerk)
    superuser_browser = Client()
    superuser_browser.force_login(root)
    response = superuser_browser.post("/admin/api/apitoken/add/", {"name": "su", "user": root.pk, "scope": "read"},
                                      follow=True)
    assert response.context["token"].startswith("tmt_")


def test_admin_moves_need_the_move_permission(tenant):
    changer = staff_user("changer", ["tenancy.view_tenant", "tenancy.change_tenant"])
    browser = Client()
    browser.force_login(changer)
    page = browser.get("/admin/tenancy/tenant/")
    actions = [choice[0] for choice in page.context["action_form"].fields["action"].choices]
    assert "suspend" in actions and "move_to_schema" not in actions and "move_back_to_shared" not in actions
    mover = staff_user("mover", ["tenancy.view_tenant", "tenancy.change_tenant", "tenancy.move_tenant"])
    browser.force_login(mover)
    page = browser.get("/admin/tenancy/tenant/")
    actions = [choice[0] for choice in page.context["action_form"].fields["action"].choices]
    assert "move_to_schema" in actions


# --- the OpenAPI schema ----------------------------------------------------------------------

def _routes(patterns, prefix="/api/"):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def test_the_schema_describes_every_route():
    import re

    from api import urls
    from api.openapi import SCHEMA

    response = Client().get("/api/openapi.json")
    assert response.status_code == 200 and response.json() == json.loads(json.dumps(SCHEMA))
    paths = SCHEMA["paths"]
    checked = 0
    for route, pattern in _routes(urls.urlpatterns):
        if route.startswith("/api/^"):  # the JSON 404 for everything else
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        assert path in paths, f"{route} is not in api/openapi.py"
        methods = {m.lower() for m in pattern.callback.api_methods}
        assert methods == set(paths[path]) - {"parameters"}, route
        for method in methods:
            if path != "/api/openapi.json":
                needed = set(pattern.callback.api_permissions[method.upper()])
                assert set(paths[path][method]["x-permissions"]) == needed, (route, method)
        checked += 1
    assert checked == len(paths) == 17


# --- fuzzing ------------------------------------------------------------------------------------

FUZZ_EXAMPLES = 20
LIGHT_EXAMPLES = 5  # the archive upload and the export stream


def test_fuzz_the_api_from_its_schema(make_tenant, monkeypatch):
    """Every operation of the schema with generated input, as a full, a view-only and a
    no-permission user: never a 500, every error is JSON, a refused call changes nothing."""
    import schemathesis
    from django.core.wsgi import get_wsgi_application
    from django_q.conf import Conf
    from hypothesis import HealthCheck, given, settings, strategies as st

    monkeypatch.setattr(Conf, "SYNC", False)  # moves the fuzzer starts are queued, not executed
    tenants = [make_tenant(f"fuzz_{i}", name=f"Fuzz {i}") for i in range(3)]
    ids = [t.pk for t in tenants]
    run = MigrationRun.objects.create(tenant=tenants[0], kind="move", source_placement="shared",
                                      target_placement="schema", status="failed")
    tokens = [make_token(staff_user("fz_full", FULL)), make_token(staff_user("fz_view", VIEW)),
              make_token(staff_user("fz_none"))]
    app = get_wsgi_application()
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    from api.openapi import SCHEMA

    expected = {f"{m.upper()} {p}" for p, item in SCHEMA["paths"].items() for m in item if m != "parameters"}
    assert {op.label for op in operations} | {"GET /api/openapi.json"} == expected

    for operation in operations:
        heavy = "restore" in operation.path or "export" in operation.path

        @settings(max_examples=LIGHT_EXAMPLES if heavy else FUZZ_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=operation.as_strategy(), token=st.sampled_from(tokens), real=st.sampled_from([None, *ids]))
        def fuzz(case, token, real):
            if real is not None and case.path_parameters and "tenant_id" in case.path_parameters:
                case.path_parameters["tenant_id"] = real
            if real is not None and case.path_parameters and "run_id" in case.path_parameters:
                case.path_parameters["run_id"] = run.pk
            before = state()
            calls = ApiCall.objects.count()
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            label = f"{case.method} {case.path} {case.path_parameters} {case.query} -> {response.status_code}"
            assert response.status_code < 500, f"{label}: {response.text[:500]}"
            if response.status_code >= 400:
                headers = {key.lower(): value for key, value in response.headers.items()}
                content_type = headers["content-type"]
                content_type = content_type[0] if isinstance(content_type, list) else content_type
                assert content_type.startswith("application/json"), label
                assert "error" in json.loads(response.content), label
                assert state() == before, f"{label} changed something"
            assert ApiCall.objects.count() == calls + 1, f"{label} was not recorded"

        fuzz()
