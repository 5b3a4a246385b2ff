"""Where a tenant's rows live, resolved without a query on the hot path.

A `TenantRoute` is an immutable snapshot of what routing needs (placement, status, schema,
dedicated alias). Routes are cached per process by tenant id and by host name. The cache is
invalidated
- in this process, when a Tenant, Domain or DatabaseCredential is saved (signals.py), and
- in every other process through PostgreSQL LISTEN/NOTIFY on channel `tenant_routes`: the
  notification is sent in the transaction that changes the placement, so it is delivered
  exactly when that change commits. While the listener is not connected the cache is not
  trusted and every lookup queries.

Dedicated databases get a connection alias `tenant_<tenant id>_c<credential id>_<hash>`,
registered at run time from the decrypted credential; the hash covers server, database,
role and password, so any change gives a new alias and a connection another thread still
holds can never point at the old place under the new name.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.db import connection, connections

log = logging.getLogger(__name__)

CHANNEL = "tenant_routes"
DEDICATED_ALIAS_PREFIX = "tenant_"


@dataclass(frozen=True)
class TenantRoute:
    id: int
    slug: str
    schema_name: str
    placement: str
    status: str
    db_alias: str | None = None  # only for database placement
    # While an online move keeps its target in sync, a share of read-only requests may be
    # served from there (the runbook's gradual read switch).
    read_percent: int = 0
    read_route: "TenantRoute | None" = None

    @property
    def accepts_writes(self) -> bool:
        return self.status == "active"


class RouteCache:
    def __init__(self):
        self._lock = threading.Lock()
        self._by_id: dict[int, TenantRoute] = {}
        self._by_host: dict[str, int | None] = {}
        self.listener: RouteListener | None = None

    def trusted(self) -> bool:
        if not getattr(settings, "TENANT_ROUTE_LISTENER", True):
            return True  # single-process use (tests, commands): signals keep it right
        if self.listener is None:
            self.listener = RouteListener(self)
            self.listener.start()
        return self.listener.connected.is_set()

    def clear(self, tenant_id: int | None = None) -> None:
        with self._lock:
            if tenant_id is None:
                self._by_id.clear()
                self._by_host.clear()
            else:
                self._by_id.pop(tenant_id, None)
                self._by_host = {h: t for h, t in self._by_host.items() if t != tenant_id}

    def by_id(self, tenant_id: int) -> TenantRoute:
        route = self._by_id.get(tenant_id) if self.trusted() else None
        if route is None:
            route = _load_route(tenant_id)
            with self._lock:
                self._by_id[tenant_id] = route
        return route

    def by_host(self, host: str) -> TenantRoute | None:
        trusted = self.trusted()
        if trusted and host in self._by_host:
            tenant_id = self._by_host[host]
            return None if tenant_id is None else self.by_id(tenant_id)
        from tenancy.models import Domain

        tenant_id = Domain.objects.filter(domain=host).values_list("tenant_id", flat=True).first()
        with self._lock:
            self._by_host[host] = tenant_id
        return None if tenant_id is None else self.by_id(tenant_id)


class RouteListener(threading.Thread):
    """Clears cached routes when another process commits a tenant change."""

    def __init__(self, cache: RouteCache):
        super().__init__(name="tenant-route-listener", daemon=True)
        self.cache = cache
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.conn = None

    def run(self):
        import psycopg

        while not self.stopping.is_set():
            try:
                params = connections["default"].get_connection_params()
                params.pop("cursor_factory", None)
                params.pop("context", None)
                params.pop("prepare_threshold", None)
                params.pop("server_side_binding", None)
                self.conn = psycopg.connect(**params, autocommit=True)
                self.conn.execute(f"LISTEN {CHANNEL}")
                self.cache.clear()  # anything cached before we listened may be stale
                self.connected.set()
                while not self.stopping.is_set():
                    for notify in self.conn.notifies(timeout=1.0):
                        self.cache.clear(int(notify.payload) if notify.payload.isdigit() else None)
            except Exception as exc:  # noqa: BLE001 - any failure: distrust the cache, retry
                if not self.stopping.is_set():
                    log.warning("tenant route listener disconnected (%s); routing queries until it is back",
                                type(exc).__name__)
            finally:
                self.connected.clear()
                self.cache.clear()
                if self.conn is not None:
                    self.conn.close()
            self.stopping.wait(1.0)

    def stop(self, timeout: float = 5.0):
        self.stopping.set()
        self.join(timeout)


routes = RouteCache()


def _load_route(tenant_id: int) -> TenantRoute:
    from tenancy.models import Placement, Tenant

    tenant = Tenant.objects.select_related("credential__server").get(pk=tenant_id)
    alias = None
    if tenant.placement == Placement.DATABASE:
        alias = _alias_for(tenant)
    route = TenantRoute(tenant.pk, tenant.slug, tenant.schema_name, tenant.placement, tenant.status, alias)
    return _with_read_switch(route, tenant)


def _alias_for(tenant) -> str:
    credential = tenant.credential
    alias = dedicated_alias(tenant.pk, credential)
    _register_alias(alias, credential)
    return alias


def _with_read_switch(route: TenantRoute, tenant) -> TenantRoute:
    """Attach the read route of an online move that is catching up with reads switched on."""
    from dataclasses import replace

    from migration_jobs.models import MigrationRun

    run = MigrationRun.objects.filter(tenant_id=tenant.pk, status="running", online=True, kind="move",
                                      current_step="catch_up", read_percent__gt=0).first()
    if run is None:
        return route
    alias = _alias_for(tenant) if run.target_placement == "database" else None
    # Read-only by construction: a GET that writes must not write to the copy.
    reads = replace(route, placement=run.target_placement, db_alias=alias, status="read_only",
                    schema_name=run.target_schema or route.schema_name)
    return replace(route, read_percent=run.read_percent, read_route=reads)


def dedicated_alias(tenant_id: int, credential) -> str:
    """A name that changes whenever where or how the tenant connects changes."""
    import hashlib

    where = f"{credential.server.host}:{credential.server.port}/{credential.database}/{credential.role}/" \
            f"{credential.password_encrypted}"
    return f"{DEDICATED_ALIAS_PREFIX}{tenant_id}_c{credential.pk}_{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def dedicated_settings(credential) -> dict:
    """Django connection settings for a tenant's dedicated database (plain PostgreSQL backend)."""
    base = dict(connections.settings["default"])
    base.update({
        "ENGINE": "django.db.backends.postgresql",
        "NAME": credential.database,
        "USER": credential.role,
        "PASSWORD": credential.password(),
        "HOST": credential.server.host,
        "PORT": str(credential.server.port),
        "OPTIONS": {},
        "TEST": {"NAME": credential.database, "MIRROR": None, "CHARSET": None, "COLLATION": None,
                 "MIGRATE": True, "CREATE_DB": False},
    })
    return base


