"""How full each database server is, for placing tenant databases: the tenant databases it
holds (tenants placed there, and moves on their way there) against its
`max_tenant_databases`, and its connection headroom read live (engine/server_load.py).
A server takes one more tenant database while it is under its limit and keeps at least
TENANT_SERVER_MIN_FREE_CONNECTIONS connections free."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import psycopg
from django.conf import settings

from migration_jobs.engine.server_load import (LIVE_TIMEOUT, ConnectionLoad, read_connection_load,
                                               tenant_database_counts)
from migration_jobs.exceptions import Refused
from tenancy.models import DatabaseServer, Tenant

# Live reads of a list of servers run at most this many at once.
PARALLEL_READS = 8


@dataclass
class Capacity:
    server: DatabaseServer
    placed: int                         # tenants in database placement on it
    moving: int                         # active moves with a database target on it
    load: ConnectionLoad | None = None  # None: not read, or unreachable (`problem`)
    problem: str = ""

    @property
    def tenant_databases(self) -> int:
        return self.placed + self.moving

    @property
    def limit(self) -> int | None:
        return self.server.max_tenant_databases

    @property
    def free_connections(self) -> int | None:
        return self.load.free if self.load else None

    def refusal(self) -> str | None:
        """Why this server takes no more tenant databases now, in one line, or None."""
        name = self.server.name
        if self.limit is not None and self.tenant_databases >= self.limit:
            return (f"database server {name!r} is at capacity: {self.tenant_databases} tenant databases "
                    f"({self.placed} placed, {self.moving} being moved) of max_tenant_databases {self.limit}")
        if self.problem:
            return f"database server {name!r} ({self.server.host}:{self.server.port}) is {self.problem}"
        minimum = min_free_connections()
        if self.load is not None and self.load.free < minimum:
            return (f"database server {name!r} has {self.load.free} free connections ({self.load.used} of "
                    f"{self.load.max_connections} in use, {self.load.reserved} reserved); at least {minimum} "
                    f"must stay free (TENANT_SERVER_MIN_FREE_CONNECTIONS)")
        return None

    def as_dict(self) -> dict:
        load = self.load
        return {"server": self.server.name, "tenant_databases": self.tenant_databases, "placed": self.placed,
                "moving": self.moving, "limit": self.limit,
                "max_connections": load.max_connections if load else None,
                "connections_used": load.used if load else None, "connections_reserved": load.reserved if load else None,
                "free_connections": load.free if load else None, "problem": self.problem or None,
                "refusal": self.refusal()}


def min_free_connections() -> int:
    return int(settings.TENANT_SERVER_MIN_FREE_CONNECTIONS)


def capacities(servers, *, live: bool = True, timeout: float = LIVE_TIMEOUT,
               exclude_tenant: Tenant | None = None) -> list[Capacity]:
    """Capacity of each server, in the given order. The live reads run in parallel and the
    whole call takes at most about `timeout` seconds: a server that has not answered by then
    (or refused) is "unreachable" (never the error's text: it may quote connection details)."""
    servers = list(servers)
    counts = tenant_database_counts([s.pk for s in servers],
                                    exclude_tenant_id=exclude_tenant.pk if exclude_tenant else None)
    found = [Capacity(s, *counts[s.pk]) for s in servers]
    if not live or not found:
        return found
    pool = ThreadPoolExecutor(max_workers=min(PARALLEL_READS, len(found)), thread_name_prefix="capacity")
    try:
        futures = {pool.submit(read_connection_load, c.server.conninfo(), timeout=timeout): c for c in found}
        done, _ = wait(futures, timeout=timeout + 1)
        for future, cap in futures.items():
            if future not in done:
                cap.problem = "unreachable (no answer in time)"
            elif isinstance(future.exception(), psycopg.Error):
                cap.problem = "unreachable"
            elif future.exception() is not None:
                raise future.exception()
            else:
                cap.load = future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return found


def capacity(server: DatabaseServer, *, live: bool = True, exclude_tenant: Tenant | None = None) -> Capacity:
    return capacities([server], live=live, exclude_tenant=exclude_tenant)[0]


def rank(found: list[Capacity]) -> list[Capacity]:
    """Servers that can take a tenant database, most free connections first, ties by fewest
    tenant databases (then by name)."""
    fits = [c for c in found if c.refusal() is None]
    return sorted(fits, key=lambda c: (-(c.free_connections or 0), c.tenant_databases, c.server.name))


def least_loaded(servers=None) -> DatabaseServer:
    """The server a new tenant database should go to (every server when none are given), or
    Refused naming why each one cannot take it."""
    found = capacities(DatabaseServer.objects.all() if servers is None else servers)
    ranked = rank(found)
    if not ranked:
        raise Refused("no database server can take another tenant database: "
                      + ("; ".join(c.refusal() for c in found) or "there is none"))
    return ranked[0].server


def check_room(server: DatabaseServer, tenant: Tenant | None = None) -> Capacity:
    """Refused (one line) when the server would go over capacity with one more tenant database
    (`tenant`'s own placement or run there does not count against it)."""
    found = capacity(server, exclude_tenant=tenant)
    problem = found.refusal()
    if problem:
        raise Refused(problem)
    return found
