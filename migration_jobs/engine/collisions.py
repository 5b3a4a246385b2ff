"""Before a tenant moves back into the shared tables: would any of its keys collide with
another tenant's? Checked for the primary key and every single-column unique key that does
not include tenant_id (a uuid that is unique across tenants, say), before anything is written."""
from __future__ import annotations

from psycopg import sql

from migration_jobs.engine.places import Place
from migration_jobs.engine.tables import TableSpec


def global_unique_columns(conn, place: Place, table: str) -> list[tuple[str, str]]:
    """(column, type) of single-column unique indexes (the primary key included)."""
    return conn.execute("""
        SELECT a.attname, format_type(a.atttypid, a.atttypmod)
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
         WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indnatts = 1
           AND i.indpred IS NULL AND a.attname <> 'tenant_id'
         ORDER BY a.attname""", (place.schema, table)).fetchall()


def find_collisions(dedicated: Place, shared: Place, tenant_id: int, tables: list[TableSpec]) -> dict[str, int]:
    """{"table.column": rows of other tenants holding one of this tenant's values}."""
    found = {}
    with dedicated.connect(repeatable_read=True, read_only=True) as src, shared.connect() as dst:
        for table in tables:
            for column, type_name in global_unique_columns(dst, shared, table.name):
                col = sql.Identifier(column)
                dst.execute(sql.SQL("CREATE TEMP TABLE tenant_move_keys (v {}) ON COMMIT DROP").format(
                    sql.SQL(type_name)))
                with src.cursor().copy(sql.SQL(
                        "COPY (SELECT {c} FROM {t} WHERE tenant_id = {tid}) TO STDOUT (FORMAT binary)").format(
                        c=col, t=dedicated.table(table.name), tid=sql.Literal(tenant_id))) as out, \
                        dst.cursor().copy("COPY tenant_move_keys (v) FROM STDIN (FORMAT binary)") as into:
                    for block in out:
                        into.write(block)
                count = dst.execute(sql.SQL(
                    "SELECT count(*) FROM tenant_move_keys k JOIN {t} s ON s.{c} = k.v "
                    "WHERE s.tenant_id IS DISTINCT FROM %s").format(t=shared.table(table.name), c=col),
                    (tenant_id,)).fetchone()[0]
                dst.rollback()  # drops the temp table
                if count:
                    found[f"{table.name}.{column}"] = count
        src.rollback()
    return found
