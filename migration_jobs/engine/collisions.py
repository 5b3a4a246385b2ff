"""Would a tenant's keys collide with another tenant's rows in the shared tables? Checked for
every unique key that does not include tenant_id (the primary key, a uuid unique across
tenants, ...), before anything is written: by a move back (keys copied from the dedicated
place into a temp table) and by a restore (keys already in its staging tables)."""
from __future__ import annotations

from psycopg import sql

from migration_jobs.engine.places import Place
from migration_jobs.engine.tables import TableSpec


def unique_keys(conn, place: Place, table: str) -> list[tuple[str, ...]]:
    """Column tuples of the table's unique indexes (primary key included) without tenant_id;
    partial and expression indexes left out."""
    rows = conn.execute("""
        SELECT array_agg(a.attname::text ORDER BY k.ord)
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
         WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indpred IS NULL
           AND i.indexprs IS NULL
         GROUP BY i.indexrelid""", (place.schema, table)).fetchall()
    return sorted({tuple(cols) for (cols,) in rows if "tenant_id" not in cols})


def colliding_keys(conn, place: Place, keys: list[tuple[TableSpec, sql.Composable]], tenant_id: int
                   ) -> dict[str, int]:
    """{"table.col[+col]": rows of OTHER tenants in the place holding a key found in the
    relation paired with the table (same columns, readable through `conn`)}."""
    found = {}
    for spec, relation in keys:
        for cols in unique_keys(conn, place, spec.name):
            if not set(cols) <= set(spec.columns):
                continue
            on = sql.SQL(" AND ").join(sql.SQL("s.{c} = k.{c}").format(c=sql.Identifier(c)) for c in cols)
            n = conn.execute(sql.SQL("SELECT count(*) FROM {k} k JOIN {t} s ON {on} "
                                     "WHERE s.tenant_id IS DISTINCT FROM %s").format(
                k=relation, t=place.table(spec.name), on=on), (tenant_id,)).fetchone()[0]
            if n:
                found[f"{spec.name}.{'+'.join(cols)}"] = int(n)
    return found


def find_collisions(dedicated: Place, shared: Place, tenant_id: int, tables: list[TableSpec]) -> dict[str, int]:
    """colliding_keys for a tenant living in `dedicated`: each table's key columns are copied
    (binary COPY) into a temp table of the shared database, one table at a time."""
    found = {}
    keys = sql.Identifier("tenant_move_keys")
    with dedicated.connect(repeatable_read=True, read_only=True) as src, shared.connect() as dst:
        for table in tables:
            wanted = sorted({c for cols in unique_keys(dst, shared, table.name) for c in cols
                             if set(cols) <= set(table.columns)})
            if not wanted:
                continue
            cols = sql.SQL(", ").join(map(sql.Identifier, wanted))
            dst.execute(sql.SQL("CREATE TEMP TABLE {k} ON COMMIT DROP AS SELECT {c} FROM {t} WITH NO DATA").format(
                k=keys, c=cols, t=shared.table(table.name)))
            with src.cursor().copy(sql.SQL(
                    "COPY (SELECT {c} FROM {t} WHERE tenant_id = {tid}) TO STDOUT (FORMAT binary)").format(
                    c=cols, t=dedicated.table(table.name), tid=sql.Literal(tenant_id))) as out, \
                    dst.cursor().copy(sql.SQL("COPY {k} ({c}) FROM STDIN (FORMAT binary)").format(
                        k=keys, c=cols)) as into:
                for block in out:
                    into.write(block)
            spec = TableSpec(table.name, tuple(wanted), table.pk)
            found.update(colliding_keys(dst, shared, [(spec, keys)], tenant_id))
            dst.rollback()  # drops the temp table
        src.rollback()
    return found
