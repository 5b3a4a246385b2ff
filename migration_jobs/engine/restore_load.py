"""Restore, loading: write an archive's rows for one tenant into a place, in ONE transaction
the caller commits (or rolls back on any exception).

Optional DELETE of the tenant's rows (`replace`), then `COPY ... FROM STDIN (FORMAT binary)`
streamed from each gzip member (expansion capped), tables in FK order with FKs deferred. Into
the shared tables, or with a tenant id rewrite, rows go through a TEMP staging table first:
checked against the manifest there, tenant_id rewritten there, keys checked against other
tenants' rows (engine/collisions.py), then `INSERT ... SELECT`. Then FKs are checked,
cross-tenant references refused (engine/references.py), every table verified (count and
checksum) and sequences set (engine/restore_ids.py).

With a tenant id rewrite the manifest checksum (which covers tenant_id) cannot match the
target, so the proof has two links: the staged rows (original id) match the manifest exactly;
then the staged rows' fingerprint for the new id must equal the target's.
"""
from __future__ import annotations

import zlib

import psycopg
from psycopg import sql

from migration_jobs.engine.archive import CHUNK
from migration_jobs.engine.archive_read import open_table_stream
from migration_jobs.engine.collisions import colliding_keys
from migration_jobs.engine.copy import copied_rows
from migration_jobs.engine.expansion import ExpansionCap
from migration_jobs.engine.places import CANONICAL_SESSION, Place
from migration_jobs.engine.references import find_bad_references
from migration_jobs.engine.restore_ids import checked_sequence_floor
from migration_jobs.engine.restore_plan import check_columns
from migration_jobs.engine.sequences import set_sequences
from migration_jobs.engine.tables import TableSpec, tenant_tables
from migration_jobs.engine.verify import HASH64, fingerprint, foreign_rows
from migration_jobs.exceptions import ArchiveError, RestoreConflict, RestoreFailed

STAGING = Place("staging", "pg_temp", {}, "staging tables")


def _canonical(conn) -> None:
    for key, value in CANONICAL_SESSION.items():
        conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(key), sql.Literal(value)))


def _stage_spec(spec: TableSpec) -> TableSpec:
    return TableSpec(f"restore_{spec.name}"[:63], spec.columns, spec.pk)


