"""The database router: tenant-scoped models go to the current tenant's dedicated database,
within the process's budget of dedicated connections (tenancy/connection_budget.py)."""
from tenancy import connection_budget
from tenancy.context import current_route
from tenancy.routing import is_dedicated_alias, tenant_app_labels


class TenantRouter:
    """Sends tenant-scoped models to the current tenant's dedicated database, if it has one.

    Shared and schema placements stay on `default` (schema placement works through the
    connection's search_path, set by tenant_context). Listed before django-tenants'
    TenantSyncRouter, which would refuse migrations on every alias but default.
    """

    def _route(self, model, **hints):
        if model._meta.app_label not in tenant_app_labels():
            return None
        route = current_route()
        if route is not None and route.db_alias:
            # The request's other alias (its read switch's copy) is in use too: never closed for room.
            other = route.read_route.db_alias if route.read_route is not None else None
            connection_budget.use(route.db_alias, (other,) if other else ())
            return route.db_alias
        return None

    db_for_read = _route
    db_for_write = _route

    def allow_relation(self, obj1, obj2, **hints):
        return None

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if is_dedicated_alias(db):
            return app_label in tenant_app_labels()
        return None
