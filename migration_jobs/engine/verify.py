"""Prove that a copy lost nothing: per table, row counts and an order-independent checksum
of every row's full content, source (filtered by tenant) against target, plus proof that no
other tenant's row is in a dedicated target and that every table really is in the target's
schema (a query never falls through to public via search_path: names are always qualified,
and a missing table is reported, not looked up elsewhere).

Checksum: for each row, md5 of its text form `ROW(<columns sorted by name>)::text`; the
table's checksum combines the sum (exact numeric) of the first 64 bits of every row's hash
and the XOR of the last 64 bits. Both are order-independent; a changed, missing, extra or
duplicated row changes both, so a collision needs two independent 64-bit coincidences.
The text form depends on session settings: connections from Place.connect() set TimeZone,
DateStyle, IntervalStyle, extra_float_digits and bytea_output canonically, so places on
different servers (and versions) print the same rows the same way.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from .copy import engine_session
from .places import Place
from .tables import TableSpec


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    checksum: str


_CHECKSUM = sql.SQL("coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0), "
                    "coalesce(bit_xor(('x' || substr(h, 17, 16))::bit(64)::bigint), 0)")


def _row_hash(table: TableSpec) -> sql.Composed:
    row = sql.SQL(", ").join(sql.Identifier(c) for c in sorted(table.columns))
    return sql.SQL("md5(ROW({})::text)").format(row)


def fingerprint_query(place: Place, table: TableSpec, *, keyed: bool = False) -> sql.Composed:
    """count, sum and xor of the tenant's rows (parameter: the tenant id; with `keyed`, then
    an array of primary keys: only those rows)."""
    only_keys = sql.SQL(" AND {} = ANY(%s)").format(sql.Identifier(table.pk)) if keyed else sql.SQL("")
    return sql.SQL(
        "SELECT count(*), {checksum} FROM (SELECT {hash} AS h FROM {tbl} WHERE {tenant} = %s{only_keys}) AS hashed"
    ).format(checksum=_CHECKSUM, hash=_row_hash(table), tbl=place.table(table.name),
             tenant=sql.Identifier("tenant_id"), only_keys=only_keys)


def _fingerprint_and_foreign_query(place: Place, table: TableSpec) -> sql.Composed:
    """The same plus the count of other tenants' rows, in one scan of the table
    (parameter: the tenant id)."""
    tenant = sql.Identifier("tenant_id")
    return sql.SQL(
        "SELECT count(h), {checksum}, count(*) - count(h) FROM "
        "(SELECT CASE WHEN {tenant} IS NOT DISTINCT FROM %s THEN {hash} END AS h FROM {tbl}) AS hashed"
    ).format(checksum=_CHECKSUM, hash=_row_hash(table), tbl=place.table(table.name), tenant=tenant)


def _fingerprint(rows, total, xor) -> Fingerprint:
    return Fingerprint(rows=int(rows), checksum=f"{int(total)}:{int(xor) & 0xFFFFFFFFFFFFFFFF:016x}")


def fingerprint(conn: psycopg.Connection, place: Place, table: TableSpec, tenant_id: int,
                keys: list[int] | None = None) -> Fingerprint:
    """Row count and checksum of the tenant's rows of one table in the place (only the rows
    with these primary keys when `keys` is given: what changed since a full comparison)."""
    if keys is None:
        return _fingerprint(*conn.execute(fingerprint_query(place, table), (tenant_id,)).fetchone())
    return _fingerprint(*conn.execute(fingerprint_query(place, table, keyed=True), (tenant_id, list(keys))
                                      ).fetchone())


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
        "WHERE {tenant} = %s{where}) AS hashed GROUP BY b").format(
        checksum=_CHECKSUM, pk=sql.Identifier(table.pk), width=sql.Literal(width), hash=_row_hash(table),
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


def tables_in_place(conn: psycopg.Connection, place: Place, names) -> set[str]:
    """Which of the tables exist in the place's own schema (pg_class / pg_namespace)."""
    rows = conn.execute(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')""",
        (place.schema, list(names))).fetchall()
    return {name for (name,) in rows}


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
                        _fingerprint_and_foreign_query(place, table), (tenant_id,)).fetchone()
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


__all__ = ["Fingerprint", "VerifyReport", "fingerprint", "foreign_rows", "tables_in_place", "verify_tenant"]
