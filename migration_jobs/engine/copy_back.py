"""Moving a tenant back into the shared tables, in ONE transaction on the shared database:
delete its legacy rows, copy every row from the dedicated place, compare every table
(counts and checksums) against the source, and only then commit (sequences are raised just
before, in a short transaction of their own). Any failure
rolls the transaction back: the shared database is left exactly as it was."""
from __future__ import annotations

from psycopg import sql

from migration_jobs.engine.capture import BYPASS
from migration_jobs.engine.copy import copy_table
from migration_jobs.engine.places import Place
from migration_jobs.engine.sequences import sequence_positions, set_sequences
from migration_jobs.engine.tables import TableSpec
from migration_jobs.engine.verify import fingerprint


class CopyBackMismatch(Exception):
    pass


def copy_back(dedicated: Place, shared: Place, tenant_id: int, tables: list[TableSpec], *,
              checkpoint=lambda name: None) -> dict:
    rows = bytes_ = legacy = 0
    per_table = {}
    # Raise the shared sequences past every key the tenant has used, first and briefly:
    # inside the long copy transaction their locks would hold other tenants' writers.
    with dedicated.connect() as src:
        floor = sequence_positions(src, dedicated, tables)
    with shared.connect() as conn:
        set_sequences(conn, shared, tables, floor)
        conn.commit()
    with dedicated.connect(repeatable_read=True, read_only=True) as src, shared.connect() as dst:
        dst.execute(BYPASS)  # the tenant's legacy rows here are fenced against the app, not us
        dst.execute("SET CONSTRAINTS ALL DEFERRED")
        for table in reversed(tables):  # children first
            legacy += dst.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(
                shared.table(table.name)), (tenant_id,)).rowcount
        for table in tables:  # parents first
            result = copy_table(src, dst, dedicated, shared, table, tenant_id)
            rows += result.rows
            bytes_ += result.bytes
            checkpoint(f"copy_back:{table.name}")
        dst.execute("SET CONSTRAINTS ALL IMMEDIATE")  # foreign keys checked before we verify
        mismatches = []
        for table in tables:
            a, b = fingerprint(src, dedicated, table, tenant_id), fingerprint(dst, shared, table, tenant_id)
            per_table[table.name] = {"rows": b.rows, "checksum": b.checksum, "ok": a == b}
            if a != b:
                mismatches.append(table.name)
        if mismatches:
            raise CopyBackMismatch(f"rows differ after copying back: {', '.join(mismatches)}; nothing committed")
        checkpoint("copy_back:before-commit")
        dst.commit()
        src.rollback()
    return {"rows": rows, "bytes": bytes_, "legacy_rows_replaced": legacy, "tables": per_table}
