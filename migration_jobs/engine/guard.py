"""The one write guard of a place: the same few triggers on every tenant table, whatever the
number of fenced or moving tenants; which tenants are fenced or captured is data (rows in two
small indexed tables), not DDL.

Per table three AFTER ... FOR EACH STATEMENT triggers (one per write kind: a statement trigger
with transition tables has one event) call `tenant_move_guard()`. Once per statement it
collects the distinct tenant ids the statement wrote (from the transition tables) and looks
them up, by primary-key index, in
  - `tenant_move_fence` (tenant_id PK, reason, slug, since): a row there refuses the
    statement (the whole statement fails, as the old BEFORE row triggers made it fail),
    except in the engine's own sessions (`tenant_move.bypass`);
  - `tenant_move_capturing` (tenant_id, run_id, since): the keys the statement wrote for that
    tenant go into the run's change log `tenant_move_log_<run>` (capture.py).
A statement of a tenant that is neither fenced nor captured pays one trigger call and two
index probes, with 0 or 10,000 fenced tenants; a 10,000-row statement pays them once, not per
row. Triggers per tenant (the earlier design: `WHEN (tenant_id = X)` on every table, per write
kind) cost every write of every tenant a WHEN evaluation per fenced tenant.

Visibility. The lookups are MVCC reads: a statement sees a fence or capture row only if it was
committed before the statement's snapshot, where trigger DDL was seen by every statement
planned after its commit. Hence the two barriers, which the callers keep:
  - closing a fence is followed by a drain (offline suspend, cutover: no transaction begun
    before the fence is still open when the data is read), and a fenced row set stays fenced
    for every later snapshot;
  - starting a capture waits for every transaction begun before the capture row committed
    (start_capture), before the copy takes its snapshot: after that every write of the tenant
    is either in the copy's snapshot or logged.
Earlier installations (per-tenant triggers) are converted by `upgrade` (a Django migration for
the shared database, `ensure` for any other place the engine touches)."""
from __future__ import annotations

import re
import time
from datetime import datetime

import psycopg
from psycopg import sql

from migration_jobs.exceptions import StepFailed

FENCE_TABLE = "tenant_move_fence"
CAPTURE_TABLE = "tenant_move_capturing"
FUNCTION = "tenant_move_guard"
TRIGGERS = {  # name -> (event, transition tables)
    "tenant_move_guard_ins": ("INSERT", "NEW TABLE AS new_rows"),
    "tenant_move_guard_upd": ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    "tenant_move_guard_del": ("DELETE", "OLD TABLE AS old_rows"),
}
BYPASS = "SET LOCAL tenant_move.bypass = 'on'"
LOCK_TIMEOUT = "3s"

# Triggers of earlier versions: per tenant (fence) and per run (capture), per write kind.
LEGACY_FENCE = re.compile(r"^tenant_fence_(\d+)_(ins|upd|del)$")
LEGACY_CAPTURE = re.compile(r"^tenant_move_capture_(\d+)_(ins|upd|del)$")
LEGACY_FENCE_FUNCTION = "tenant_move_fence_check"

# The keys a statement wrote for one tenant, per write kind, for the run's change log ($1 the
# table's name, $2 the tenant). An UPDATE logs its rows' new keys, and old keys that left the
# tenant or changed: catch-up copies each logged key's current state, so the op is a hint.
_LOG_ROWS = {
    "INSERT": "SELECT $1, n.id, 'I' FROM new_rows n WHERE n.tenant_id = $2",
    "DELETE": "SELECT $1, o.id, 'D' FROM old_rows o WHERE o.tenant_id = $2",
    "UPDATE": "SELECT $1, n.id, 'U' FROM new_rows n WHERE n.tenant_id = $2 UNION ALL "
              "SELECT $1, o.id, 'D' FROM old_rows o WHERE o.tenant_id = $2 "
              "AND o.id NOT IN (SELECT n.id FROM new_rows n WHERE n.tenant_id = $2)",
}


