"""The database router: tenant-scoped models go to the current tenant's dedicated database."""
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
