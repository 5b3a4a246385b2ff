"""Prove that a copy lost nothing: per table, the row count and an order-independent
checksum of every row's full content, source (filtered by tenant) against target; no other
tenant's row in a dedicated target; every table present in the target's own schema (names
are always qualified, a missing table is reported, never looked up in public).

Checksum (HASH64): per row `hash_record_extended(ROW(<columns sorted by name>), 0)`; per
table the exact sum and the XOR of those hashes (a difference goes unseen with probability
~2^-64). Types whose hash does not tell values apart as exactly as their text (numeric,
jsonb, arrays, floats, ...) are hashed as text, printed canonically by Place.connect().
Format 1 archives carry LEGACY_MD5 (md5 of `ROW(...)::text` per row), still checkable.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from .copy import engine_session
from .places import Place
from .tables import TableSpec, tables_in_place


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    checksum: str


HASH64 = "hash64"        # hash_record_extended per row (the default)
LEGACY_MD5 = "md5"       # md5 of the row's text form (archives of format 1)

_CHECKSUM = {
    HASH64: sql.SQL("coalesce(sum(h), 0), coalesce(bit_xor(h), 0)"),
    LEGACY_MD5: sql.SQL("coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0), "
                        "coalesce(bit_xor(('x' || substr(h, 17, 16))::bit(64)::bigint), 0)"),
}
# Types whose hash function tells equal values apart exactly as their text does: hashed as
# they are. Every other type is hashed in its text form, either because it has no hash
# function (json, xml, geometric types) or because its equality is looser than its content:
# numeric 1.0 = 1.00, interval '1 day' = '24 hours', float -0 = 0, arrays with other bounds,
# jsonb numbers, case-insensitive extension types. A copy that changed such a value must fail.
NATIVE_HASH_TYPES = frozenset({
    "bigint", "integer", "smallint", "boolean", "text", "character varying", "character", '"char"', "name",
    "date", "timestamp with time zone", "timestamp without time zone", "time without time zone", "uuid",
    "bytea", "oid"})
_AS_TEXT: dict[tuple[int, str, tuple[str, ...]], frozenset[str]] = {}


def text_hashed_columns(conn: psycopg.Connection, place: Place, table: TableSpec) -> frozenset[str]:
    """The table's columns hashed in their text form (one catalog query per table and server
    version: a table's types come from its model, the same in every place)."""
    key = (conn.info.server_version, table.name, table.columns)
    if key not in _AS_TEXT:
        types = conn.execute(
            """SELECT a.attname, format_type(coalesce(nullif(t.typbasetype, 0), a.atttypid), NULL)
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped""",
            (place.table(table.name).as_string(conn),)).fetchall()
        _AS_TEXT[key] = frozenset(column for column, type_name in types if type_name not in NATIVE_HASH_TYPES)
    return _AS_TEXT[key]


def row_hash(conn: psycopg.Connection, place: Place, table: TableSpec, algorithm: str = HASH64) -> sql.Composed:
    """The per-row hash expression of the table in this place."""
    if algorithm == LEGACY_MD5:
        return _row_hash(table, LEGACY_MD5)
    return _row_hash(table, HASH64, text_hashed_columns(conn, place, table))


def _row_hash(table: TableSpec, algorithm: str = HASH64, as_text: frozenset[str] = frozenset()) -> sql.Composed:
    if algorithm == LEGACY_MD5:
        row = sql.SQL(", ").join(sql.Identifier(c) for c in sorted(table.columns))
        return sql.SQL("md5(ROW({})::text)").format(row)
    row = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) if c in as_text else sql.Identifier(c)
                             for c in sorted(table.columns))
    return sql.SQL("hash_record_extended(ROW({}), 0)").format(row)


# Every query hashes in a sub-select with OFFSET 0: without it the planner pulls the hash
# expression up into each aggregate and computes it twice per row (1.4x slower).


