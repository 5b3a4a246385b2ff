"""The tenant-scoped tables a move carries, in foreign-key order (parents first)."""
from __future__ import annotations

from dataclasses import dataclass

from django.apps import apps
from psycopg import sql

from tenancy.routing import tenant_app_labels


@dataclass(frozen=True)
class TableSpec:
    name: str                       # table name, unqualified
    columns: tuple[str, ...]        # every concrete column, in model order
    pk: str                         # primary key column
    parents: tuple[str, ...] = ()   # tenant tables this one references

    def __str__(self):
        return self.name


def tenant_models():
    labels = tenant_app_labels()
    return [m for m in apps.get_models(include_auto_created=True)
            if m._meta.app_label in labels and not m._meta.proxy and m._meta.managed]


def tenant_tables() -> list[TableSpec]:
    """Every tenant table with a tenant_id column, parents before children."""
    specs = {}
    for model in tenant_models():
        meta = model._meta
        columns = tuple(f.column for f in meta.concrete_fields)
        if "tenant_id" not in columns:
            raise RuntimeError(f"{meta.db_table} is in a tenant app but has no tenant_id column; "
                               "every tenant-scoped table must carry its tenant")
        parents = tuple(sorted({f.related_model._meta.db_table for f in meta.concrete_fields
                                if f.is_relation and f.related_model in tenant_models_set()
                                and f.related_model is not model}))
        specs[meta.db_table] = TableSpec(meta.db_table, columns, meta.pk.column, parents)
    return _topological(specs)


def tenant_models_set():
    return set(tenant_models())


def _topological(specs: dict[str, TableSpec]) -> list[TableSpec]:
    ordered, seen, visiting = [], set(), set()

    def visit(name):
        if name in seen:
            return
        if name in visiting:
            raise RuntimeError(f"foreign-key cycle through {name}: cannot order the copy")
        visiting.add(name)
        for parent in specs[name].parents:
            visit(parent)
        visiting.discard(name)
        seen.add(name)
        ordered.append(specs[name])

    for name in sorted(specs):
        visit(name)
    return ordered


def tables_in_place(conn, place, names) -> set[str]:
    """Which of the tables exist in the place's own schema (pg_class / pg_namespace)."""
    rows = conn.execute(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')""",
        (place.schema, list(names))).fetchall()
    return {name for (name,) in rows}


def row_counts(conn, place, tables, tenant_id: int | None = None, *, missing_ok: bool = False) -> dict[str, int]:
    """Rows per table (name -> count) in the place, of one tenant or (tenant_id None) of all,
    in one query. `tables`: TableSpecs or names. `missing_ok`: tables that do not exist in
    the place are left out (else the query fails on them)."""
    names = [t if isinstance(t, str) else t.name for t in tables]
    if missing_ok:
        present = tables_in_place(conn, place, names)
        names = [n for n in names if n in present]
    if not names:
        return {}
    where = sql.SQL(" WHERE tenant_id = {}").format(sql.Literal(tenant_id)) if tenant_id is not None else sql.SQL("")
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {n}, count(*) FROM {t}{w}").format(n=sql.Literal(n), t=place.table(n), w=where)
        for n in names)
    counts = dict(conn.execute(query).fetchall())
    return {n: int(counts[n]) for n in names}