def _function_body(schema: str) -> str:
    """The function's source (compared with pg_proc.prosrc to know whether to replace it)."""
    fence = sql.Identifier(schema, FENCE_TABLE).as_string(None)
    capturing = sql.Identifier(schema, CAPTURE_TABLE).as_string(None)
    log_insert = ("'INSERT INTO %I.%I (table_name, row_pk, op) ' || CASE TG_OP "
                  + " ".join(f"WHEN '{op}' THEN '{query.replace(chr(39), chr(39) * 2)}'"
                             for op, query in _LOG_ROWS.items()) + " END")
    return f"""
DECLARE
    ids bigint[];
    hit record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT n.tenant_id) INTO ids FROM new_rows n;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT o.tenant_id) INTO ids FROM old_rows o;
    ELSE
        SELECT array_agg(DISTINCT x.tenant_id) INTO ids
          FROM (SELECT o.tenant_id FROM old_rows o UNION ALL SELECT n.tenant_id FROM new_rows n) x;
    END IF;
    IF ids IS NULL THEN
        RETURN NULL;  -- no row written
    END IF;
    FOR hit IN SELECT f.tenant_id, f.slug, f.reason, NULL::bigint AS run_id FROM {fence} f
                WHERE f.tenant_id = ANY (ids)
               UNION ALL
               SELECT c.tenant_id, NULL, NULL, c.run_id FROM {capturing} c
                WHERE c.tenant_id = ANY (ids)
    LOOP
        IF hit.run_id IS NULL THEN
            IF current_setting('tenant_move.bypass', true) IS DISTINCT FROM 'on' THEN
                RAISE EXCEPTION 'tenant % refuses writes here: %', coalesce(nullif(hit.slug, ''), hit.tenant_id::text),
                    hit.reason USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
        ELSE
            -- A statement whose snapshot predates the end of the capture may still see its
            -- row while the log is dropped: the capture is over, nothing to log.
            BEGIN
                EXECUTE format({log_insert}, TG_TABLE_SCHEMA, 'tenant_move_log_' || hit.run_id)
                    USING TG_TABLE_NAME::text, hit.tenant_id;
            EXCEPTION WHEN undefined_table THEN
                NULL;
            END;
        END IF;
    END LOOP;
    RETURN NULL;
END"""


def _object_statements(conn, schema: str) -> list[sql.Composable]:
    """What is missing of the two tables. Only what is missing: an ALTER or a GRANT on the fence
    table would lock out every writer of every tenant (each reads it), and queue them behind
    any open transaction that wrote."""
    fence, capturing = sql.Identifier(schema, FENCE_TABLE), sql.Identifier(schema, CAPTURE_TABLE)
    has_fence, has_slug, has_capturing = conn.execute(
        "SELECT to_regclass(%(f)s) IS NOT NULL, EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(%(f)s) "
        "AND attname = 'slug' AND NOT attisdropped), to_regclass(%(c)s) IS NOT NULL",
        {"f": fence.as_string(None), "c": capturing.as_string(None)}).fetchone()
    statements = []
    if not has_fence:
        statements += [sql.SQL("CREATE TABLE IF NOT EXISTS {} (tenant_id bigint PRIMARY KEY, reason text NOT NULL, "
                               "since timestamptz NOT NULL DEFAULT now())").format(fence),
                       sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(fence)]
    if not has_slug:  # the tenant's name for the error message (earlier fence tables have none)
        statements.append(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS slug text NOT NULL DEFAULT ''").format(fence))
    if not has_capturing:
        statements += [sql.SQL("CREATE TABLE IF NOT EXISTS {} (tenant_id bigint NOT NULL, run_id bigint NOT NULL, "
                               "since timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, run_id))"
                               ).format(capturing),
                       sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(capturing)]
    return statements


def _function_statement(schema: str) -> sql.Composable:
    # SECURITY DEFINER: a tenant role writing its own rows may neither read who else is fenced
    # nor write the change log itself.
    return sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
                   "SET search_path = pg_catalog AS {}").format(
        sql.Identifier(schema, FUNCTION), sql.Literal(_function_body(schema)))


