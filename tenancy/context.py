"""The current tenant: a contextvar set by the middleware and by `tenant_context(...)`.

For schema placement `tenant_context` also sets the default connection's search_path and
the schema tenant's own role (SET ROLE, see tenancy.backend), and always restores the
previous ones (they survive close(), so a worker must never leave them set).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

from django.db import connections

from tenancy.backend.roles import schema_role
from tenancy.models import Tenant
from tenancy.routing import TenantRoute, routes

_current: ContextVar[TenantRoute | None] = ContextVar("current_tenant_route", default=None)


def current_route() -> TenantRoute | None:
    return _current.get()


def resolve(tenant) -> TenantRoute:
    """The route for a TenantRoute (as given), or a fresh one for a Tenant, an id or a slug."""
    if isinstance(tenant, TenantRoute):
        return tenant  # the caller's route, as it is (a read route, say)
    if isinstance(tenant, Tenant):
        return routes.by_id(tenant.pk)
    if isinstance(tenant, int):
        return routes.by_id(tenant)
    return routes.by_id(Tenant.objects.values_list("pk", flat=True).get(slug=tenant))


def _use_schema(conn, schema: str, tenant=None) -> None:
    # django-tenants re-issues SET search_path after every set_*; skip when nothing changes.
    if getattr(conn, "schema_name", None) != schema:
        if tenant is not None:
            conn.set_tenant(tenant)
        elif schema == "public":
            conn.set_schema_to_public()
        else:
            conn.set_schema(schema)
    if hasattr(conn, "use_tenant_role"):  # tenancy.backend: a schema tenant's queries run as its role
        conn.use_tenant_role(None if schema == "public" else schema_role(schema))


def _resolve_as_app(conn, tenant) -> TenantRoute:
    """resolve(), from inside another schema tenant's context too (its role cannot read the
    tenant tables)."""
    role = getattr(conn, "tenant_role", None)
    if role is None:
        return resolve(tenant)
    conn.use_tenant_role(None)
    try:
        return resolve(tenant)
    finally:
        conn.use_tenant_role(role)


@contextmanager
def tenant_context(tenant):
    """Run the block as `tenant`: ORM access to tenant-scoped models goes where it lives."""
    conn = connections["default"]
    route = _resolve_as_app(conn, tenant)
    previous_tenant = getattr(conn, "tenant", None)
    previous_schema = getattr(conn, "schema_name", "public")
    _use_schema(conn, route.schema_name if route.placement == "schema" else "public")
    token = _current.set(route)
    try:
        yield route
    finally:
        _current.reset(token)
        _use_schema(conn, previous_schema or "public", None if previous_schema == "public" else previous_tenant)


@contextmanager
def no_tenant():
    """Run the block as staff/system code: no tenant filter, public schema."""
    conn = connections["default"]
    previous_tenant = getattr(conn, "tenant", None)
    previous_schema = getattr(conn, "schema_name", "public")
    token = _current.set(None)
    _use_schema(conn, "public")
    try:
        yield
    finally:
        _current.reset(token)
        _use_schema(conn, previous_schema or "public", None if previous_schema == "public" else previous_tenant)
