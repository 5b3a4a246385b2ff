"""A PostgreSQL server's connection load, read live: `max_connections`, the connections
reserved for superusers (and, PostgreSQL 16+, `reserved_connections`), and the client
backends connected now (pg_stat_activity; background workers do not take a slot)."""
from __future__ import annotations

from dataclasses import dataclass

import psycopg

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
