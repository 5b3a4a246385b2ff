"""Tenant-scoped models: every row carries its tenant, and code running for one tenant can
neither read nor write another's through the ORM (`objects` filters, writes are checked,
`unscoped` sees every row for staff tools).
"""
from django.db import models

from tenancy.context import current_route
from tenancy.exceptions import CrossTenantAccess, TenantWriteRefused
from tenancy.routing import routes


def check_writable(route) -> None:
    if route is not None and not route.accepts_writes:
        raise TenantWriteRefused(f"tenant {route.slug} is {route.status.replace('_', '-')}: writes are refused")


class TenantScopedQuerySet(models.QuerySet):
    def update(self, **kwargs):
        check_writable(current_route())
        return super().update(**kwargs)

    def delete(self):
        check_writable(current_route())
        return super().delete()

    def bulk_create(self, objs, *args, **kwargs):
        return super().bulk_create(_claimed(objs), *args, **kwargs)

    def bulk_update(self, objs, *args, **kwargs):
        return super().bulk_update(_claimed(objs), *args, **kwargs)


class TenantScopedManager(models.Manager.from_queryset(TenantScopedQuerySet)):
    def get_queryset(self):
        queryset = super().get_queryset()
        route = current_route()
        return queryset if route is None else queryset.filter(tenant_id=route.id)


class TenantScopedModel(models.Model):
    # No database FK constraint: in a dedicated database there is no tenant table, and the
    # id must stay the same in every copy. Preflight checks for rows whose tenant is gone.
    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.DO_NOTHING, db_constraint=False,
                               related_name="+", editable=False)

    objects = TenantScopedManager()
    unscoped = models.Manager()

    class Meta:
        abstract = True
        base_manager_name = "unscoped"

    def _claim_for(self, route) -> None:
        if route is None:
            if self.tenant_id is None:
                raise CrossTenantAccess(f"{type(self).__name__} has no tenant and no tenant is current")
            check_writable(routes.by_id(self.tenant_id))
            return
        if self.tenant_id is None:
            self.tenant_id = route.id
        elif self.tenant_id != route.id:
            raise CrossTenantAccess(f"code running for tenant {route.slug} tried to write a row of tenant id "
                                    f"{self.tenant_id}")
        check_writable(route)

    def save(self, *args, **kwargs):
        self._claim_for(current_route())
        return super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        self._claim_for(current_route())
        return super().delete(*args, **kwargs)


def _claimed(objs) -> list:
    """The objects, each claimed for the current route (its tenant set, or a refusal)."""
    objs = list(objs)
    route = current_route()
    for obj in objs:
        obj._claim_for(route)
    return objs
