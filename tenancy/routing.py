"""Where a tenant's rows live, resolved without a query on the hot path.

Routes (immutable `TenantRoute`s) are cached per process by tenant id and host. The cache
is cleared in this process by signals.py and in every other one by a NOTIFY on channel
`tenant_routes`, sent in the transaction that changes the tenant; while the listener is
not connected every lookup queries. A dedicated database's connection alias hashes server,
database, role and password, so a changed credential always gets a new alias.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import lru_cache

import psycopg
from django.conf import settings
from django.db import connection, connections

from tenancy import connection_budget
from tenancy.models import Domain, Placement, ReadSwitch, Tenant

log = logging.getLogger(__name__)

CHANNEL = "tenant_routes"
DEDICATED_ALIAS_PREFIX = "tenant_"
MAX_HOST_LENGTH = 253


@dataclass(frozen=True)
class TenantRoute:
    id: int
    slug: str
    schema_name: str
    placement: str
    status: str
    db_alias: str | None = None  # only for database placement
    # While a copy of the tenant's rows is kept in sync (an online move catching up), this
    # share of its read-only requests is served from `read_route` (the gradual read switch).
    read_percent: int = 0
    read_route: "TenantRoute | None" = None

    @property
    def accepts_writes(self) -> bool:
        return self.status == "active"


class RouteCache:
    def __init__(self):
        self._lock = threading.Lock()
        self._by_id: dict[int, TenantRoute] = {}
        # host -> tenant id, or None for a host with no tenant (the admin's, or a domain not
        # added yet: every clear() forgets those, and a Domain's save clears). LRU-bounded by
        # TENANT_HOST_CACHE_SIZE, so hostile Host headers cannot grow the process.
        self._by_host: OrderedDict[str, int | None] = OrderedDict()
        self._host_generation = 0  # bumped by clear(): a lookup begun before it is not cached
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
            self._host_generation += 1
            if tenant_id is None:
                self._by_id.clear()
                self._by_host.clear()
            else:
                self._by_id.pop(tenant_id, None)
                # A tenant's hosts, and every host without a tenant: one may be its new domain.
                for host in [h for h, t in self._by_host.items() if t is None or t == tenant_id]:
                    del self._by_host[host]

    def by_id(self, tenant_id: int) -> TenantRoute:
        route = self._by_id.get(tenant_id) if self.trusted() else None
        if route is None:
            route = _load_route(tenant_id)
            with self._lock:
                self._by_id[tenant_id] = route
        return route

    def by_host(self, host: str) -> TenantRoute | None:
        if len(host) > MAX_HOST_LENGTH:
            return None  # no domain can be that long (RFC 1035): neither a query nor an entry
        trusted = self.trusted()
        with self._lock:
            cached = trusted and host in self._by_host
            if cached:
                self._by_host.move_to_end(host)
                tenant_id = self._by_host[host]
            generation = self._host_generation
        if not cached:
            tenant_id = Domain.objects.filter(domain=host).values_list("tenant_id", flat=True).first()
            with self._lock:
                if generation == self._host_generation:  # else maybe stale already: not kept
                    self._by_host[host] = tenant_id
                    self._by_host.move_to_end(host)
                    while len(self._by_host) > max(1, settings.TENANT_HOST_CACHE_SIZE):
                        self._by_host.popitem(last=False)
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
    """Attach the read route of the tenant's read switch, if one is on."""
    switch = ReadSwitch.objects.filter(tenant_id=tenant.pk, percent__gt=0).first()
    if switch is None:
        return route
    alias = _alias_for(tenant) if switch.placement == Placement.DATABASE else None
    # Read-only by construction: a GET that writes must not write to the copy.
    reads = replace(route, placement=switch.placement, db_alias=alias, status="read_only",
                    schema_name=switch.schema_name or route.schema_name)
    return replace(route, read_percent=switch.percent, read_route=reads)


def set_read_switch(tenant_id: int, percent: int, placement: str = "", schema_name: str = "") -> None:
    """Serve `percent` of the tenant's read-only requests from `placement` (and `schema_name`
    for a schema), a copy the caller keeps in sync; 0 turns the switch off.

    Every process sees the change when the caller's transaction commits (see notify_change).
    """
    if percent:
        ReadSwitch.objects.update_or_create(
            tenant_id=tenant_id, defaults={"percent": percent, "placement": placement, "schema_name": schema_name})
    else:
        ReadSwitch.objects.filter(tenant_id=tenant_id).delete()
    notify_change(tenant_id)


def dedicated_alias(tenant_id: int, credential) -> str:
    """A name that changes whenever where or how the tenant connects changes."""
    where = f"{credential.server.host}:{credential.server.port}/{credential.database}/{credential.role}/" \
            f"{credential.password_encrypted}"
    return f"{DEDICATED_ALIAS_PREFIX}{tenant_id}_c{credential.pk}_{hashlib.sha256(where.encode()).hexdigest()[:8]}"


def pooler_of(server) -> tuple[str, str] | None:
    """(host, port) of the pooler in front of this server for tenant connections, if any
    (settings.TENANT_DEDICATED_POOLERS: server name -> host:port)."""
    address = getattr(settings, "TENANT_DEDICATED_POOLERS", {}).get(server.name)
    if not address:
        return None
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def dedicated_settings(credential) -> dict:
    """Django connection settings for a tenant's dedicated database (plain PostgreSQL backend).

    Through the server's pooler when one is configured: only these connections (DML as the
    tenant role, one transaction at a time) go there, with no server-side cursors (a pooler in
    transaction mode hands each transaction to any server session; Django binds parameters on
    the client and prepares nothing by default). The engine's own connections (provisioning,
    copy, verify) keep the server's own address (README "Deployment")."""
    base = dict(connections.settings["default"])
    pooled = pooler_of(credential.server)
    host, port = pooled or (credential.server.host, str(credential.server.port))
    base.update({
        "ENGINE": "django.db.backends.postgresql",
        "NAME": credential.database,
        "USER": credential.role,
        "PASSWORD": credential.password(),
        "HOST": host,
        "PORT": port,
        "DISABLE_SERVER_SIDE_CURSORS": base.get("DISABLE_SERVER_SIDE_CURSORS", False) or pooled is not None,
        "OPTIONS": {},
        "TEST": {"NAME": credential.database, "MIRROR": None, "CHARSET": None, "COLLATION": None,
                 "MIGRATE": True, "CREATE_DB": False},
    })
    return base


def _register_alias(alias: str, credential) -> None:
    if alias not in connections.settings:
        connections.settings[alias] = dedicated_settings(credential)
        connection_budget.track(alias)  # its connections count against the process's budget


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


@lru_cache(maxsize=1)
def tenant_app_labels() -> frozenset[str]:
    """Labels of the tenant apps; computed once, read on every routed query."""
    return frozenset(app.rsplit(".", 1)[-1] for app in settings.TENANT_APPS)
