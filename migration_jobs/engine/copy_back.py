"""Moving a tenant back into the shared tables, in ONE transaction on the shared database.

Until they are retired, the tenant's legacy rows are still in the shared tables (fenced), and
most of them are usually unchanged since the move out. So the copy back reuses them: per
table it compares the rows in buckets of BUCKET_KEYS consecutive primary keys (count and
checksum per bucket, both sides in one snapshot each), deletes the legacy rows of the buckets
that differ and copies only those buckets from the dedicated place. After retirement every
bucket differs and everything is copied. Then every table is compared in full (counts and
checksums) against the source, and only then is the transaction committed (sequences are
raised just before, in a short transaction of their own). Any failure rolls the transaction
back: the shared database is left exactly as it was."""
from __future__ import annotations

from psycopg import sql

from migration_jobs.engine.capture import BYPASS
from migration_jobs.engine.copy import copy_table
from migration_jobs.engine.places import Place
from migration_jobs.engine.sequences import sequence_positions, set_sequences
from migration_jobs.engine.tables import TableSpec
from migration_jobs.engine.verify import bucket_fingerprints, fingerprint

BUCKET_KEYS = 1024  # primary keys per compared bucket: small enough that one changed row costs little


class CopyBackMismatch(Exception):
    pass


def _in_buckets(table: TableSpec) -> sql.Composable:
    # A hashed semi-join: `= ANY(array)` would test every row against every bucket.
    return sql.SQL(" AND {} / {}::bigint IN (SELECT unnest(%s::bigint[]))").format(
        sql.Identifier(table.pk), sql.Literal(BUCKET_KEYS))


def stale_buckets(src, dst, dedicated: Place, shared: Place, table: TableSpec, tenant_id: int) -> list[int]:
    """Buckets of keys whose rows differ between the dedicated place and the shared tables."""
    theirs = bucket_fingerprints(src, dedicated, table, tenant_id, BUCKET_KEYS)
    ours = bucket_fingerprints(dst, shared, table, tenant_id, BUCKET_KEYS)
    return sorted(b for b in theirs.keys() | ours.keys() if theirs.get(b) != ours.get(b))


def copy_back(dedicated: Place, shared: Place, tenant_id: int, tables: list[TableSpec], *,
              margin: int = 0, checkpoint=lambda name: None) -> dict:
    """`margin`: for an online move back, where the tenant keeps inserting in the dedicated
    place: the shared sequences skip that many keys past the dedicated ones, which the
    tenant's new rows take meanwhile (other tenants' new rows in the shared tables start
    after them: no key is handed out twice)."""
    rows = bytes_ = replaced = kept = 0
    per_table = {}
    # Raise the shared sequences past every key the tenant has used, first and briefly:
    # inside the long copy transaction their locks would hold other tenants' writers.
    with dedicated.connect() as src:
        floor = {table: value + margin for table, value in sequence_positions(src, dedicated, tables).items()}
    with shared.connect() as conn:
        set_sequences(conn, shared, tables, floor)
        conn.commit()
    with dedicated.connect(repeatable_read=True, read_only=True) as src, shared.connect() as dst:
        dst.execute(BYPASS)  # the tenant's legacy rows here are fenced against the app, not us
        dst.execute("SET CONSTRAINTS ALL DEFERRED")
        stale = {t.name: stale_buckets(src, dst, dedicated, shared, t, tenant_id) for t in tables}
        for table in reversed(tables):  # children first
            replaced += dst.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(
                shared.table(table.name)) + _in_buckets(table), (tenant_id, stale[table.name])).rowcount
        copied = {}
        for table in tables:  # parents first
            result = copy_table(src, dst, dedicated, shared, table, tenant_id,
                                only=(_in_buckets(table), (stale[table.name],)))
            copied[table.name] = result.rows
            rows += result.rows
            bytes_ += result.bytes
            checkpoint(f"copy_back:{table.name}")
        dst.execute("SET CONSTRAINTS ALL IMMEDIATE")  # foreign keys checked before we verify
        mismatches = []
        for table in tables:
            a, b = fingerprint(src, dedicated, table, tenant_id), fingerprint(dst, shared, table, tenant_id)
            per_table[table.name] = {"rows": b.rows, "copied": copied[table.name], "checksum": b.checksum,
                                     "ok": a == b}
            kept += a.rows
            if a != b:
                mismatches.append(table.name)
        if mismatches:
            raise CopyBackMismatch(f"rows differ after copying back: {', '.join(mismatches)}; nothing committed")
        checkpoint("copy_back:before-commit")
        dst.commit()
        src.rollback()
    kept -= rows  # rows in place now that were not copied: legacy rows reused as they were
    return {"rows": rows, "bytes": bytes_, "legacy_rows_replaced": replaced, "legacy_rows_reused": kept,
            "tables": per_table}
