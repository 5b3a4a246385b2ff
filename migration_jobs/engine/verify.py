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

from .places import Place
from .tables import TableSpec


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    checksum: str


def fingerprint_query(place: Place, table: TableSpec, *, keyed: bool = False) -> sql.Composed:
    row = sql.SQL(", ").join(sql.Identifier(c) for c in sorted(table.columns))
    only_keys = sql.SQL(" AND {} = ANY(%s)").format(sql.Identifier(table.pk)) if keyed else sql.SQL("")
    return sql.SQL(
        "SELECT count(*),"
        " coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0),"
        " coalesce(bit_xor(('x' || substr(h, 17, 16))::bit(64)::bigint), 0)"
        " FROM (SELECT md5(ROW({row})::text) AS h FROM {tbl} WHERE {tenant} = %s{only_keys}) AS rows"
    ).format(row=row, tbl=place.table(table.name), tenant=sql.Identifier("tenant_id"), only_keys=only_keys)


def fingerprint(conn: psycopg.Connection, place: Place, table: TableSpec, tenant_id: int,
                keys: list[int] | None = None) -> Fingerprint:
    """Row count and checksum of the tenant's rows of one table in the place (only the rows
    with these primary keys, when `keys` is given: what changed since a full comparison)."""
    params = (tenant_id,) if keys is None else (tenant_id, list(keys))
    rows, total, xor = conn.execute(fingerprint_query(place, table, keyed=keys is not None), params).fetchone()
    return Fingerprint(rows=int(rows), checksum=f"{int(total)}:{int(xor) & 0xFFFFFFFFFFFFFFFF:016x}")


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
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            present = tables_in_place(conn, place, [t.name for t in tables])
            for table in tables:
                if table.name not in present:
                    out[table.name] = None
                    continue
                fp = fingerprint(conn, place, table, tenant_id)
                foreign = foreign_rows(conn, place, table, tenant_id) if count_foreign else None
                out[table.name] = (fp, foreign)
        finally:
            if not conn.closed:
                conn.execute("ROLLBACK")
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
