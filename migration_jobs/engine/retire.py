"""Deleting a moved tenant's legacy rows from the shared tables without locking anyone out:
small batches, each its own short transaction, children before parents."""
from __future__ import annotations

from psycopg import sql

from migration_jobs.engine.capture import BYPASS
from migration_jobs.engine.places import Place
from migration_jobs.engine.tables import TableSpec


def delete_in_batches(place: Place, tenant_id: int, tables_children_first: list[TableSpec], batch: int,
                      on_batch=None) -> dict[str, int]:
    deleted = {}
    with place.connect() as conn:
        for table in tables_children_first:
            statement = sql.SQL(
                "DELETE FROM {t} WHERE {pk} IN (SELECT {pk} FROM {t} WHERE tenant_id = %s LIMIT %s)").format(
                t=place.table(table.name), pk=sql.Identifier(table.pk))
            while True:
                with conn.transaction():
                    conn.execute(BYPASS)  # the legacy rows are fenced against the app, not us
                    count = conn.execute(statement, (tenant_id, batch)).rowcount
                deleted[table.name] = deleted.get(table.name, 0) + count
                if on_batch and count:
                    on_batch(table.name, count)
                if count < batch:
                    break
    return deleted
