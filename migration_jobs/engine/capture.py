"""Change capture, catch-up and write fences, with triggers in the *source* database (so they
work for schema and database targets and move backs alike).

Capture: per run and table, row triggers filtered (WHEN) to the moving tenant log only
(table, key) into `tenant_move_log_<run>`; catch-up copies the row's *current* state, so
applying a change twice is harmless and capture may (must) start before the copy's snapshot:
a write between the snapshot and the first trigger would otherwise be lost.

Catch-up: one round reads the log and the changed rows in ONE repeatable-read snapshot,
replaces those rows in the target (delete + COPY, one transaction), commits, then marks the
log rows that snapshot saw as applied. A crash between the two commits re-applies the same
rows: harmless. Deferred FKs and unique indexes hold at every commit.

Fence: while a row for tenant X is in `tenant_move_fence`, BEFORE row triggers (WHEN
tenant_id = X) refuse writes in the database itself; the engine's own sessions bypass it
(`tenant_move.bypass`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from migration_jobs.engine.copy import copied_rows
from migration_jobs.engine.places import Place
from migration_jobs.engine.tables import TableSpec
from migration_jobs.engine.verify import fingerprint

FENCE_TABLE = "tenant_move_fence"
FENCE_DDL_LOCK = 74_212  # first key of pg_advisory_xact_lock(int, int): the fence objects' DDL
BYPASS = "SET LOCAL tenant_move.bypass = 'on'"
LOCK_TIMEOUT = "3s"


def log_table(run_id: int) -> str:
    return f"tenant_move_log_{run_id}"


def _capture_function(run_id: int) -> str:
    return f"tenant_move_capture_{run_id}"


def _trigger_names(prefix: str) -> dict[str, str]:
    return {"INSERT": f"{prefix}_ins", "UPDATE": f"{prefix}_upd", "DELETE": f"{prefix}_del"}


def _when(op: str, tenant_id: int) -> sql.Composable:
    t = sql.Literal(tenant_id)
    if op == "INSERT":
        return sql.SQL("NEW.tenant_id = {}").format(t)
    if op == "DELETE":
        return sql.SQL("OLD.tenant_id = {}").format(t)
    return sql.SQL("OLD.tenant_id = {t} OR NEW.tenant_id = {t}").format(t=t)


def _with_lock_retry(conn, statements: list[sql.Composable], attempts: int = 20) -> None:
    """DDL on a busy table waits for its writers; a short lock_timeout and retries keep
    other tenants from queueing behind us for long."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    for attempt in range(attempts):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                for statement in statements:
                    conn.execute(statement)
            return
        except psycopg.errors.LockNotAvailable:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _create_triggers(conn, place: Place, tables: list[TableSpec], prefix: str, timing: str, tenant_id: int,
                     call: sql.Composable) -> None:
    """(Re)create the row triggers `prefix`_ins/_upd/_del on every table, `timing` (BEFORE or
    AFTER) the write, filtered to the tenant's rows, each executing `call`."""
    statements = []
    for table in tables:
        for op, name in _trigger_names(prefix).items():
            statements.append(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(name), place.table(table.name)))
            statements.append(sql.SQL(
                "CREATE TRIGGER {name} {timing} {op} ON {tbl} FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {call}"
            ).format(name=sql.Identifier(name), timing=sql.SQL(timing), op=sql.SQL(op), tbl=place.table(table.name),
                     when=_when(op, tenant_id), call=call))
    _with_lock_retry(conn, statements)


def _drop_triggers(conn, place: Place, tables: list[TableSpec], prefix: str) -> None:
    statements = [sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), place.table(t.name))
                  for t in tables for name in _trigger_names(prefix).values()]
    _with_lock_retry(conn, statements)


# --- Capture ------------------------------------------------------------------------------

