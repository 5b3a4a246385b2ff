"""The OpenAPI 3 description of every route of api/urls.py, served at GET /api/openapi.json.

Hand-written, next to the routes it describes (tests/test_api_permissions.py checks that every
URL pattern is here, and fuzzes the API from this schema with schemathesis). Each operation
names the Django permissions it needs in `x-permissions` (the same as api/views.py).
"""
from __future__ import annotations

from django.http import JsonResponse

from api import plans, views
from api.auth import api_view

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict:
    text = {400: "Bad input (nothing changed)", 401: "No valid token (missing, unknown, expired)",
            403: "Token revoked, user not active staff, or a permission or the scope is missing",
            404: "Unknown tenant, run or route", 405: "Method not allowed here",
            409: "Refused in the current state (nothing changed)", 413: "Upload too large",
            415: "Wrong content type", 422: "Invalid archive"}
    return {str(code): {"description": text[code], "content": {"application/json": {"schema": ERROR}}}
            for code in (401, 403, 405, *codes)}


def _json(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


TENANT_ID = {"name": "tenant_id", "in": "path", "required": True, "description": "The tenant's numeric id",
             "schema": {"type": "integer", "minimum": 1, "maximum": 9223372036854775807}}
RUN_ID = {"name": "run_id", "in": "path", "required": True, "description": "A migration run's id",
          "schema": {"type": "integer", "minimum": 1, "maximum": 9223372036854775807}}
PLAN_ID = {"name": "plan_id", "in": "path", "required": True, "description": "A move plan's id",
           "schema": {"type": "integer", "minimum": 1, "maximum": 9223372036854775807}}
RESTORE_OPTIONS = [
    {"name": "into", "in": "query", "schema": {"type": "string", "enum": ["shared", "schema", "database"]},
     "description": "Placement to restore into"},
    {"name": "as", "in": "query", "schema": {"type": "string"}, "description": "Restore under this slug"},
    {"name": "replace", "in": "query", "schema": {"type": "boolean"}},
    {"name": "server", "in": "query", "schema": {"type": "string"}},
    {"name": "check", "in": "query", "schema": {"type": "boolean"}, "description": "Check only; write nothing"},
]


def _op(summary: str, perms: list[str], responses: dict, **extra) -> dict:
    return {"summary": summary, "x-permissions": perms, "security": [{"token": []}], "responses": responses,
            **extra}


SCHEMA = {
    "openapi": "3.0.3",
    "info": {"title": "Tenant moves staff API", "version": "1",
             "description": "Bearer tokens made in the admin (API tokens). A call needs the listed Django "
                            "permissions held by BOTH the token's user and the token's creator; a 'read' "
                            "token may only GET. Every call is recorded (API calls in the admin)."},
    "components": {
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "TenantChange": {"type": "object", "additionalProperties": False, "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "settings": {"type": "object", "description": "RFC 7396 merge patch; never credentials"},
                "placement": {"type": "string", "enum": ["shared", "schema", "database", "dedicated"]},
                "server": {"type": "string"}}},
            "MoveRequest": {"type": "object", "required": ["to"], "additionalProperties": False, "properties": {
                "to": {"type": "string", "enum": ["shared", "schema", "database", "dedicated"]},
                "server": {"type": "string"}, "dry_run": {"type": "boolean"}}},
            "PlanRequest": {"type": "object", "required": ["to"], "additionalProperties": False, "properties": {
                "tenants": {"type": "array", "items": {"type": "string"}, "description": "Slugs or ids"},
                "selection": {"type": "string", "enum": ["chosen", "candidates", "shared"]},
                "to": {"type": "string", "enum": ["schema", "database"]},
                "servers": {"type": "array", "items": {"type": "string"}},
                "online": {"type": "boolean"}, "max_parallel": {"type": "integer", "minimum": 1},
                "order": {"type": "string", "enum": ["biggest_first", "smallest_first", "as_listed"]},
                "window_start": {"type": "string", "format": "date-time"},
                "window_end": {"type": "string", "format": "date-time"},
                "on_failure": {"type": "string", "enum": ["stop", "skip"]},
                "name": {"type": "string", "maxLength": 200},
                "dry_run": {"type": "boolean", "description": "Check and estimate only; create nothing"},
                "start": {"type": "boolean", "description": "Start at once (else a draft)"}}},
        },
    },
    "paths": {
        "/api/openapi.json": {"get": {"summary": "This schema", "security": [], "x-permissions": [],
                                      "responses": {"200": _json("The OpenAPI schema")}}},
        "/api/tenants/export": {"get": _op(
            "Export a tenant's data (a tar archive, streamed)", views.api_permissions(views.tenant_export, "GET"),
            {"200": {"description": "The archive", "content": {"application/x-tar": {
                "schema": {"type": "string", "format": "binary"}}}}, **_errors(400, 404, 409)},
            parameters=[{"name": "tenantId", "in": "query", "required": True,
                         "schema": {"type": "integer", "minimum": 1}}])},
        "/api/admin/tenants": {"get": _op(
            "List tenants", views.api_permissions(views.tenant_list, "GET"),
            {"200": _json("Tenants"), **_errors(400)},
            parameters=[{"name": "slug", "in": "query", "schema": {"type": "string"}}])},
        "/api/admin/tenants/restore": {"post": _op(
            "Restore an exported archive (create or replace a tenant)",
            views.api_permissions(views.tenant_restore, "POST"),
            {"200": _json("Restored into an existing tenant"), "201": _json("Created a tenant"),
             **_errors(400, 409, 413, 415, 422)},
            parameters=RESTORE_OPTIONS,
            requestBody={"required": True, "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {"type": "object", "required": ["archive"], "properties": {
                    "archive": {"type": "string", "format": "binary"}}}}}})},
        "/api/admin/tenants/{tenant_id}": {
            "parameters": [TENANT_ID],
            "get": _op("A tenant", views.api_permissions(views.tenant_detail, "GET"),
                       {"200": _json("The tenant"), **_errors(400, 404)}),
            "patch": _op("Change name or settings; a placement change starts a run (also needs "
                         "tenancy.move_tenant)", views.api_permissions(views.tenant_detail, "PATCH"),
                         {"200": _json("Changed"), "202": _json("A run was queued"), **_errors(400, 404, 409)},
                         requestBody={"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/TenantChange"}}}}),
        },
        "/api/admin/tenants/{tenant_id}/suspend": {
            "parameters": [TENANT_ID],
            "post": _op("Suspend a tenant", views.api_permissions(views.tenant_suspend, "POST"),
                        {"200": _json("Suspended"), **_errors(400, 404, 409)})},
        "/api/admin/tenants/{tenant_id}/reactivate": {
            "parameters": [TENANT_ID],
            "post": _op("Reactivate a tenant", views.api_permissions(views.tenant_reactivate, "POST"),
                        {"200": _json("Active"), **_errors(400, 404, 409)})},
        "/api/admin/tenants/{tenant_id}/migrations": {
            "parameters": [TENANT_ID],
            "get": _op("A tenant's runs", views.api_permissions(views.tenant_migrations, "GET"),
                       {"200": _json("Runs"), **_errors(400, 404)}),
            "post": _op("Move a tenant (a run, queued)", views.api_permissions(views.tenant_migrations, "POST"),
                        {"202": _json("Queued"), **_errors(400, 404, 409)},
                        requestBody={"required": True, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/MoveRequest"}}}})},
        "/api/admin/candidates": {"get": _op(
            "The tenants that should move (row count, size, growth, reason)",
            views.api_permissions(plans.candidate_list, "GET"), {"200": _json("Candidates"), **_errors(400)},
            parameters=[{"name": "exact", "in": "query", "schema": {"type": "boolean"},
                         "description": "Count rows exactly (slower) instead of reading statistics"},
                        {"name": "all", "in": "query", "schema": {"type": "boolean"},
                         "description": "Every tenant, not only those that should move"}])},
        "/api/admin/plans": {
            "get": _op("Move plans (the latest 100)", views.api_permissions(plans.plan_list, "GET"),
                       {"200": _json("Plans")}),
            "post": _op("Create a move plan (a draft, or started with start=true; dry_run=true estimates only)",
                        views.api_permissions(plans.plan_list, "POST"),
                        {"200": _json("The estimate (dry run)"), "201": _json("The plan"),
                         **_errors(400, 404, 409)},
                        requestBody={"required": True, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/PlanRequest"}}}})},
        "/api/admin/plans/{plan_id}": {
            "parameters": [PLAN_ID],
            "get": _op("A plan: progress (done / running / waiting / failed, rows, rate, ETA) and its tenants",
                       views.api_permissions(plans.plan_detail, "GET"), {"200": _json("The plan"), **_errors(404)})},
        **{f"/api/admin/plans/{{plan_id}}/{action}": {
            "parameters": [PLAN_ID],
            "post": _op(summary, views.api_permissions(view, "POST"), {"200": _json("The plan"), **_errors(404, 409)})}
           for action, summary, view in [
               ("start", "Start a draft plan", plans.plan_start),
               ("pause", "Pause a plan: no new move starts", plans.plan_pause),
               ("resume", "Resume a paused plan", plans.plan_resume),
               ("cancel", "Cancel a plan: no new move; running moves are rolled back", plans.plan_cancel)]},
        "/api/admin/migrations/{run_id}": {
            "parameters": [RUN_ID],
            "get": _op("A run's status and report", views.api_permissions(views.migration_run, "GET"),
                       {"200": _json("The run"), **_errors(404)})},
        "/api/admin/migrations/{run_id}/cancel": {
            "parameters": [RUN_ID],
            "post": _op("Cancel a run: a queued one at once, a running or held one at its next safe point",
                        views.api_permissions(views.migration_cancel, "POST"),
                        {"200": _json("Cancelled"), "202": _json("Cancel requested"), **_errors(404, 409)})},
    },
}


@api_view(public=True, GET=[])
def openapi_json(request):
    """The schema; public (it describes routes, holds no data), recorded like every call."""
    return JsonResponse(SCHEMA, json_dumps_params={"indent": 1})