def _copy_in(conn, tar, entry: dict, relation: sql.Composable, spec: TableSpec, cap: ExpansionCap | None = None
             ) -> int:
    """Stream one member's COPY data into `relation`; the member's SHA-256 is checked again,
    its expanded size is capped while it streams (engine/expansion.py)."""
    gz, raw = open_table_stream(tar, entry["member"], cap)
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        relation, sql.SQL(", ").join(map(sql.Identifier, spec.columns)))
    try:
        with conn.cursor() as cur:
            with cur.copy(statement) as copy:
                while True:
                    try:
                        chunk = gz.read(CHUNK)
                    except (EOFError, OSError, zlib.error) as exc:
                        raise ArchiveError(f"archive is truncated or damaged in {entry['member']} ({exc})") from None
                    if not chunk:
                        break
                    copy.write(chunk)
            rows = copied_rows(cur)
    except (psycopg.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
        # The server refused the stream itself (field counts, lengths, binary values, bytes
        # after the trailer): the archive is bad, not the state here. Primary message only.
        raise ArchiveError(f"{entry['member']} is not valid binary COPY data for {spec.name} "
                           f"({exc.diag.message_primary or type(exc).__name__}); nothing was restored") from None
    raw.drain()
    if raw.hexdigest() != entry["sha256"]:
        raise ArchiveError(f"checksum mismatch in {entry['member']} while loading; the archive changed")
    return rows


def load(conn, place: Place, tar, tables: list[tuple[TableSpec, dict]], *, archive_tenant_id: int,
         tenant_id: int, replace: bool, staged: bool, check_collisions: bool, dedicated: bool,
         sequences_floor: dict | None = None, on_table=None, algorithm: str = HASH64) -> dict:
    """Write the archive's rows for `tenant_id` into `place` through `conn`, which is in a
    transaction this function never commits. Raises on any problem (the caller rolls back)."""
    _canonical(conn)
    conn.execute("SET CONSTRAINTS ALL DEFERRED")
    check_columns(conn, place, tables)
    everything = tenant_tables()
    present = {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p')", (place.schema,)).fetchall()}
    replaced = 0
    for spec in reversed(everything):  # children first
        if spec.name not in present:
            continue
        if replace:
            replaced += conn.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(
                place.table(spec.name)), (tenant_id,)).rowcount
        elif conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE tenant_id = %s)").format(
                place.table(spec.name)), (tenant_id,)).fetchone()[0]:
            raise RestoreConflict(f"{spec.name} already holds rows of tenant id {tenant_id} in {place}; "
                                  "restore with replace (--replace, API: replace=true) to replace them")

    expected: dict[str, tuple[int, str]] = {}
    per_table: dict[str, dict] = {}
    cap = ExpansionCap()
    for spec, entry in tables:
        if staged:
            stage = _stage_spec(spec)
            conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                sql.Identifier(stage.name), place.table(spec.name)))
            rows = _copy_in(conn, tar, entry, STAGING.table(stage.name), spec, cap)
            fp = fingerprint(conn, STAGING, stage, archive_tenant_id, algorithm=algorithm)
            if (fp.rows, fp.checksum) != (entry["rows"], entry["checksum"]):
                raise ArchiveError(f"{spec.name}: the archive's rows do not match its manifest "
                                   f"({fp.rows} rows, checksum {fp.checksum}; the manifest says {entry['rows']} "
                                   f"rows, {entry['checksum']}); nothing was restored")
            if tenant_id != archive_tenant_id:
                conn.execute(sql.SQL("UPDATE {} SET tenant_id = %s").format(STAGING.table(stage.name)), (tenant_id,))
                fp = fingerprint(conn, STAGING, stage, tenant_id, algorithm=algorithm)
            expected[spec.name] = (fp.rows, fp.checksum)
        else:
            if tenant_id != archive_tenant_id:
                raise ValueError("a tenant id rewrite needs staging")
            rows = _copy_in(conn, tar, entry, place.table(spec.name), spec, cap)
            expected[spec.name] = (entry["rows"], entry["checksum"])
        if rows != entry["rows"]:
            raise ArchiveError(f"{spec.name}: {rows} rows in the archive, the manifest says {entry['rows']}")
        per_table[spec.name] = {"rows": rows}
        if on_table and not staged:
            on_table(spec.name, rows)

    if staged:
        if check_collisions:
            collisions = colliding_keys(conn, place, [(spec, STAGING.table(_stage_spec(spec).name)) for spec, _ in tables],
                                        tenant_id)
            if collisions:
                listed = ", ".join(f"{k} ({v} rows)" for k, v in collisions.items())
                raise RestoreConflict(f"keys of the archive collide with other tenants' rows in {place}: {listed}; "
                                      "nothing was restored", {"collisions": collisions})
        for spec, entry in tables:
            cols = sql.SQL(", ").join(map(sql.Identifier, spec.columns))
            conn.execute(sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {s}").format(
                t=place.table(spec.name), c=cols, s=STAGING.table(_stage_spec(spec).name)))
            if on_table:
                on_table(spec.name, per_table[spec.name]["rows"])

    try:
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # foreign keys checked before we verify
    except psycopg.errors.IntegrityError as exc:
        raise RestoreFailed(f"restored rows break a constraint: {exc.diag.message_primary}; nothing was restored"
                            ) from None
    refuse_bad_references(conn, place, tenant_id, [spec for spec, _ in tables])
    mismatches = []
    for spec, entry in tables:
        fp = fingerprint(conn, place, spec, tenant_id, algorithm=algorithm)
        ok = (fp.rows, fp.checksum) == expected[spec.name]
        per_table[spec.name].update(checksum=fp.checksum, ok=ok)
        if dedicated:
            foreign = foreign_rows(conn, place, spec, tenant_id)
            per_table[spec.name]["foreign_rows"] = foreign
            ok = ok and not foreign
        if not ok:
            mismatches.append(spec.name)
    if mismatches:
        raise ArchiveError(f"rows restored into {', '.join(mismatches)} do not match the archive's checksums "
                           "(the manifest was changed, or the archive is damaged); nothing was restored")
    floor = checked_sequence_floor(conn, place, [spec for spec, _ in tables], tenant_id, sequences_floor or {})
    sequences = set_sequences(conn, place, [spec for spec, _ in tables], floor)
    return {"tables": per_table, "replaced_rows": replaced, "sequences": sequences,
            "rows": sum(t["rows"] for t in per_table.values())}


def refuse_bad_references(conn, place: Place, tenant_id: int, tables: list[TableSpec]) -> None:
    """ArchiveError (before commit) when a restored row points at another tenant's row (or at
    a row that does not exist, where no constraint caught it): one line, the first one found."""
    bad = find_bad_references(conn, place, tenant_id, tables)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ArchiveError(f"restored rows of tenant id {tenant_id}: {bad[0].describe()}{more}; "
                           "nothing was restored")