def start_capture(conn, place: Place, run_id: int, tenant_id: int, tables: list[TableSpec]) -> None:
    """Create the run's log table, function and triggers in the source. Idempotent."""
    odd = [t.name for t in tables if t.pk != "id"]
    if odd:
        raise ValueError(f"capture logs the `id` key; these tables use another: {odd}")
    log = sql.Identifier(place.schema, log_table(run_id))
    conn.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {log} (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            table_name text NOT NULL,
            row_pk bigint NOT NULL,
            op "char" NOT NULL,
            changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            applied_round integer)""").format(log=log))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (applied_round, table_name)").format(
        sql.Identifier(f"{log_table(run_id)}_pending"), log))
    # SECURITY DEFINER: a tenant role writing its own rows may not write the log itself.
    conn.execute(sql.SQL("""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                INSERT INTO {log} (table_name, row_pk, op) VALUES (TG_TABLE_NAME, OLD.id, 'D');
            ELSE
                INSERT INTO {log} (table_name, row_pk, op) VALUES (TG_TABLE_NAME, NEW.id, left(TG_OP, 1));
                IF TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id THEN
                    INSERT INTO {log} (table_name, row_pk, op) VALUES (TG_TABLE_NAME, OLD.id, 'D');
                END IF;
            END IF;
            RETURN NULL;
        END $$""").format(fn=sql.Identifier(place.schema, _capture_function(run_id)), log=log))
    conn.commit()
    _create_triggers(conn, place, tables, f"tenant_move_capture_{run_id}", "AFTER", tenant_id,
                     sql.SQL("{}()").format(sql.Identifier(place.schema, _capture_function(run_id))))


def stop_capture(conn, place: Place, run_id: int, tables: list[TableSpec]) -> None:
    """Remove the run's triggers, function and log. Idempotent."""
    _drop_triggers(conn, place, tables, f"tenant_move_capture_{run_id}")
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
        sql.Identifier(place.schema, _capture_function(run_id))))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(place.schema, log_table(run_id))))
    conn.commit()


@dataclass
class Lag:
    changes: int              # captured changes not applied yet
    oldest_seconds: float     # age of the oldest of them

    def as_dict(self):
        return {"changes": self.changes, "oldest_seconds": round(self.oldest_seconds, 3)}


def lag(conn, place: Place, run_id: int) -> Lag:
    row = conn.execute(sql.SQL(
        "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(changed_at)), 0) "
        "FROM {} WHERE applied_round IS NULL").format(sql.Identifier(place.schema, log_table(run_id)))).fetchone()
    conn.rollback()
    return Lag(int(row[0]), float(row[1]))


@dataclass
class Round:
    number: int
    changes: int            # log rows applied
    rows_written: int       # rows inserted into the target
    rows_deleted: int       # rows removed from the target
    seconds: float
    fingerprints: dict = None  # table -> (source, target) when compared

    @property
    def mismatches(self) -> list[str]:
        return [name for name, (a, b) in (self.fingerprints or {}).items() if a != b]


def round_connections(source: Place, target: Place):
    """(source, target) connections for apply rounds: the source one in REPEATABLE READ, so
    each round reads the log and the rows in one snapshot (the heart of the argument above)."""
    return source.connect(repeatable_read=True), target.connect()


def apply_round(source: Place, target: Place, run_id: int, tenant_id: int, tables: list[TableSpec],
                number: int, *, compare: bool = False, connections=None) -> Round:
    """Bring the target to the source's state as of one snapshot for every logged row.

    With `compare`, also fingerprint every table on both sides at that same point (the
    source in the round's snapshot, the target right after the round's commit): a full
    comparison that concurrent writes to the source cannot disturb. `connections` (from
    round_connections) are reused, and left open, when given: the cutover saves the time."""
    if connections is None:
        src, dst = round_connections(source, target)
        with src, dst:
            return apply_round(source, target, run_id, tenant_id, tables, number, compare=compare,
                               connections=(src, dst))
    started = time.monotonic()
    log = sql.Identifier(source.schema, log_table(run_id))
    written = deleted = 0
    fingerprints = {}
    src, dst = connections
    touched = {r[0] for r in src.execute(sql.SQL(
        "SELECT DISTINCT table_name FROM {} WHERE applied_round IS NULL").format(log)).fetchall()}
    changes = 0
    if touched:
        changes = src.execute(sql.SQL("SELECT count(*) FROM {} WHERE applied_round IS NULL").format(log)
                              ).fetchone()[0]
        dst.execute(BYPASS)
        dst.execute("SET CONSTRAINTS ALL DEFERRED")
        for table in tables:
            if table.name in touched:
                w, d = _apply_table(src, dst, source, target, log, table, tenant_id)
                written += w
                deleted += d
        dst.commit()
    if compare:
        for table in tables:
            fingerprints[table.name] = (fingerprint(src, source, table, tenant_id),
                                        fingerprint(dst, target, table, tenant_id))
        dst.rollback()
    if touched:
        # Same snapshot: marks exactly the log rows whose rows we just copied.
        src.execute(sql.SQL("UPDATE {} SET applied_round = %s WHERE applied_round IS NULL").format(log),
                    (number,))
    src.commit()
    return Round(number, changes, written, deleted, time.monotonic() - started, fingerprints)


