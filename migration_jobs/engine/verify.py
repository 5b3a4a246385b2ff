"""Prove that a copy lost nothing: per table, the row count and an order-independent
checksum of every row's full content, source (filtered by tenant) against target; no other
tenant's row in a dedicated target; every table present in the target's own schema (names
are always qualified, a missing table is reported, never looked up in public).

Checksum (HASH64): per row `hash_record_extended(ROW(<columns sorted by name>), 0)`; per
table the exact sum and the XOR of those hashes (a difference goes unseen with probability
~2^-64). Types whose hash does not tell values apart as exactly as their text (numeric,
jsonb, arrays, floats, ...) are hashed as text, printed canonically by Place.connect().
Format 1 archives carry LEGACY_MD5 (md5 of `ROW(...)::text` per row), still checkable.

Speed (benchmarks/verify_speed.py, `manage.py bench_verify`): the row hash is the cost; the
cheaper hashes measured were inexact (jsonb numbers, array bounds) or no faster. What pays
is keeping every core busy: each place is read by VERIFY_WORKERS connections that share one
exported snapshot (still one consistent view per place), pulling tables largest first, both
places at once; other tenants' rows are counted through the tenant_id index, not in the scan.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable

import psycopg
from psycopg import sql

from .copy import engine_session
from .places import Place
from .tables import TableSpec

# Connections per place, sharing its snapshot. Both places are read at once, so a move's
# verify runs 2x this many backends: on the 2-core benchmark machine 2 per place keep both
# cores busy to the end (the slower side still has two); 3 did the same work in 0.9-1.05x
# the wall time under load, for two more connections (bench_verify).
VERIFY_WORKERS = 2
# A second connection costs a login (~10-50 ms with SCRAM): worth it only when the place's
# tables of the tenant are big enough (estimated from the smaller side's table sizes).
EXTRA_WORKER_BYTES = 16 * 1024 * 1024


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
    """Rows of the place's table that are not the tenant's (tenant_id other or NULL). Written
    as two ranges and IS NULL so that the tenant_id index answers it: in a dedicated place
    that costs a few index pages, not a scan (IS DISTINCT FROM reads the whole index)."""
    name = table.name if isinstance(table, TableSpec) else table
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {tbl} WHERE {t} < %s OR {t} > %s OR {t} IS NULL").format(
        tbl=place.table(name), t=sql.Identifier("tenant_id")), (tenant_id, tenant_id)).fetchone()[0])


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


def _present_tables(conn: psycopg.Connection, place: Place, names) -> dict[str, int]:
    """The tables that exist in the place's own schema, with their size in bytes (heap and
    TOAST: what a scan reads)."""
    rows = conn.execute(
        """SELECT c.relname, pg_table_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')""",
        (place.schema, list(names))).fetchall()
    return {name: int(size) for name, size in rows}


def _begin_snapshot(conn: psycopg.Connection, snapshot: str | None = None) -> None:
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    if snapshot is not None:
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))


class PlaceSnapshot:
    """Connections to one place that all see the same snapshot: the first one opens a
    REPEATABLE READ transaction and exports it (pg_export_snapshot), the others import it
    (SET TRANSACTION SNAPSHOT) while the first is still open. Every connection stays in its
    transaction until close(), so a late joiner can always import it."""

    def __init__(self, place: Place, application_name: str = "tenant-move verify"):
        self.place, self.application_name = place, application_name
        self.conns: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        first = self._connect()
        try:
            _begin_snapshot(first)
            self.snapshot = first.execute("SELECT pg_export_snapshot()").fetchone()[0]
        except BaseException:
            first.close()
            raise
        self.conns.append(first)

    def _connect(self) -> psycopg.Connection:
        return engine_session(self.place.connect(autocommit=True, application_name=self.application_name))

    @property
    def first(self) -> psycopg.Connection:
        return self.conns[0]

    def join(self) -> psycopg.Connection:
        """One more connection in the snapshot (thread-safe; closed by close())."""
        conn = self._connect()
        try:
            _begin_snapshot(conn, self.snapshot)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self.conns.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.conns:
            try:
                if not conn.closed:
                    conn.execute("ROLLBACK")
            except psycopg.Error:
                pass
            finally:
                conn.close()


RowHash = Callable[[psycopg.Connection, Place, TableSpec], sql.Composable]


@dataclass
class _PlaceWork:
    """What to measure in one place: the tables, largest first, and how many connections."""
    snap: PlaceSnapshot
    tables: list[TableSpec]
    present: dict[str, int]
    count_foreign: bool
    workers: int = 1
    results: dict = field(default_factory=dict)


