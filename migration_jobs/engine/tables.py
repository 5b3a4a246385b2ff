"""The tenant-scoped tables a move carries, in foreign-key order (parents first)."""
from __future__ import annotations

from dataclasses import dataclass

from django.apps import apps


@dataclass(frozen=True)
class TableSpec:
    name: str                       # table name, unqualified
    columns: tuple[str, ...]        # every concrete column, in model order
    pk: str                         # primary key column
    parents: tuple[str, ...] = ()   # tenant tables this one references

    def __str__(self):
        return self.name


def tenant_models():
    from tenancy.routing import tenant_app_labels

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
