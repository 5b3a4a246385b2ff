"""The demo app's tables as the seeder sees them: in the engine's foreign-key order."""
from __future__ import annotations

from migration_jobs.engine.places import shared_place
from migration_jobs.engine.tables import TableSpec, row_counts, tenant_models, tenant_tables

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
    """Rows per shop table (db_table -> count) of one tenant in the shared tables, in one
    query (engine.tables.row_counts). `connection`: a Django or a psycopg connection."""
    return row_counts(raw_connection(connection), shared_place(), shop_tables(), tenant_id)
