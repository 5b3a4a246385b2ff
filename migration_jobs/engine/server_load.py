"""How loaded a database server is: its connection load, read live (`max_connections`, the
connections reserved for superusers and, PostgreSQL 16+, `reserved_connections`, and the client
backends connected now: pg_stat_activity, where background workers take no slot), and the
tenant databases it holds (from the tenants' placement and the active moves to it)."""
from __future__ import annotations

from dataclasses import dataclass

import psycopg
from django.db.models import Count

from migration_jobs.models import ACTIVE_STATUSES, MigrationRun, RunKind
from tenancy.models import Placement, Tenant

# A live read over a server's admin connection gives up after this many seconds.
LIVE_TIMEOUT = 3


@dataclass(frozen=True)
class ConnectionLoad:
    max_connections: int
    reserved: int
    used: int

    @property
    def free(self) -> int:
        """Connections an ordinary role can still open."""
        return self.max_connections - self.reserved - self.used


def connection_load(conn) -> ConnectionLoad:
    row = conn.execute(
        "SELECT current_setting('max_connections')::int, "
        "       current_setting('superuser_reserved_connections')::int "
        "       + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0), "
        "       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int").fetchone()
    return ConnectionLoad(*row)


def read_connection_load(conninfo: dict, *, timeout: float = LIVE_TIMEOUT) -> ConnectionLoad:
    """Connect (admin conninfo), read the load, disconnect; psycopg.Error when the server does
    not answer within `timeout` seconds (connecting and the query each)."""
    seconds = max(1, int(timeout))
    with psycopg.connect(**{**conninfo, "connect_timeout": seconds}, autocommit=True,
                         application_name="tenant-capacity",
                         options=f"-c statement_timeout={seconds * 1000}") as conn:
        return connection_load(conn)


def tenant_database_counts(server_ids, *, exclude_tenant_id: int | None = None,
                           exclude_database: str | None = None) -> dict[int, tuple[int, int]]:
    """{server id: (tenants placed there, active moves to a database there)}, in two queries.
    `exclude_*`: leave out one tenant (a request for it) or one target database (its run)."""
    placed = Tenant.objects.filter(placement=Placement.DATABASE, credential__server_id__in=server_ids)
    moving = MigrationRun.objects.filter(status__in=ACTIVE_STATUSES, kind=RunKind.MOVE,
                                         target_placement=Placement.DATABASE, target_server_id__in=server_ids)
    if exclude_tenant_id is not None:
        placed, moving = placed.exclude(pk=exclude_tenant_id), moving.exclude(tenant_id=exclude_tenant_id)
    if exclude_database is not None:
        placed = placed.exclude(credential__database=exclude_database)
        moving = moving.exclude(target_database=exclude_database)
    placed_by = dict(placed.values_list("credential__server_id").annotate(n=Count("pk")).order_by())
    moving_by = dict(moving.values_list("target_server_id").annotate(n=Count("tenant_id", distinct=True))
                     .order_by())
    return {sid: (placed_by.get(sid, 0), moving_by.get(sid, 0)) for sid in server_ids}