def _trigger_statement(schema: str, table: str, name: str) -> sql.Composable:
    event, transitions = TRIGGERS[name]
    # OR REPLACE (PostgreSQL 14+): two moves that both found it missing create it one after the other.
    return sql.SQL("CREATE OR REPLACE TRIGGER {name} AFTER {event} ON {table} REFERENCING {transitions} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION {fn}()").format(
        name=sql.Identifier(name), event=sql.SQL(event), table=sql.Identifier(schema, table),
        transitions=sql.SQL(transitions), fn=sql.Identifier(schema, FUNCTION))


def existing_triggers(conn, schema: str) -> dict[str, set[str]]:
    """table -> names of its guard and legacy triggers, in `schema`."""
    found: dict[str, set[str]] = {}
    for table, name in conn.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal "
            "AND (t.tgname LIKE 'tenant\\_move\\_%%' OR t.tgname LIKE 'tenant\\_fence\\_%%')", (schema,)).fetchall():
        found.setdefault(table, set()).add(name)
    return found


def _function_current(conn, schema: str) -> bool:
    row = conn.execute("SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure(%s)",
                       (sql.Identifier(schema, FUNCTION).as_string(None) + "()",)).fetchone()
    return row is not None and row[0] == _function_body(schema)


def with_lock_retry(conn, statements: list[sql.Composable], attempts: int = 20) -> None:
    """DDL on a busy table waits for its writers; a short lock_timeout and retries keep
    other tenants from queueing behind us for long. Commits."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    for attempt in range(attempts):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                # Moves starting at once (several workers) would race on the catalog: two CREATE
                # TABLE IF NOT EXISTS collide ("duplicate key ... pg_type"). One at a time.
                conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (GUARD_DDL_LOCK,))
                for statement in statements:
                    conn.execute(statement)
            return
        except psycopg.errors.LockNotAvailable:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


GUARD_DDL_LOCK = 74_212  # first key of pg_advisory_xact_lock(int, int): the guard objects' DDL


def ensure_objects(conn, schema: str) -> None:
    """The fence and capture tables and the function (replaced only when it differs). Commits."""
    missing = _object_statements(conn, schema)
    conn.commit()
    if not _function_current(conn, schema):
        missing.append(_function_statement(schema))
    conn.commit()
    if missing:
        with_lock_retry(conn, missing)


def ensure(conn, schema: str, tables: list[str]) -> None:
    """The guard on every table of `tables` in `schema`: created once, then kept (a no-op when
    present: no lock taken). Converts the place's legacy per-tenant triggers. Commits."""
    ensure_objects(conn, schema)
    existing = existing_triggers(conn, schema)
    conn.commit()
    missing = [_trigger_statement(schema, table, name) for table in tables for name in TRIGGERS
               if name not in existing.get(table, set())]
    if missing:
        with_lock_retry(conn, missing)
    if any(LEGACY_FENCE.match(n) or LEGACY_CAPTURE.match(n) for names in existing.values() for n in names):
        for attempt in range(20):
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                    upgrade(conn, schema)
                break
            except psycopg.errors.LockNotAvailable:
                if attempt == 19:
                    raise
                time.sleep(0.2 * (attempt + 1))