def fingerprint_query(place: Place, table: TableSpec, row_hash_sql: sql.Composable, *, keyed: bool = False,
                      algorithm: str = HASH64) -> sql.Composed:
    """count, sum and xor of the tenant's rows (parameter: the tenant id; with `keyed`, then
    an array of primary keys: only those rows)."""
    only_keys = sql.SQL(" AND {} = ANY(%s)").format(sql.Identifier(table.pk)) if keyed else sql.SQL("")
    return sql.SQL(
        "SELECT count(*), {checksum} FROM (SELECT {hash} AS h FROM {tbl} WHERE {tenant} = %s{only_keys} OFFSET 0) AS hashed"
    ).format(checksum=_CHECKSUM[algorithm], hash=row_hash_sql, tbl=place.table(table.name),
             tenant=sql.Identifier("tenant_id"), only_keys=only_keys)


def _fingerprint_and_foreign_query(place: Place, table: TableSpec, row_hash_sql: sql.Composable) -> sql.Composed:
    """The same plus the count of other tenants' rows, in one scan of the table
    (parameter: the tenant id)."""
    tenant = sql.Identifier("tenant_id")
    return sql.SQL(
        "SELECT count(h), {checksum}, count(*) - count(h) FROM "
        "(SELECT CASE WHEN {tenant} IS NOT DISTINCT FROM %s THEN {hash} END AS h FROM {tbl} OFFSET 0) AS hashed"
    ).format(checksum=_CHECKSUM[HASH64], hash=row_hash_sql, tbl=place.table(table.name), tenant=tenant)


def _fingerprint(rows, total, xor) -> Fingerprint:
    return Fingerprint(rows=int(rows), checksum=f"{int(total)}:{int(xor) & 0xFFFFFFFFFFFFFFFF:016x}")


def fingerprint(conn: psycopg.Connection, place: Place, table: TableSpec, tenant_id: int,
                keys: list[int] | None = None, *, algorithm: str = HASH64) -> Fingerprint:
    """Row count and checksum of the tenant's rows of one table in the place (only the rows
    with these primary keys when `keys` is given: what changed since a full comparison)."""
    query = fingerprint_query(place, table, row_hash(conn, place, table, algorithm), keyed=keys is not None,
                              algorithm=algorithm)
    params = (tenant_id,) if keys is None else (tenant_id, list(keys))
    return _fingerprint(*conn.execute(query, params).fetchone())


def in_buckets(table: TableSpec, width: int) -> sql.Composable:
    """`AND <the row's key is in one of the buckets>` (parameter: an array of bucket numbers).
    A hashed semi-join: `= ANY(array)` would test every row against every bucket."""
    return sql.SQL(" AND {} / {}::bigint IN (SELECT unnest(%s::bigint[]))").format(
        sql.Identifier(table.pk), sql.Literal(width))


def bucket_fingerprints(conn: psycopg.Connection, place: Place, table: TableSpec, tenant_id: int,
                        width: int, only: list[int] | None = None) -> dict[int, Fingerprint]:
    """Count and checksum of the tenant's rows per bucket of `width` consecutive primary keys
    (bucket = key // width; `only`: just these buckets): where two places hold nearly the same
    rows, only the buckets whose fingerprints differ need copying."""
    where = in_buckets(table, width) if only is not None else sql.SQL("")
    rows = conn.execute(sql.SQL(
        "SELECT b, count(*), {checksum} FROM (SELECT {pk} / {width}::bigint AS b, {hash} AS h FROM {tbl} "
        "WHERE {tenant} = %s{where} OFFSET 0) AS hashed GROUP BY b").format(
        checksum=_CHECKSUM[HASH64], pk=sql.Identifier(table.pk), width=sql.Literal(width),
        hash=row_hash(conn, place, table),
        tbl=place.table(table.name), tenant=sql.Identifier("tenant_id"), where=where),
        (tenant_id, only) if only is not None else (tenant_id,)).fetchall()
    return {int(b): _fingerprint(n, total, xor) for b, n, total, xor in rows}


def combined(parts) -> Fingerprint:
    """The fingerprint of a table from those of its buckets (sums add up, XORs combine)."""
    rows = total = xor = 0
    for fp in parts:
        part_total, part_xor = fp.checksum.split(":")
        rows, total, xor = rows + fp.rows, total + int(part_total), xor ^ int(part_xor, 16)
    return Fingerprint(rows=rows, checksum=f"{total}:{xor:016x}")


