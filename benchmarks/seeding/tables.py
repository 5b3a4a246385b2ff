"""The demo app's tables as the seeder sees them: in the engine's foreign-key order."""
from __future__ import annotations

from psycopg import sql

from migration_jobs.engine.tables import TableSpec, tenant_models, tenant_tables

DEMO_APP = "shop"  # the tenant app whose rows generation.py knows how to make


def shop_models() -> list:
    """The demo app's models, parents before children (engine.tables' order)."""
    by_table = {m._meta.db_table: m for m in tenant_models() if m._meta.app_label == DEMO_APP}
    return [by_table[spec.name] for spec in tenant_tables() if spec.name in by_table]


def shop_tables() -> list[str]:
    return [m._meta.db_table for m in shop_models()]


def shop_specs() -> list[TableSpec]:
    """engine.tables.TableSpec of the demo app's tables, parents first."""
    names = set(shop_tables())
    return [spec for spec in tenant_tables() if spec.name in names]


def raw_connection(conn):
    """The psycopg connection behind a Django connection (or the psycopg connection itself)."""
    if hasattr(conn, "ensure_connection"):
        conn.ensure_connection()
        return conn.connection
    return conn


def tenant_row_counts(connection, tenant_id: int) -> dict[str, int]:
    """Rows per shop table (db_table -> count) of one tenant, in one query.

    `connection` is a Django connection (its search_path applies) or a psycopg connection."""
    parts = [sql.SQL("SELECT {name}, count(*) FROM {table} WHERE tenant_id = %(t)s").format(
        name=sql.Literal(table), table=sql.Identifier(table)) for table in shop_tables()]
    query = sql.SQL(" UNION ALL ").join(parts)
    if hasattr(connection, "ensure_connection"):
        with connection.cursor() as cursor:  # Django's cursor: sets the tenant's search_path
            cursor.execute(query.as_string(raw_connection(connection)), {"t": tenant_id})
            rows = cursor.fetchall()
    else:
        with connection.cursor() as cursor:
            cursor.execute(query, {"t": tenant_id})
            rows = cursor.fetchall()
    return {table: count for table, count in rows}

