"""Bulk copy of one tenant's rows from a place to another with binary COPY.

- `copy_table` streams one table: `COPY (SELECT <cols> FROM src WHERE tenant_id = ...) TO
  STDOUT (FORMAT binary)` piped block by block into `COPY dst (<cols>) FROM STDIN (FORMAT
  binary)`. Nothing is ever held in memory but one block (BLOCK_SIZE bytes).
- `copy_tenant` copies every table from ONE consistent snapshot of the source (exported by
  a coordinator transaction, imported by every worker), tables in parallel when the target
  has no foreign keys between them (see deferral.py), one target transaction per table
  (a crash keeps the finished tables; `skip` resumes).
- A *tee* (`tee=`, or `with tee_into(...)` around a caller that copies) gets each table's
  blocks too, as they are written to the target: a move's archive is made from the copy's
  own stream (engine/archive.py PartWriter), never by reading the source a second time.

Functions take places and psycopg 3 connections; they never touch the ORM. Identifiers are
composed with psycopg.sql, values are parameters.
"""
from __future__ import annotations

import contextvars
import logging
import queue
import selectors
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Protocol

import psycopg
from psycopg import sql

from migration_jobs.exceptions import CopyCancelled

from .places import Place
from .tables import TableSpec

log = logging.getLogger(__name__)

# Rows read from the source are gathered into blocks of this size before being written to
# the target: one write per block instead of one per row.
BLOCK_SIZE = 1024 * 1024
# on_bytes / on_progress are called about this often.
PROGRESS_EVERY = 8 * 1024 * 1024


class Sink(Protocol):
    """Where a tee sends one table's copy: `write(block)` per block (a bytearray nobody changes
    afterwards), then `finish()` once the table's rows are all written, before its target
    transaction commits, or `abort()` when the table's copy fails."""

    def write(self, block) -> None: ...

    def finish(self): ...

    def abort(self) -> None: ...


# A tee: TableSpec -> Sink, called once per table copied.
Tee = Callable[[TableSpec], Sink]
_current_tee: contextvars.ContextVar[Tee | None] = contextvars.ContextVar("copy_tee", default=None)


@contextmanager
def tee_into(tee: Tee | None):
    """Every copy_tenant called in this block (in this thread) tees its tables into `tee`:
    a caller several layers up (a move's copy step) can ask for the stream without every
    function in between passing it along."""
    token = _current_tee.set(tee)
    try:
        yield
    finally:
        _current_tee.reset(token)


@dataclass(frozen=True)
class TableCopy:
    rows: int
    bytes: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _columns(table: TableSpec) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)


def engine_session(conn: psycopg.Connection) -> psycopg.Connection:
    """Session settings of the engine's own connections: a long COPY, index build or
    checksum must not be killed by a server's statement_timeout, nor the snapshot-holding
    coordinator (idle in transaction while the workers copy) by idle_in_transaction_session_timeout."""
    conn.execute("SELECT set_config('statement_timeout', '0', false), "
                 "set_config('idle_in_transaction_session_timeout', '0', false)")
    if not conn.autocommit:
        conn.commit()
    return conn


def copy_out_statement(source: Place, table: TableSpec, *, also: sql.Composable = sql.SQL("")) -> sql.Composed:
    """COPY of the tenant's rows (parameter: the tenant id); `also`: more conditions, starting
    with AND, whose parameters follow the tenant id."""
    return sql.SQL("COPY (SELECT {cols} FROM {tbl} WHERE {tenant} = %s{also}) TO STDOUT (FORMAT binary)").format(
        cols=_columns(table), tbl=source.table(table.name), tenant=sql.Identifier("tenant_id"), also=also)


def copy_in_statement(target: Place, table: TableSpec, *, freeze: bool = False) -> sql.Composed:
    options = sql.SQL("FORMAT binary, FREEZE") if freeze else sql.SQL("FORMAT binary")
    return sql.SQL("COPY {tbl} ({cols}) FROM STDIN ({options})").format(
        tbl=target.table(table.name), cols=_columns(table), options=options)


