"""Cross-tenant references (a row of tenant 20 pointing at a row of tenant 5: a leak the day
they live apart; no FK catches it) and dangling ones (pointing at no row), per foreign key
between tenant tables, each with its count and one example row. Used by the move's
preflight, restore (refused before commit) and `verify_tenant`.
"""
from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from migration_jobs.engine.places import Place
from migration_jobs.engine.tables import TableSpec, tables_in_place, tenant_models


@dataclass(frozen=True)
class BadReference:
    kind: str            # "cross-tenant" or "dangling"
    table: str           # the referencing table
    column: str          # its foreign-key column
    parent: str          # the referenced table
    rows: int            # how many of the tenant's rows are affected
    example_key: object  # the primary key of one such row
    example_target: object  # the key it points at
    other_tenant: object = None  # cross-tenant: the tenant of the row pointed at

    def describe(self) -> str:
        """One line: what, where, and a row to look at."""
        if self.kind == "cross-tenant":
            return (f"{self.table}.{self.column} points at rows of another tenant in {self.rows} rows "
                    f"(e.g. {self.table} key {self.example_key} -> {self.parent} key {self.example_target} "
                    f"of tenant {self.other_tenant})")
        return (f"{self.table}.{self.column} points at rows that do not exist in {self.rows} rows "
                f"(e.g. {self.table} key {self.example_key} -> {self.parent} key {self.example_target})")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "table": self.table, "column": self.column, "parent": self.parent,
                "rows": self.rows, "example_key": self.example_key, "example_target": self.example_target,
                "other_tenant": self.other_tenant}


def foreign_keys(conn, place: Place, table: TableSpec | str) -> list[tuple[str, str, str]]:
    """(column, referenced table, referenced column) of the table's single-column foreign
    keys, as declared in the place's catalog."""
    name = table.name if isinstance(table, TableSpec) else table
    return conn.execute("""
        SELECT a.attname, rc.relname, ra.attname
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_class rc ON rc.oid = con.confrelid
          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
          JOIN pg_attribute ra ON ra.attrelid = con.confrelid AND ra.attnum = con.confkey[1]
         WHERE con.contype = 'f' AND n.nspname = %s AND c.relname = %s AND array_length(con.conkey, 1) = 1
         ORDER BY a.attname""", (place.schema, name)).fetchall()


def _declared_references(spec: TableSpec) -> list[tuple[str, str, str]]:
    """The same from the models, for a place whose tables carry no FK constraints."""
    for model in tenant_models():
        if model._meta.db_table == spec.name:
            return sorted((f.column, f.related_model._meta.db_table, f.target_field.column)
                          for f in model._meta.concrete_fields if f.is_relation)
    return []


def find_bad_references(conn, place: Place, tenant_id: int, tables: list[TableSpec]) -> list[BadReference]:
    """Cross-tenant and dangling references of the tenant's rows in the place, between the
    given tables (FKs from the catalog, or from the models when the place has none)."""
    names = {t.name for t in tables}
    found = []
    for table in tables:
        refs = foreign_keys(conn, place, table) or _declared_references(table)
        for column, parent, parent_column in refs:
            if parent not in names:
                continue
            c, p, pk = sql.Identifier(column), sql.Identifier(parent_column), sql.Identifier(table.pk)
            row = conn.execute(sql.SQL(
                "SELECT count(*), min(ch.{pk}) FROM {child} ch JOIN {parent} pa ON pa.{p} = ch.{c} "
                "WHERE ch.tenant_id = %s AND pa.tenant_id IS DISTINCT FROM ch.tenant_id").format(
                pk=pk, child=place.table(table.name), parent=place.table(parent), p=p, c=c), (tenant_id,)).fetchone()
            if row[0]:
                target, other = conn.execute(sql.SQL(
                    "SELECT pa.{p}, pa.tenant_id FROM {child} ch JOIN {parent} pa ON pa.{p} = ch.{c} "
                    "WHERE ch.{pk} = %s AND ch.tenant_id = %s LIMIT 1").format(
                    pk=pk, child=place.table(table.name), parent=place.table(parent), p=p, c=c),
                    (row[1], tenant_id)).fetchone()
                found.append(BadReference("cross-tenant", table.name, column, parent, int(row[0]), row[1],
                                          target, other))
            row = conn.execute(sql.SQL(
                "SELECT count(*), min(ch.{pk}) FROM {child} ch WHERE ch.tenant_id = %s AND ch.{c} IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM {parent} pa WHERE pa.{p} = ch.{c})").format(
                pk=pk, child=place.table(table.name), parent=place.table(parent), p=p, c=c), (tenant_id,)).fetchone()
            if row[0]:
                target = conn.execute(sql.SQL("SELECT {c} FROM {child} WHERE {pk} = %s AND tenant_id = %s").format(
                    c=c, child=place.table(table.name), pk=pk), (row[1], tenant_id)).fetchone()[0]
                found.append(BadReference("dangling", table.name, column, parent, int(row[0]), row[1], target))
    return found


def reference_problems(place: Place, tenant_id: int, tables: list[TableSpec]) -> list[str]:
    """One line per bad reference of the tenant where it lives (read in one REPEATABLE READ
    snapshot of its own connection): what `verify_tenant` adds to its problems."""
    with place.connect(autocommit=True, application_name="tenant-move verify references") as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            present = tables_in_place(conn, place, [t.name for t in tables])
            return [bad.describe() for bad in find_bad_references(conn, place, tenant_id,
                                                                  [t for t in tables if t.name in present])]
        finally:
            conn.execute("ROLLBACK")


__all__ = ["BadReference", "find_bad_references", "foreign_keys", "reference_problems"]