def upgrade(conn, schema: str | None = None) -> list[str]:
    """Convert the per-tenant triggers of earlier versions into guard rows, in `schema` or every
    schema of the database, in the caller's transaction (no commit: a Django migration runs it
    in its own). A legacy capture trigger becomes a `tenant_move_capturing` row in the same
    transaction as the guard triggers that replace it, so no write goes uncaptured; a legacy
    fence trigger is only dropped (the fence itself was already a row). Returns what it did."""
    done = []
    rows = conn.execute(
        "SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE NOT t.tgisinternal AND (t.tgname LIKE 'tenant\\_fence\\_%%' OR t.tgname LIKE "
        "'tenant\\_move\\_capture\\_%%') AND (%s::text IS NULL OR n.nspname = %s) ORDER BY 1, 2, 3",
        (schema, schema)).fetchall()
    legacy = [(s, t, name, d) for s, t, name, d in rows if LEGACY_FENCE.match(name) or LEGACY_CAPTURE.match(name)]
    for place_schema in sorted({s for s, _, _, _ in legacy}):
        for statement in _object_statements(conn, place_schema):
            conn.execute(statement)
        if not _function_current(conn, place_schema):
            conn.execute(_function_statement(place_schema))
        existing = existing_triggers(conn, place_schema)
        for table in sorted({t for s, t, _, _ in legacy if s == place_schema}):
            for name in TRIGGERS:
                if name not in existing.get(table, set()):
                    conn.execute(_trigger_statement(place_schema, table, name))
    runs: dict[tuple[str, int], int] = {}
    for place_schema, table, name, definition in legacy:
        capture = LEGACY_CAPTURE.match(name)
        if capture:
            tenant = re.search(r"tenant_id = (\d+)", definition)
            if tenant is None:
                raise RuntimeError(f"cannot tell the tenant of legacy trigger {name} on {place_schema}.{table}")
            runs[(place_schema, int(capture.group(1)))] = int(tenant.group(1))
        conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(name), sql.Identifier(place_schema, table)))
        done.append(f"dropped trigger {place_schema}.{table}.{name}")
    for (place_schema, run_id), tenant_id in sorted(runs.items()):
        conn.execute(sql.SQL("INSERT INTO {} (tenant_id, run_id) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
            sql.Identifier(place_schema, CAPTURE_TABLE)), (tenant_id, run_id))
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
            sql.Identifier(place_schema, f"tenant_move_capture_{run_id}")))
        done.append(f"run {run_id} captures tenant {tenant_id} in {place_schema}")
    for place_schema in sorted({s for s, _, _, _ in legacy}):
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(place_schema, LEGACY_FENCE_FUNCTION)))
    return done


def guarded_tables(conn, schema: str) -> dict[str, int]:
    """table -> number of tenant-move triggers on it (guard and legacy), in `schema`."""
    return {table: len(names) for table, names in existing_triggers(conn, schema).items()}


def wait_for_older_transactions(conn, since: datetime, timeout: float) -> int:
    """Wait until no transaction that began before `since` is open in the database of `conn`
    (a psycopg autocommit connection, or a Django cursor: anything whose `execute` returns a
    cursor; not inside a transaction, pg_stat_activity is a snapshot per transaction).
    Returns how many are still open at the timeout, 0 when drained."""
    deadline = time.monotonic() + timeout
    while True:
        left = conn.execute("""SELECT count(*) FROM pg_stat_activity
                                WHERE datname = current_database() AND pid <> pg_backend_pid()
                                  AND backend_type = 'client backend'  -- not autovacuum workers
                                  AND xact_start < %s AND state <> 'idle'
                                  AND application_name NOT LIKE 'tenant-move%%'""", (since,)).fetchone()[0]
        if left == 0 or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def register_capture(conn, schema: str, tenant_id: int, run_id: int, drain_conn, drain_timeout: float) -> None:
    """The tenant's writes in `schema` are logged for the run from now on, for every statement
    whose snapshot sees this row; then wait until no older transaction is open, so that every
    later snapshot (the copy's) misses nothing that is not logged. `drain_conn`: an autocommit
    connection to the same database."""
    conn.execute(sql.SQL("INSERT INTO {} (tenant_id, run_id) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
        sql.Identifier(schema, CAPTURE_TABLE)), (tenant_id, run_id))
    conn.commit()
    since = drain_conn.execute("SELECT clock_timestamp()").fetchone()[0]
    left = wait_for_older_transactions(drain_conn, since, drain_timeout)
    if left:
        raise StepFailed(f"{left} transactions begun before the capture started are still open after "
                         f"{drain_timeout:.0f}s: their writes could escape the capture")


def unregister_capture(conn, schema: str, run_id: int) -> None:
    """No commit (capture.stop_capture drops the log in the same transaction)."""
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                    (sql.Identifier(schema, CAPTURE_TABLE).as_string(None),)).fetchone()[0]:
        conn.execute(sql.SQL("DELETE FROM {} WHERE run_id = %s").format(sql.Identifier(schema, CAPTURE_TABLE)),
                     (run_id,))