def copy_table(src_conn: psycopg.Connection, dst_conn: psycopg.Connection, source: Place, target: Place,
               table: TableSpec, tenant_id: int, on_bytes: Callable[[int], None] | None = None, *,
               freeze: bool = False, cancel: threading.Event | None = None,
               block_size: int = BLOCK_SIZE, fast_read: bool = True,
               only: tuple[sql.Composable, tuple] | None = None, sink: Sink | None = None) -> TableCopy:
    """Copy the tenant's rows of one table from `source` to `target`.

    Runs in whatever transactions the two connections are in (nothing is committed here).
    `on_bytes(n)` is called with the number of bytes copied since its previous call, about
    every PROGRESS_EVERY bytes and once at the end. `freeze=True` writes the rows frozen
    (COPY FREEZE), allowed only when the table was truncated in the current target
    transaction. `cancel`: an event checked between blocks; when set, the copy is aborted
    (both COPY operations are terminated) with CopyCancelled. `fast_read=False` reads the
    source through psycopg's Copy.read() (one Python call per row: slower). `only`: (conditions
    starting with AND, their parameters) to copy part of the tenant's rows. `sink`: gets every
    block written to the target too (its finish/abort are the caller's).
    """
    started = time.monotonic()
    total = unreported = 0
    with src_conn.cursor() as src_cur, dst_conn.cursor() as dst_cur:
        also, also_params = only or (sql.SQL(""), ())
        with src_cur.copy(copy_out_statement(source, table, also=also), (tenant_id, *also_params)) as copy_out, \
                dst_cur.copy(copy_in_statement(target, table, freeze=freeze)) as copy_in:
            blocks = _read_blocks(src_conn, block_size) if fast_read else _copy_blocks(copy_out, block_size)
            for block in blocks:
                if cancel is not None and cancel.is_set():
                    raise CopyCancelled(table.name)
                copy_in.write(memoryview(block))
                if sink is not None:
                    sink.write(block)
                total += len(block)
                unreported += len(block)
                if on_bytes is not None and unreported >= PROGRESS_EVERY:
                    on_bytes(unreported)
                    unreported = 0
        rows = copied_rows(dst_cur)
    if on_bytes is not None and unreported:
        on_bytes(unreported)
    return TableCopy(rows=rows, bytes=total, seconds=round(time.monotonic() - started, 6))


def _copy_blocks(copy_out: psycopg.Copy, block_size: int) -> Iterator[bytearray]:
    """Blocks of about block_size bytes from a COPY TO, read one row at a time by psycopg."""
    block = bytearray()
    for data in copy_out:        # one CopyData message (one row) per iteration
        block += data
        if len(block) >= block_size:
            yield block
            block = bytearray()
    if block:
        yield block


def _read_blocks(conn: psycopg.Connection, block_size: int, statuses: list | None = None) -> Iterator[bytearray]:
    """The same blocks, read straight from libpq (psycopg's public `pgconn`): a COPY TO
    sends one message per row, and going through psycopg's Copy.read() for each costs
    twice the client CPU (measured: 1.25 s against 0.63 s per million rows), CPU the
    servers want when they share the machine. Consumes the COPY's final result too (the
    Copy object then has nothing left to do) and raises its error, if any. `statuses` gets
    the command status of each result ("COPY n": the rows sent)."""
    pgconn = conn.pgconn
    block = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(pgconn.socket, selectors.EVENT_READ)

        def wait_readable():
            selector.select(timeout=1.0)
            pgconn.consume_input()

        while True:
            nbytes, data = pgconn.get_copy_data(1)   # non-blocking; raises on a broken stream
            if nbytes > 0:
                block += data
                if len(block) >= block_size:
                    yield block
                    block = bytearray()
            elif nbytes == 0:
                wait_readable()
            else:                                    # -1: end of the data
                break
        # The final result, before the last block is handed out: whatever the caller does
        # with it, the connection is left with no command in progress.
        results = []
        while True:
            while pgconn.is_busy():
                wait_readable()
            result = pgconn.get_result()
            if result is None:
                break
            results.append(result)
    failed = [r for r in results if r.status != psycopg.pq.ExecStatus.COMMAND_OK]
    if failed:
        raise psycopg.errors.error_from_result(failed[0], encoding=conn.info.encoding)
    if statuses is not None:
        statuses.extend((r.command_status or b"").decode() for r in results)
    if block:
        yield block


def copied_rows(cur: psycopg.Cursor) -> int:
    """Rows written by the COPY FROM just finished, from its command status ("COPY n")."""
    status = cur.statusmessage or ""
    if status.startswith("COPY "):
        return int(status.split()[1])
    if cur.rowcount is not None and cur.rowcount >= 0:
        return cur.rowcount
    raise RuntimeError(f"no row count in the COPY command status {status!r}")




# --- Whole tenant ------------------------------------------------------------------------

def _target_foreign_keys(conn: psycopg.Connection, place: Place, names: Iterable[str]) -> list[tuple[str, str]]:
    """(child, parent) table names of every foreign key of the place's tables `names`."""
    rows = conn.execute(
        """SELECT child.relname, parent.relname
             FROM pg_constraint co
             JOIN pg_class child ON child.oid = co.conrelid
             JOIN pg_namespace n ON n.oid = child.relnamespace
             JOIN pg_class parent ON parent.oid = co.confrelid
            WHERE co.contype = 'f' AND n.nspname = %s
              AND (child.relname = ANY(%s) OR parent.relname = ANY(%s))""",
        (place.schema, list(names), list(names))).fetchall()
    return [(child, parent) for child, parent in rows]