def _apply_table(src, dst, source: Place, target: Place, log, table: TableSpec, tenant_id: int):
    """Replace the target's rows of every key logged for `table` by the source's (those still
    there). Delete, then COPY straight in: no staging table, so a round does no catalog writes
    (it runs in the cutover's freeze). Unique keys hold throughout: what the delete leaves is
    the unchanged rows, which the snapshot's state of the changed ones cannot clash with."""
    cols = sql.SQL(", ").join(map(sql.Identifier, table.columns))
    pk = sql.Identifier(table.pk)
    # The keys as an array, not a sub-select on the log: the log has no statistics, and a
    # misjudged sub-select made the planner scan the tenant's whole table in the freeze.
    keys = [r[0] for r in src.execute(sql.SQL(
        "SELECT DISTINCT row_pk FROM {} WHERE applied_round IS NULL AND table_name = %s").format(log),
        (table.name,)).fetchall()]
    deleted = dst.execute(sql.SQL("DELETE FROM {tbl} WHERE tenant_id = %s AND {pk} = ANY(%s)").format(
        tbl=target.table(table.name), pk=pk), (tenant_id, keys)).rowcount
    written = _pipe(src, dst, sql.SQL(
        "COPY (SELECT {cols} FROM {tbl} WHERE tenant_id = {tid} AND {pk} = ANY({keys})) TO STDOUT (FORMAT binary)"
    ).format(cols=cols, tbl=source.table(table.name), tid=sql.Literal(tenant_id), pk=pk,
             keys=sql.Literal(keys) + sql.SQL("::bigint[]")),
        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(target.table(table.name), cols))
    return written, deleted


def _pipe(src, dst, out_query, in_query) -> int:
    """COPY from one connection into another; returns the rows written."""
    with src.cursor() as s, dst.cursor() as d:
        with s.copy(out_query) as out, d.copy(in_query) as into:
            for block in out:
                into.write(block)
        return copied_rows(d)


def changed_keys(conn, place: Place, run_id: int, since_round: int) -> dict[str, list[int]]:
    """Keys applied after round `since_round` (for verifying only what changed since a full verify)."""
    rows = conn.execute(sql.SQL(
        "SELECT table_name, array_agg(DISTINCT row_pk) FROM {} WHERE applied_round > %s GROUP BY table_name"
    ).format(sql.Identifier(place.schema, log_table(run_id))), (since_round,)).fetchall()
    conn.rollback()
    return {name: keys for name, keys in rows}


# --- Fence --------------------------------------------------------------------------------

