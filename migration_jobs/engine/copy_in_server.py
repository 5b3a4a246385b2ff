"""Bulk copy of one tenant between two places of the SAME database (shared tables <-> a
dedicated schema): `INSERT INTO <target> (cols) SELECT cols FROM <source> WHERE tenant_id = %s`,
so no row ever leaves the server (the binary pipe of copy.py reads every row out to this
process and writes it back: twice the server's protocol work, plus ours).

The guarantees are copy.copy_tenant's:
- one consistent snapshot: a coordinator exports it (REPEATABLE READ READ ONLY,
  pg_export_snapshot) and every table's transaction imports it (SET TRANSACTION SNAPSHOT),
  so every table is read as of the same instant;
- one transaction per table (empty + fill + commit): a crash keeps the finished tables and
  `skip` resumes with the rest; tables in parallel. That needs a target without foreign keys
  between the tables (load.py drops them first): a transaction that imported the snapshot
  does not see rows committed after it, so a child table's FK check would miss the parents
  another transaction committed. With foreign keys in place, every table not done is copied
  in ONE transaction, in FK order (correct, resumable only as a whole);
- the first error stops every worker (their running statement is cancelled, their
  transaction rolled back) and is raised once every thread has ended.

Rows come from the INSERT's row count. Bytes are the target table's size after the insert
(pg_relation_size, heap only): an estimate of what was written, for progress and reports.

With a tee (copy.tee_into: a move's archive parts), each table is copied by
`COPY (INSERT ... SELECT ... RETURNING <cols>) TO STDOUT (FORMAT binary)`: the same single
scan inserts the rows inside the server and streams exactly those rows, in the pipe's binary
format, to the tee; the archive is never made by reading the source a second time.

Not done, on purpose:
- `synchronous_commit = off`: one commit per table, so at most a few fsyncs per move; the
  WAL of the rows themselves is what costs, and it is written either way.
- UNLOGGED then `SET LOGGED`: with wal_level replica or logical (needed for online moves),
  SET LOGGED rewrites the table and WAL-logs every page anyway, so the rows are written
  twice; it also needs an ACCESS EXCLUSIVE lock and is refused while a logged table's FK
  points at an unlogged one.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterable

import psycopg
from psycopg import sql

# Private helpers of the pipe copy, shared so both copies empty, order and stop alike.
from .copy import (BLOCK_SIZE, Sink, Tee, TableCopy, _current_tee, _empty_target_table, _read_blocks,
                   _rollback_quietly, _target_foreign_keys, copy_order, engine_session, release, run_workers, track)
from .places import Place
from .tables import TableSpec

log = logging.getLogger(__name__)

_PLACE_KEYS = ("host", "port", "dbname")


def same_database(a: Place, b: Place) -> bool:
    """Both places are in one database of one server (only their schemas may differ)."""
    return all(str(a.conninfo.get(k)) == str(b.conninfo.get(k)) for k in _PLACE_KEYS)


def insert_select_statement(source: Place, target: Place, table: TableSpec) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)
    return sql.SQL("INSERT INTO {dst} ({cols}) SELECT {cols} FROM {src} WHERE {tenant} = %s").format(
        dst=target.table(table.name), cols=cols, src=source.table(table.name), tenant=sql.Identifier("tenant_id"))


def insert_and_stream(conn: psycopg.Connection, source: Place, target: Place, table: TableSpec, tenant_id: int,
                      sink: Sink) -> int:
    """INSERT ... SELECT the table's rows and send the inserted rows, as a binary COPY stream,
    to `sink`, in one statement; returns the rows inserted."""
    statement = sql.SQL("COPY ({insert} RETURNING {cols}) TO STDOUT (FORMAT binary)").format(
        insert=insert_select_statement(source, target, table),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in table.columns))
    statuses: list[str] = []
    with conn.cursor() as cur, cur.copy(statement, (tenant_id,)):
        for block in _read_blocks(conn, BLOCK_SIZE, statuses):
            sink.write(block)
    counted = [s for s in statuses if s.startswith("COPY ")]
    if not counted:
        raise RuntimeError(f"no row count in the COPY command status {statuses!r}")
    return int(counted[-1].split()[1])


def copy_tables_in_server(conn: psycopg.Connection, source: Place, target: Place, tables: list[TableSpec],
                          tenant_id: int, snapshot: str, referenced: set[str],
                          tee: Tee | None = None) -> dict[str, TableCopy]:
    """The tables in one transaction on `conn` (autocommit): import the snapshot, then for each
    table empty it in the target, INSERT ... SELECT (streamed to `tee(table)` when there is a
    tee) and measure; the sinks are finished, then the transaction commits. Rolled back (and
    the sinks aborted) on any error."""
    results = {}
    sinks: list[Sink] = []
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    try:
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        for table in tables:
            started = time.monotonic()
            _empty_target_table(conn, target, table, tenant_id, table.name in referenced)
            sink = tee(table) if tee is not None else None
            if sink is not None:
                sinks.append(sink)
                rows = insert_and_stream(conn, source, target, table, tenant_id, sink)
            with conn.cursor() as cur:
                if sink is None:
                    cur.execute(insert_select_statement(source, target, table), (tenant_id,))
                    rows = cur.rowcount
                size = 0
                if target.kind != "shared":  # a shared table holds every tenant: its size says nothing
                    cur.execute("SELECT pg_relation_size(%s::regclass)",
                                (sql.Identifier(target.schema, table.name).as_string(conn),))
                    size = cur.fetchone()[0]
            results[table.name] = TableCopy(rows=rows, bytes=size, seconds=round(time.monotonic() - started, 6))
        for sink in sinks:
            sink.finish()  # before the commit: a committed table always has its finished part
        conn.execute("COMMIT")
    except BaseException:
        _rollback_quietly(conn)
        for sink in sinks:
            sink.abort()
        raise
    return results


def copy_tenant_in_server(source: Place, target: Place, tenant_id: int, tables: list[TableSpec], *,
                          skip: Iterable[str] = frozenset(), workers: int = 2,
                          on_table_done: Callable[[str, TableCopy], None] | None = None,
                          on_worker_end: Callable[[], None] | None = None) -> dict[str, TableCopy]:
    """Copy the tenant's rows of every table in `tables` (FK order) but those in `skip`, from
    `source` to `target` in the same database. Same contract as copy.copy_tenant:
    `on_table_done(name, TableCopy)` from the worker thread after each commit, `on_worker_end()`
    in each worker thread as it ends; the first error
    stops the others (their statement cancelled, their table rolled back) and is raised here
    once every thread has ended. Returns name -> TableCopy of the tables this call copied."""
    if not same_database(source, target):
        raise ValueError(f"{source} and {target} are not in the same database")
    if source.schema == target.schema:
        raise ValueError(f"source and target are the same place ({source})")
    skip = frozenset(skip)
    todo = [t for t in tables if t.name not in skip]
    if not todo:
        return {}
    results: dict[str, TableCopy] = {}
    lock = threading.Lock()
    stop = threading.Event()
    live: set[psycopg.Connection] = set()
    tee = _current_tee.get()  # read here: the worker threads do not inherit the caller's context

    coordinator = source.connect(autocommit=True, application_name="tenant-move copy")
    try:
        engine_session(coordinator)
        coordinator.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = coordinator.execute("SELECT pg_export_snapshot()").fetchone()[0]
        # Same database: the coordinator can read the target's catalog too (no transaction
        # snapshot applies to catalog lookups).
        fks = _target_foreign_keys(coordinator, target, [t.name for t in tables])
        referenced, workers = copy_order(coordinator, source, fks, todo, workers)
        # A transaction that imported the snapshot cannot see rows committed after it: with
        # foreign keys in the target, a child table's check would not find the parents that an
        # earlier table's transaction committed. Then every table goes in one transaction.
        units = [todo] if fks else [[spec] for spec in todo]
        pending: queue.SimpleQueue[list[TableSpec]] = queue.SimpleQueue()
        for unit in units:
            pending.put(unit)

        def worker(number: int):
            conn = None
            try:
                conn = track(target.connect(autocommit=True, application_name=f"tenant-move copy {number}"),
                             live, lock)
                engine_session(conn)
                while not stop.is_set():
                    try:
                        unit = pending.get_nowait()
                    except queue.Empty:
                        return
                    copied = copy_tables_in_server(conn, source, target, unit, tenant_id, snapshot, referenced, tee)
                    with lock:
                        results.update(copied)
                    for name, result in copied.items():
                        log.info("copied %s in server: %s rows in %.2fs", name, result.rows, result.seconds)
                        if on_table_done is not None:
                            on_table_done(name, result)
            finally:
                release(live, lock, conn)

        run_workers(worker, workers, stop=stop, live=live, lock=lock, thread_name_prefix="tenant-copy-in-server",
                    on_thread_end=on_worker_end)
        return results
    finally:
        _rollback_quietly(coordinator)
        coordinator.close()
