"""Which tenants a plan takes, and how big they are.

`candidate_tenants()` is the fleet's own small answer to "which tenants should move"
(issue 12, bullet 1 owns the full one: migration_jobs.services.candidates); the integrator
points it there. Sizes are exact row counts of the shared tables (migration_jobs' row
counting), one query per tenant over one connection.
"""
from __future__ import annotations

from django.conf import settings

from migration_jobs.engine.places import shared_place
from migration_jobs.engine.tables import row_counts, tenant_tables
from tenancy.models import Placement, Tenant


def tenant_rows(tenants) -> dict[int, int]:
    """{tenant id: rows over every tenant table of the shared database}."""
    tenants = list(tenants)
    if not tenants:
        return {}
    place, tables = shared_place(), tenant_tables()
    with place.connect(autocommit=True, application_name="fleet-sizes") as conn:
        return {tenant.pk: sum(row_counts(conn, place, tables, tenant.pk).values()) for tenant in tenants}


def shared_tenants() -> list[Tenant]:
    return list(Tenant.objects.filter(placement=Placement.SHARED).order_by("slug"))


def candidate_tenants() -> list[Tenant]:
    """Shared tenants that should move: at least TENANT_DEDICATED_THRESHOLD_ROWS rows, or a
    dedicated reason (infrastructure, compliance). Each carries `.rows` (its row count)."""
    tenants = shared_tenants()
    rows = tenant_rows(tenants)
    found = []
    for tenant in tenants:
        tenant.rows = rows[tenant.pk]
        if tenant.rows >= settings.TENANT_DEDICATED_THRESHOLD_ROWS or tenant.dedicated_reason:
            found.append(tenant)
    return found