def _ensure_fence_objects(conn, place: Place) -> None:
    fence = sql.Identifier(place.schema, FENCE_TABLE)
    # Moves starting at once (several workers) would race: two CREATE TABLE IF NOT EXISTS
    # collide on the catalog ("duplicate key ... pg_type"), two CREATE OR REPLACE FUNCTION on
    # the function's row. One at a time, for this transaction only.
    conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (FENCE_DDL_LOCK,))
    conn.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        tenant_id bigint PRIMARY KEY, reason text NOT NULL, since timestamptz NOT NULL DEFAULT now())""").format(fence))
    conn.execute(sql.SQL("""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
        DECLARE why text;
        BEGIN
            IF current_setting('tenant_move.bypass', true) = 'on' THEN
                RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
            END IF;
            SELECT reason INTO why FROM {fence} WHERE tenant_id = TG_ARGV[0]::bigint;
            IF FOUND THEN
                RAISE EXCEPTION 'tenant % refuses writes here: %', TG_ARGV[1], why
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
            RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END $$""").format(fn=sql.Identifier(place.schema, "tenant_move_fence_check"), fence=fence))
    conn.commit()


def install_fence(conn, place: Place, tenant_id: int, slug: str, tables: list[TableSpec]) -> None:
    """Fence triggers for the tenant in this place (inactive until `close_fence`). Idempotent."""
    _ensure_fence_objects(conn, place)
    _create_triggers(conn, place, tables, f"tenant_fence_{tenant_id}", "BEFORE", tenant_id,
                     sql.SQL("{}({}, {})").format(sql.Identifier(place.schema, "tenant_move_fence_check"),
                                                   sql.Literal(str(tenant_id)), sql.Literal(slug)))


def close_fence(conn, place: Place, tenant_id: int, reason: str, *, ensure: bool = True) -> None:
    """From now on every write to the tenant's rows in this place fails."""
    if ensure:
        _ensure_fence_objects(conn, place)
    conn.execute(sql.SQL("INSERT INTO {} (tenant_id, reason) VALUES (%s, %s) ON CONFLICT (tenant_id) "
                         "DO UPDATE SET reason = EXCLUDED.reason").format(sql.Identifier(place.schema, FENCE_TABLE)),
                 (tenant_id, reason))
    conn.commit()


def open_fence(conn, place: Place, tenant_id: int) -> None:
    if _fence_table_exists(conn, place):
        conn.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(sql.Identifier(place.schema, FENCE_TABLE)),
                     (tenant_id,))
    conn.commit()


def remove_fence(conn, place: Place, tenant_id: int, tables: list[TableSpec]) -> None:
    """Drop the tenant's fence triggers and row in this place. Idempotent."""
    open_fence(conn, place, tenant_id)
    _drop_triggers(conn, place, tables, f"tenant_fence_{tenant_id}")
    conn.commit()


def _fence_table_exists(conn, place: Place) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (f'"{place.schema}"."{FENCE_TABLE}"',)).fetchone()[0]


def fence_reason(conn, place: Place, tenant_id: int) -> str | None:
    if not _fence_table_exists(conn, place):
        return None
    row = conn.execute(sql.SQL("SELECT reason FROM {} WHERE tenant_id = %s").format(
        sql.Identifier(place.schema, FENCE_TABLE)), (tenant_id,)).fetchone()
    return row[0] if row else None


# --- Leftovers ----------------------------------------------------------------------------

def leftovers(conn) -> list[dict]:
    """Capture objects in this database: triggers, log tables, functions, slots, publications."""
    found = []
    for schema, table, trigger in conn.execute("""
            SELECT n.nspname, c.relname, t.tgname FROM pg_trigger t
              JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE t.tgname LIKE 'tenant\\_move\\_capture\\_%' ORDER BY 1, 2, 3""").fetchall():
        found.append({"kind": "trigger", "name": f"{schema}.{table}.{trigger}"})
    for schema, name in conn.execute("""
            SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND c.relname LIKE 'tenant\\_move\\_log\\_%' ORDER BY 1, 2""").fetchall():
        found.append({"kind": "change log", "name": f"{schema}.{name}"})
    for schema, name in conn.execute("""
            SELECT n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.proname LIKE 'tenant\\_move\\_capture\\_%' ORDER BY 1, 2""").fetchall():
        found.append({"kind": "function", "name": f"{schema}.{name}"})
    for name, active, retained in conn.execute("""
            SELECT slot_name, active, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn))
              FROM pg_replication_slots WHERE slot_name LIKE 'tenant\\_move\\_%'""").fetchall():
        found.append({"kind": "replication slot", "name": name, "active": active, "retained_wal": retained})
    for (name,) in conn.execute("SELECT pubname FROM pg_publication WHERE pubname LIKE 'tenant\\_move\\_%'"
                                ).fetchall():
        found.append({"kind": "publication", "name": name})
    conn.rollback()
    return found
