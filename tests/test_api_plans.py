"""Fleet routes of the API: candidates and move plans, created, started, paused, resumed and
cancelled over HTTP with a staff token, through the same services as the admin and commands;
bad input is one JSON error line and changes nothing."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.models import ItemStatus, MovePlan, PlanStatus
from tests.helpers import fill, make_token, staff_user
from tests.test_api_permissions import FULL, call
from tests.test_fleet_plans import queued, state, statuses  # noqa: F401 - fixtures and helpers shared

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tenants(make_tenant, cleanup):
    made = []
    for slug, n in (("pa", 5), ("pb", 3), ("pc", 2)):
        tenant = make_tenant(slug)
        fill(tenant, n)
        cleanup(tenant)
        made.append(tenant)
    return made


@pytest.fixture
def token():
    return make_token(staff_user("planner", FULL))


def test_candidates_lists_every_tenant_with_its_figures(tenants, token):
    response = call(token, "GET", "/api/admin/candidates?all=1&exact=1")
    assert response.status_code == 200, response.content
    data = response.json()
    rows = {t["tenant"]: t for t in data["tenants"]}
    assert {"pa", "pb", "pc"} <= set(rows)
    assert rows["pa"]["rows"] > rows["pc"]["rows"] > 0 and data["exact"] is True
    assert call(token, "GET", "/api/admin/candidates?exact=maybe").status_code == 400


def test_a_plan_over_http_dry_run_create_start_and_finish(tenants, token, queued):  # noqa: F811
    before = state()
    body = {"tenants": ["pc", "pa"], "to": "schema", "online": False, "max_parallel": 2, "dry_run": True}
    response = call(token, "POST", "/api/admin/plans", body)
    assert response.status_code == 200, response.content
    estimate = response.json()
    assert [i["tenant"] for i in estimate["items"]] == ["pa", "pc"]  # biggest first
    assert estimate["total_rows"] > 0 and state() == before  # a dry run creates nothing

    body.pop("dry_run")
    response = call(token, "POST", "/api/admin/plans", body)
    assert response.status_code == 201, response.content
    plan = MovePlan.objects.get(pk=response.json()["id"])
    assert plan.status == PlanStatus.DRAFT and plan.created_by.username == "planner"
    assert response.json()["status_url"] == f"/api/admin/plans/{plan.pk}"

    response = call(token, "POST", f"/api/admin/plans/{plan.pk}/start")
    assert response.status_code == 200 and response.json()["status"] == PlanStatus.RUNNING
    queued()  # the cluster's work: advance, the moves, advance again
    response = call(token, "GET", f"/api/admin/plans/{plan.pk}")
    data = response.json()
    assert data["status"] == PlanStatus.DONE, data
    assert data["progress"]["counts"]["done"] == 2 and data["progress"]["rows_moved"] > 0
    assert {i["tenant"]: i["status"] for i in data["items"]} == {"pa": "done", "pc": "done"}
    assert [p["id"] for p in call(token, "GET", "/api/admin/plans").json()["plans"]] == [plan.pk]


def test_pause_resume_cancel_and_refusals(tenants, token, queued):  # noqa: F811
    response = call(token, "POST", "/api/admin/plans", {"tenants": "pa,pb", "to": "schema", "start": True})
    assert response.status_code == 201, response.content
    plan_id = response.json()["id"]
    assert call(token, "POST", f"/api/admin/plans/{plan_id}/pause").json()["status"] == PlanStatus.PAUSED
    before = state()
    refused = call(token, "POST", f"/api/admin/plans/{plan_id}/pause")
    assert refused.status_code == 409 and "already paused" in refused.json()["error"] and state() == before
    assert call(token, "POST", f"/api/admin/plans/{plan_id}/resume").json()["status"] == PlanStatus.RUNNING
    response = call(token, "POST", f"/api/admin/plans/{plan_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == PlanStatus.CANCELLED
    assert set(statuses(MovePlan.objects.get(pk=plan_id)).values()) == {ItemStatus.CANCELLED}
    queued()
    before = state()
    again = call(token, "POST", f"/api/admin/plans/{plan_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"] and state() == before


@pytest.mark.parametrize("body, status, words", [
    ({"tenants": [], "to": "schema"}, 409, "no tenants"),
    ({"tenants": ["pa"], "to": "schema", "max_parallel": 0}, 400, "from 1 to 2147483647"),
    ({"tenants": ["pa"], "to": "schema", "window_end": "2020-01-01T00:00Z"}, 409, "already past"),
    ({"tenants": ["pa"], "to": "database", "servers": ["nowhere"]}, 409, "unknown database server"),
    ({"tenants": ["pa"], "to": "moon"}, 400, "unknown target"),
    ({"tenants": ["nobody"], "to": "schema"}, 404, "unknown tenant"),
    ({"tenants": [{"a": 1}], "to": "schema"}, 400, "list of names"),
    ({"tenants": ["pa"], "to": "schema", "name": 5}, 400, "name must be a text"),
    ({"tenants": ["pa"], "to": "schema", "colour": "red"}, 400, "colour"),
    ({"tenants": ["pa", "pa"], "to": "schema"}, 400, "listed twice"),
])
def test_bad_input_is_one_line_and_changes_nothing(tenants, token, body, status, words):
    before = state()
    response = call(token, "POST", "/api/admin/plans", body)
    assert response.status_code == status, response.content
    assert words in response.json()["error"] and "\n" not in response.json()["error"]
    assert state() == before


def test_a_tenant_already_in_a_plan_or_an_unknown_plan(tenants, token):
    assert call(token, "POST", "/api/admin/plans", {"tenants": ["pa"], "to": "schema"}).status_code == 201
    before = state()
    response = call(token, "POST", "/api/admin/plans", {"tenants": ["pa"], "to": "schema"})
    assert response.status_code == 409 and "already in plan" in response.json()["error"] and state() == before
    for url in ("/api/admin/plans/999999", "/api/admin/plans/abc", "/api/admin/plans/99999999999999999999/cancel"):
        response = call(token, "GET" if url.count("/") == 4 else "POST", url)
        assert response.status_code == 404 and "unknown plan" in response.json()["error"], url
    window = (timezone.now() + timedelta(hours=1)).isoformat()
    response = call(token, "POST", "/api/admin/plans", {"tenants": ["pb"], "to": "schema", "window_start": window,
                                                        "start": True})
    assert response.status_code == 201 and response.json()["status"] == PlanStatus.SCHEDULED
