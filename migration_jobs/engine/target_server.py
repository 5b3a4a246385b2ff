"""Checking a server a tenant is about to move to, before anything is created there: it is
reachable with the stored admin credentials, runs a supported version, may create databases,
has connections to spare (preflight.check_server) and room for one more tenant database
(preflight.check_tenant_databases); and if the target database exists already (left by an
earlier run), it holds nothing but the tenant tables it would reuse."""
from __future__ import annotations

import psycopg

from migration_jobs.engine import preflight, provision, server_load

# Tables a reused target database may hold besides the tenant tables.
BOOKKEEPING_TABLES = ("django_migrations", "tenant_move_fence", "tenant_move_capturing")


def check_target_server(server, database: str, report: preflight.PreflightReport, *,
                        connections_needed: int, tenant_tables: list[str]) -> bool | None:
    """Add the server's checks to `report`. Returns whether the database exists already (None:
    the server could not be reached)."""
    try:
        with provision.admin_connection(server) as conn:
            preflight.check_server(conn, f"server {server.name}", report, need_create_db=True,
                                   connections_needed=connections_needed)
            placed, moving = server_load.tenant_database_counts([server.pk], exclude_database=database)[server.pk]
            preflight.check_tenant_databases(report, f"server {server.name}", placed=placed, moving=moving,
                                             limit=server.max_tenant_databases)
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
    except psycopg.OperationalError as exc:
        report.add(f"server {server.name}: reachable", False, type(exc).__name__,
                   "check the server's host, port, admin user and password, and that it accepts connections")
        return None
    report.add(f"server {server.name}: reachable", True, f"{server.host}:{server.port}")
    if not exists:
        return False
    with psycopg.connect(**server.conninfo(database)) as conn:
        others = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                              "AND NOT (tablename = ANY(%s))",
                              ([*tenant_tables, *BOOKKEEPING_TABLES],)).fetchone()[0]
    report.add("target database", others == 0,
               f"database {database} exists (left by an earlier run); it will be emptied and reused"
               if not others else f"database {database} exists and holds {others} unrelated tables",
               "choose another server or drop that database")
    return True
