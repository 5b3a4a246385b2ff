"""Which tenants a plan takes, and how big they are.

`candidate_tenants()` takes migration_jobs' candidates (the same list as the candidates page and
`tenant_candidates`), shared tenants only: a plan moves tenants out of the shared database.
`tenant_rows` counts exactly for the estimates: one query per table and tenant, one connection.
"""
from __future__ import annotations

from migration_jobs.engine.places import shared_place
from migration_jobs.engine.tables import row_counts, tenant_tables
from migration_jobs.services.candidates import candidates
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
    """Shared tenants that should move, as the candidates page and `tenant_candidates` list them
    (at least TENANT_DEDICATED_THRESHOLD_ROWS rows by PostgreSQL's statistics, or a dedicated
    reason), biggest first. Each carries `.rows` (the estimate; the plan counts exactly)."""
    found = []
    for candidate in candidates():
        if candidate.tenant.placement == Placement.SHARED:
            candidate.tenant.rows = candidate.rows or 0
            found.append(candidate.tenant)
    return found