def foreign_rows(conn: psycopg.Connection, place: Place, table: TableSpec | str, tenant_id: int) -> int:
    """Rows of the place's table that are not the tenant's (tenant_id other or NULL)."""
    name = table.name if isinstance(table, TableSpec) else table
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS DISTINCT FROM %s").format(
        place.table(name), sql.Identifier("tenant_id")), (tenant_id,)).fetchone()[0])


@dataclass
class VerifyReport:
    tenant_id: int
    source: str
    target: str
    tables: dict[str, dict] = field(default_factory=dict)

    @property
    def mismatches(self) -> list[str]:
        return [name for name, result in self.tables.items() if not result["ok"]]

    @property
    def ok(self) -> bool:
        return bool(self.tables) and not self.mismatches

    def as_dict(self) -> dict:
        return {"tenant_id": self.tenant_id, "source": self.source, "target": self.target, "ok": self.ok,
                "mismatches": self.mismatches, "tables": {k: dict(v) for k, v in self.tables.items()}}

    def summary(self) -> str:
        if self.ok:
            rows = sum(t["source_rows"] or 0 for t in self.tables.values())
            return f"{len(self.tables)} tables, {rows} rows identical"
        return "; ".join(f"{name}: {', '.join(self.tables[name]['problems'])}" for name in self.mismatches)


def _measure(place: Place, tenant_id: int, tables: list[TableSpec], count_foreign: bool) -> dict:
    """Fingerprints (and foreign rows) of every table, from one REPEATABLE READ snapshot."""
    out = {}
    with place.connect(autocommit=True, application_name="tenant-move verify") as conn:
        engine_session(conn)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            present = tables_in_place(conn, place, [t.name for t in tables])
            for table in tables:
                if table.name not in present:
                    out[table.name] = None
                    continue
                if count_foreign:  # a dedicated target: one scan for both
                    rows, total, xor, foreign = conn.execute(
                        _fingerprint_and_foreign_query(place, table, row_hash(conn, place, table)),
                        (tenant_id,)).fetchone()
                    out[table.name] = (_fingerprint(rows, total, xor), int(foreign))
                else:
                    out[table.name] = (fingerprint(conn, place, table, tenant_id), None)
        finally:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                pass
    return out


def verify_tenant(source: Place, target: Place, tenant_id: int, tables: list[TableSpec], *,
                  target_is_dedicated: bool = True) -> VerifyReport:
    """Compare the tenant's rows of every table in source and target (both measured at once,
    each from its own snapshot). For a dedicated target, any other tenant's row is a mismatch."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tenant-verify") as pool:
        src_future = pool.submit(_measure, source, tenant_id, tables, False)
        dst_future = pool.submit(_measure, target, tenant_id, tables, target_is_dedicated)
        src, dst = src_future.result(), dst_future.result()
    report = VerifyReport(tenant_id=tenant_id, source=str(source), target=str(target))
    for table in tables:
        s, d = src[table.name], dst[table.name]
        problems = []
        if s is None:
            problems.append(f"missing in {source}")
        if d is None:
            problems.append(f"missing in {target}")
        result = {"source_rows": s[0].rows if s else None, "target_rows": d[0].rows if d else None,
                  "source_checksum": s[0].checksum if s else None, "target_checksum": d[0].checksum if d else None,
                  "foreign_rows": d[1] if d else None}
        if s and d:
            if s[0].rows != d[0].rows:
                problems.append(f"{s[0].rows} rows in source, {d[0].rows} in target")
            elif s[0].checksum != d[0].checksum:
                problems.append("same row count, different content")
        if d and d[1]:
            problems.append(f"{d[1]} rows of other tenants in target")
        result["ok"] = not problems
        result["problems"] = problems
        report.tables[table.name] = result
    return report


__all__ = ["HASH64", "LEGACY_MD5", "Fingerprint", "VerifyReport", "fingerprint", "foreign_rows", "verify_tenant"]