def _register_alias(alias: str, credential) -> None:
    if alias not in connections.settings:
        connections.settings[alias] = dedicated_settings(credential)


def is_dedicated_alias(alias: str) -> bool:
    return alias.startswith(DEDICATED_ALIAS_PREFIX)


def notify_change(tenant_id: int | None) -> None:
    """Tell every process (at commit) and this one (now) that a tenant's route changed."""
    routes.clear(tenant_id)
    payload = "" if tenant_id is None else str(tenant_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])


def wait_for_listener(timeout: float = 5.0) -> bool:
    routes.trusted()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if routes.listener is None or routes.listener.connected.is_set():
            return True
        time.sleep(0.02)
    return False


# --- The database router -------------------------------------------------------------------

@lru_cache(maxsize=1)
def tenant_app_labels() -> frozenset[str]:
    """Labels of the tenant apps; computed once, read on every routed query."""
    return frozenset(app.rsplit(".", 1)[-1] for app in settings.TENANT_APPS)


class TenantRouter:
    """Sends tenant-scoped models to the current tenant's dedicated database, if it has one.

    Shared and schema placements stay on `default` (schema placement works through the
    connection's search_path, set by tenant_context). Listed before django-tenants'
    TenantSyncRouter, which would refuse migrations on every alias but default.
    """

    def _route(self, model, **hints):
        if model._meta.app_label not in tenant_app_labels():
            return None
        from tenancy.context import current_route

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