def _plan(snap: PlaceSnapshot, tables: list[TableSpec], count_foreign: bool) -> _PlaceWork:
    present = _present_tables(snap.first, snap.place, [t.name for t in tables])
    return _PlaceWork(snap, tables, present, count_foreign)


def _share_out(works: list[_PlaceWork], tables: list[TableSpec], workers: int) -> None:
    """Order each place's tables largest first (longest job first: the last ones to finish
    are small) and choose its number of connections, by the smaller side's table sizes (a
    shared table also holds every other tenant)."""
    def estimate(name):
        sizes = [w.present[name] for w in works if name in w.present]
        return min(sizes) if sizes else 0
    total = sum(estimate(t.name) for t in tables)
    for work in works:
        work.tables = sorted((t for t in tables if t.name in work.present), key=lambda t: -estimate(t.name))
        work.workers = max(1, min(workers, len(work.tables), 1 + total // EXTRA_WORKER_BYTES))


def _run(work: _PlaceWork, tenant_id: int, conn: psycopg.Connection, jobs: "queue.SimpleQueue[TableSpec]",
         row_hash_of: RowHash, stop: threading.Event) -> None:
    place = work.snap.place
    while not stop.is_set():
        try:
            table = jobs.get_nowait()
        except queue.Empty:
            return
        query = fingerprint_query(place, table, row_hash_of(conn, place, table))
        fp = _fingerprint(*conn.execute(query, (tenant_id,)).fetchone())
        foreign = foreign_rows(conn, place, table, tenant_id) if work.count_foreign else None
        work.results[table.name] = (fp, foreign)


def _measure_all(works: list[_PlaceWork], tenant_id: int, row_hash_of: RowHash) -> None:
    """Every place's tables on its connections at once; the first error stops the others
    (each finishes its current table) and is raised."""
    stop = threading.Event()
    queues = []
    for work in works:
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        for table in work.tables:
            jobs.put(table)
        queues.append(jobs)

    def worker(work, jobs, index):
        try:
            conn = work.snap.first if index == 0 else work.snap.join()
            _run(work, tenant_id, conn, jobs, row_hash_of, stop)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=sum(w.workers for w in works), thread_name_prefix="tenant-verify") as pool:
        futures = [pool.submit(worker, work, jobs, i) for work, jobs in zip(works, queues) for i in range(work.workers)]
    for future in futures:
        future.result()


@contextmanager
def place_snapshots(*places: Place, application_name: str = "tenant-move verify"):
    """A PlaceSnapshot per place, opened at once (one login each in parallel), all closed on exit."""
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=len(places)) as pool:
        futures = [pool.submit(PlaceSnapshot, place, application_name) for place in places]
        snaps = []
        error = None
        for future in futures:
            try:
                snaps.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised once every snapshot is closed
                error = error or exc
        for snap in snaps:
            stack.callback(snap.close)
        if error is not None:
            raise error
        yield snaps


def measure_places(places_and_foreign: list[tuple[Place, bool]], tenant_id: int, tables: list[TableSpec], *,
                   workers: int = VERIFY_WORKERS, row_hash_of: RowHash = row_hash,
                   after: Callable[[list[PlaceSnapshot]], object] | None = None,
                   application_name: str = "tenant-move verify"):
    """Fingerprint (and, where asked, other tenants' rows of) every table in each place, all
    places at once, each from one snapshot shared by up to `workers` connections. Returns a
    dict per place: table name -> (Fingerprint, foreign rows or None), None for a table
    missing in that place; with `after`, also what after(snapshots) returns (called while
    every snapshot is still open: more reads in the same views)."""
    with place_snapshots(*(p for p, _ in places_and_foreign), application_name=application_name) as snaps:
        works = [_plan(snap, tables, foreign) for snap, (_, foreign) in zip(snaps, places_and_foreign)]
        _share_out(works, tables, workers)
        _measure_all(works, tenant_id, row_hash_of)
        extra = after(snaps) if after is not None else None
    out = [{t.name: work.results.get(t.name) for t in tables} for work in works]
    return (out, extra) if after is not None else out


def verify_tenant(source: Place, target: Place, tenant_id: int, tables: list[TableSpec], *,
                  target_is_dedicated: bool = True, workers: int = VERIFY_WORKERS) -> VerifyReport:
    """Compare the tenant's rows of every table in source and target (both measured at once,
    each from one snapshot). For a dedicated target, any other tenant's row is a mismatch."""
    src, dst = measure_places([(source, False), (target, target_is_dedicated)], tenant_id, tables, workers=workers)
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


__all__ = ["HASH64", "LEGACY_MD5", "VERIFY_WORKERS", "Fingerprint", "PlaceSnapshot", "VerifyReport", "fingerprint",
           "foreign_rows", "measure_places", "place_snapshots", "verify_tenant"]