def _source_sizes(conn: psycopg.Connection, place: Place, names: list[str]) -> dict[str, int]:
    rows = conn.execute(
        """SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = ANY(%s)""", (place.schema, names)).fetchall()
    return dict(rows)


def copy_tenant(source: Place, target: Place, tenant_id: int, tables: list[TableSpec], *,
                skip: Iterable[str] = frozenset(), workers: int = 2,
                on_table_done: Callable[[str, TableCopy], None] | None = None,
                on_progress: Callable[[dict], None] | None = None,
                block_size: int = BLOCK_SIZE, synchronous_commit: bool = True,
                tee: Tee | None = None, on_worker_end: Callable[[], None] | None = None) -> dict[str, TableCopy]:
    """Copy the tenant's rows of every table in `tables` (FK order) but those in `skip`.

    All reads come from one snapshot of the source. Each table is emptied in the target
    (plain TRUNCATE, or DELETE when another table's foreign key still references it; in
    the shared tables only the tenant's rows are deleted) and filled in its own target
    transaction, committed when the table is done; then
    `on_table_done(name, TableCopy)` is called (from the worker thread). When the target
    still has foreign keys between the tables, tables are copied one by one in FK order
    (drop them first with deferral.drop_secondary to copy in parallel). `on_progress(info)`
    gets {"table", "bytes" (since the previous call), "table_bytes", "total_bytes"} from the
    worker threads. The first error stops every worker (their COPY is aborted, their target
    transaction rolled back) and is raised here once all threads are finished and every
    connection is closed. Returns name -> TableCopy of the tables this call copied.
    `synchronous_commit=False` sets it off on the target sessions: measured no faster (one
    commit per table), and a server crash could then lose a table already reported done.
    `tee` (default: the one set by tee_into): each table's blocks also go to `tee(spec)`,
    finished before the table's target transaction commits, aborted when it fails.
    `on_worker_end()` is called in each worker thread as it ends (to release what the
    callbacks opened in that thread: a caller's ORM connection).
    """
    if _same_place(source, target):
        raise ValueError(f"source and target are the same place ({source})")
    skip = frozenset(skip)
    tee = tee if tee is not None else _current_tee.get()
    todo = [t for t in tables if t.name not in skip]
    if not todo:
        return {}
    results: dict[str, TableCopy] = {}
    lock = threading.Lock()
    stop = threading.Event()
    live: set[psycopg.Connection] = set()
    totals = {"bytes": 0}

    coordinator = source.connect(autocommit=True, application_name="tenant-move copy")
    try:
        engine_session(coordinator)
        coordinator.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = coordinator.execute("SELECT pg_export_snapshot()").fetchone()[0]

        with target.connect(autocommit=True) as probe:
            fks = _target_foreign_keys(probe, target, [t.name for t in tables])
        referenced, workers = copy_order(coordinator, source, fks, todo, workers)
        pending: queue.SimpleQueue[TableSpec] = queue.SimpleQueue()
        for spec in todo:
            pending.put(spec)

        def progress(name):
            state = {"table_bytes": 0}

            def on_bytes(n):
                state["table_bytes"] += n
                with lock:
                    totals["bytes"] += n
                    total = totals["bytes"]
                if on_progress is not None:
                    on_progress({"table": name, "bytes": n, "table_bytes": state["table_bytes"],
                                 "total_bytes": total})
            return on_bytes

        def worker(number: int):
            src = dst = None
            try:
                src = track(source.connect(autocommit=True, application_name=f"tenant-move copy {number}"), live, lock)
                engine_session(src)
                src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                dst = track(target.connect(autocommit=False, application_name=f"tenant-move copy {number}"),
                            live, lock)
                engine_session(dst)
                # COPY FREEZE needs no snapshot older than the TRUNCATE (whatever the server's
                # default_transaction_isolation says).
                dst.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
                if not synchronous_commit:
                    dst.execute("SET synchronous_commit = off")
                    dst.commit()
                while not stop.is_set():
                    try:
                        spec = pending.get_nowait()
                    except queue.Empty:
                        return
                    sink = None
                    try:
                        freeze = _empty_target_table(dst, target, spec, tenant_id, spec.name in referenced)
                        sink = tee(spec) if tee is not None else None
                        result = copy_table(src, dst, source, target, spec, tenant_id, progress(spec.name),
                                            freeze=freeze, cancel=stop, block_size=block_size, sink=sink)
                        if sink is not None:
                            sink.finish()
                        dst.commit()
                    except BaseException:
                        _rollback_quietly(dst)
                        if sink is not None:
                            sink.abort()
                        raise
                    with lock:
                        results[spec.name] = result
                    log.info("copied %s: %s rows, %s bytes in %.2fs", spec.name, result.rows, result.bytes,
                             result.seconds)
                    if on_table_done is not None:
                        on_table_done(spec.name, result)
            finally:
                release(live, lock, dst, src)

        run_workers(worker, workers, stop=stop, live=live, lock=lock, thread_name_prefix="tenant-copy",
                    on_thread_end=on_worker_end)
        return results
    finally:
        _rollback_quietly(coordinator)
        coordinator.close()


