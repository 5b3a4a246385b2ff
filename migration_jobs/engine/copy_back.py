"""Moving a tenant back into the shared tables, in ONE transaction on the shared database.

Until they are retired, the tenant's legacy rows are still in the shared tables (fenced), and
most of them are usually unchanged since the move out. So the copy back reuses them: per
table it compares the rows in buckets of BUCKET_KEYS consecutive primary keys (count and
checksum per bucket, both sides in one snapshot each), deletes the legacy rows of the buckets
that differ and copies only those buckets from the dedicated place. After retirement every
bucket differs and everything is copied. Then the replaced buckets are compared again
(counts and checksums): every bucket, so every table, now equals the source, and only then
is the transaction committed (sequences are raised just before, in a short transaction of
their own). Any failure rolls the transaction
back: the shared database is left exactly as it was."""
from __future__ import annotations

from psycopg import sql

from migration_jobs.engine.capture import BYPASS
from migration_jobs.engine.copy import copy_table
from migration_jobs.engine.places import Place
from migration_jobs.engine.sequences import sequence_positions, set_sequences
from migration_jobs.engine.tables import TableSpec
from migration_jobs.engine.verify import bucket_fingerprints, combined, in_buckets
from migration_jobs.exceptions import CopyBackMismatch

BUCKET_KEYS = 1024  # primary keys per compared bucket: small enough that one changed row costs little


def copy_back(dedicated: Place, shared: Place, tenant_id: int, tables: list[TableSpec], *,
              margin: int = 0, checkpoint=lambda name: None) -> dict:
    """`margin`: for an online move back, where the tenant keeps inserting in the dedicated
    place: the shared sequences skip that many keys past the dedicated ones, which the
    tenant's new rows take meanwhile (other tenants' new rows in the shared tables start
    after them: no key is handed out twice)."""
    rows = bytes_ = replaced = 0
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
        # The dedicated side in one snapshot; the shared side's rows of the tenant are fenced
        # (nobody else writes them) and this transaction changes only the stale buckets.
        theirs = {t.name: bucket_fingerprints(src, dedicated, t, tenant_id, BUCKET_KEYS) for t in tables}
        stale = {}
        for table in tables:
            ours = bucket_fingerprints(dst, shared, table, tenant_id, BUCKET_KEYS)
            truth = theirs[table.name]
            stale[table.name] = sorted(b for b in truth.keys() | ours.keys() if truth.get(b) != ours.get(b))
        for table in reversed(tables):  # children first
            replaced += dst.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(
                shared.table(table.name)) + in_buckets(table, BUCKET_KEYS), (tenant_id, stale[table.name])).rowcount
        copied = {}
        for table in tables:  # parents first
            result = copy_table(src, dst, dedicated, shared, table, tenant_id,
                                only=(in_buckets(table, BUCKET_KEYS), (stale[table.name],)))
            copied[table.name] = result.rows
            rows += result.rows
            bytes_ += result.bytes
            checkpoint(f"copy_back:{table.name}")
        dst.execute("SET CONSTRAINTS ALL IMMEDIATE")  # foreign keys checked before we verify
        # Every bucket is equal now: the replaced ones are compared again, the others were
        # equal before and nothing touched them.
        mismatches = []
        for table in tables:
            truth = theirs[table.name]
            after = bucket_fingerprints(dst, shared, table, tenant_id, BUCKET_KEYS, only=stale[table.name])
            ok = all(after.get(b) == truth.get(b) for b in stale[table.name])
            whole = combined(truth.values())
            per_table[table.name] = {"rows": whole.rows, "copied": copied[table.name], "checksum": whole.checksum,
                                     "compared_buckets": len(truth), "replaced_buckets": len(stale[table.name]),
                                     "ok": ok}
            if not ok:
                mismatches.append(table.name)
        if mismatches:
            raise CopyBackMismatch(f"rows differ after copying back: {', '.join(mismatches)}; nothing committed")
        checkpoint("copy_back:before-commit")
        dst.commit()
        src.rollback()
    reused = sum(t["rows"] - t["copied"] for t in per_table.values())  # legacy rows kept as they were
    return {"rows": rows, "bytes": bytes_, "legacy_rows_replaced": replaced, "legacy_rows_reused": reused,
            "bucket_keys": BUCKET_KEYS, "tables": per_table}