def run_workers(worker: Callable[[int], None], workers: int, *, stop: threading.Event,
                live: set, lock: threading.Lock, thread_name_prefix: str,
                on_thread_end: Callable[[], None] | None = None) -> None:
    """Run `worker(1..workers)` in threads until all end or one fails. The first failure (or
    an interrupt of the caller) sets `stop` and cancels the server work of every connection in
    `live` (a worker blocked in the server, in a lock wait or a long statement, stops too);
    once every thread has ended, the first real error is raised (a cancellation it caused
    only when there is no other). `on_thread_end()` runs in each thread as its worker ends."""
    def run(number: int) -> None:
        try:
            worker(number)
        except BaseException:
            stop.set()  # the other workers take no more tables
            raise
        finally:
            if on_thread_end is not None:
                on_thread_end()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix) as pool:
        futures = [pool.submit(run, i + 1) for i in range(workers)]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = any(f.exception() is not None for f in done)
        except BaseException:      # KeyboardInterrupt in the caller
            stop.set()
            _cancel_all(live, lock)
            wait(futures)
            raise
        if failed:
            stop.set()
            _cancel_all(live, lock)
            wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    real = [e for e in errors if not isinstance(e, (CopyCancelled, psycopg.errors.QueryCanceled))]
    if real or errors:
        raise (real or errors)[0]


def copy_order(coordinator: psycopg.Connection, source: Place, fks: list[tuple[str, str]], todo: list[TableSpec],
               workers: int) -> tuple[set[str], int]:
    """(tables other tables' foreign keys reference, workers to use) for copying `todo`; sorts
    `todo` biggest first (balanced workers) when the target has no foreign keys between them.
    With foreign keys in place one worker copies in FK order: children find their parents committed."""
    referenced = {parent for child, parent in fks if child != parent}
    if fks:
        workers = 1
    else:
        sizes = _source_sizes(coordinator, source, [t.name for t in todo])
        todo.sort(key=lambda t: -sizes.get(t.name, 0))
    return referenced, max(1, min(workers, len(todo)))


def track(conn: psycopg.Connection, live: set, lock: threading.Lock) -> psycopg.Connection:
    """A worker's connection, registered in `live` so that run_workers can cancel its work."""
    with lock:
        live.add(conn)
    return conn


def release(live: set, lock: threading.Lock, *conns: psycopg.Connection | None) -> None:
    """Close a worker's connections (those it opened: None for the others) and unregister them."""
    for conn in conns:
        if conn is not None:
            with lock:
                live.discard(conn)
            conn.close()


def _empty_target_table(conn: psycopg.Connection, target: Place, table: TableSpec, tenant_id: int,
                        referenced: bool) -> bool:
    """Empty the table before (re)filling it; True when it was truncated (COPY FREEZE allowed).

    A dedicated target is not live while being filled: TRUNCATE (never CASCADE), or DELETE
    when another table's foreign key references it (TRUNCATE refuses; the deferred FK check
    at commit finds the same ids back). The shared tables are live for every other tenant:
    only this tenant's rows are deleted there.
    """
    tbl = target.table(table.name)
    if target.kind == "shared":
        conn.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(tbl, sql.Identifier("tenant_id")), (tenant_id,))
        return False
    if referenced:
        conn.execute(sql.SQL("DELETE FROM {}").format(tbl))
        return False
    conn.execute(sql.SQL("TRUNCATE {}").format(tbl))
    return True


def _same_place(a: Place, b: Place) -> bool:
    keys = ("host", "port", "dbname")
    return a.schema == b.schema and all(str(a.conninfo.get(k)) == str(b.conninfo.get(k)) for k in keys)


def _cancel_all(live: set, lock: threading.Lock) -> None:
    with lock:
        conns = list(live)
    for conn in conns:
        try:
            conn.cancel_safe(timeout=5)
        except Exception:  # noqa: BLE001 - best effort: the worker's own error wins
            pass


def _rollback_quietly(conn: psycopg.Connection) -> None:
    try:
        if not conn.closed:
            if conn.autocommit:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
            else:
                conn.rollback()
    except Exception:  # noqa: BLE001
        pass
