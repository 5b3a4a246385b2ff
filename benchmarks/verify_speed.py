"""Verification speed, as a move's verify step meets it: one tenant's rows in the shared tables
(source, filtered by tenant) against a dedicated database holding a copy of them (target),
both sides measured at once, in one process, on the same data. Candidates:

  current            the verify of before (kept here as the reference): each place in one
                     connection, tables one after another, other tenants' rows counted by a
                     CASE in the target's hashing scan;
  hash64             engine.verify.verify_tenant as it is: the same per-row hash, VERIFY_WORKERS
                     connections per place sharing one exported snapshot, tables largest first,
                     other tenants' rows through the tenant_id index (the default);
  hash64 workers=N   the same with another number of connections per place;
  hash64 parallel query  one connection per place, tables one after another, PostgreSQL's
                     parallel query forced (Gather with 2 workers per query);
  no text casts      hash_record_extended over the bare columns (inexact: misses a changed
                     numeric scale, jsonb number or array bound; the floor of the current hash);
  per-column xor     XOR of one seeded hash per column (text for the same types as hash64);
  hashtext(row)      hashtextextended of the row's text;
  md5                md5 of the row's text (format 1 archives), the first 64 bits.

Every candidate runs over both places at once with VERIFY_WORKERS connections per place
(except `current` and the shape variants) and must find the two sides equal. Each round runs
every candidate once (interleaved, so load from elsewhere hits them alike); the best of the
rounds is reported. A first, unmeasured pass warms the caches. The target database is made
once (provisioned, copied with the engine's copy) and dropped at the end unless kept.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from django.conf import settings
from psycopg import sql

from migration_jobs.engine import deferral
from migration_jobs.engine.copy import copy_tenant, engine_session
from migration_jobs.engine.places import database_place, shared_place
from migration_jobs.engine.tables import row_counts, tenant_tables
from migration_jobs.engine.verify import (HASH64, VERIFY_WORKERS, _fingerprint, fingerprint_query, measure_places,
                                          row_hash, text_hashed_columns, verify_tenant)
from tenancy.servers import ensure_default_server

from .bench_tenants import BenchError, drop_target, provision_target



# --- Row hashes measured against hash64 (benchmark only) -----------------------------------

def _columns(table) -> list[sql.Identifier]:
    return [sql.Identifier(c) for c in sorted(table.columns)]


def native_hash(conn, place, table) -> sql.Composable:
    return sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(_columns(table)))


def row_text_hash(conn, place, table) -> sql.Composable:
    return sql.SQL("hashtextextended(ROW({})::text, 0)").format(sql.SQL(", ").join(_columns(table)))


def md5_hash(conn, place, table) -> sql.Composable:
    return sql.SQL("('x' || substr(md5(ROW({})::text), 1, 16))::bit(64)::bigint").format(
        sql.SQL(", ").join(_columns(table)))


_HASH_FUNCTIONS: dict = {}


def _hash_functions(conn, place, table) -> dict[str, str | None]:
    """column -> the extended hash function of its type's default hash operator class."""
    key = (table.name, table.columns)
    if key not in _HASH_FUNCTIONS:
        rows = conn.execute(
            """SELECT a.attname, (SELECT ap.amproc::regproc::text FROM pg_opclass oc
                      JOIN pg_am am ON am.oid = oc.opcmethod AND am.amname = 'hash'
                      JOIN pg_amproc ap ON ap.amprocfamily = oc.opcfamily AND ap.amprocnum = 2
                                       AND ap.amproclefttype = oc.opcintype
                     WHERE oc.opcdefault AND oc.opcintype = a.atttypid)
                 FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped""",
            (place.table(table.name).as_string(conn),)).fetchall()
        _HASH_FUNCTIONS[key] = dict(rows)
    return _HASH_FUNCTIONS[key]


def per_column_hash(conn, place, table) -> sql.Composable:
    """XOR of hash(column, its position) per column; NULL hashes as the position."""
    as_text, functions = text_hashed_columns(conn, place, table), _hash_functions(conn, place, table)
    parts = []
    for seed, column in enumerate(sorted(table.columns)):
        function = functions.get(column)
        if column in as_text or not function:
            part = sql.SQL("hashtextextended({}::text, {})").format(sql.Identifier(column), sql.Literal(seed))
        else:
            part = sql.SQL("{}({}, {})").format(sql.SQL(function), sql.Identifier(column), sql.Literal(seed))
        parts.append(sql.SQL("coalesce({}, {})").format(part, sql.Literal(seed)))
    return sql.SQL(" # ").join(parts)


# --- The verify of before, kept as the reference --------------------------------------------

def _sequential_place(place, tenant_id: int, tables, count_foreign: bool) -> dict:
    out = {}
    tenant = sql.Identifier("tenant_id")
    with place.connect(autocommit=True, application_name="bench verify current") as conn:
        engine_session(conn)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            for table in tables:
                if count_foreign:  # one scan for both: hash the tenant's rows, count the others
                    rows, total, xor, foreign = conn.execute(sql.SQL(
                        "SELECT count(h), coalesce(sum(h), 0), coalesce(bit_xor(h), 0), count(*) - count(h) FROM "
                        "(SELECT CASE WHEN {tenant} IS NOT DISTINCT FROM %s THEN {hash} END AS h FROM {tbl} "
                        "OFFSET 0) AS hashed").format(tenant=tenant, hash=row_hash(conn, place, table),
                                                      tbl=place.table(table.name)), (tenant_id,)).fetchone()
                    out[table.name] = (_fingerprint(rows, total, xor), int(foreign))
                else:
                    query = fingerprint_query(place, table, row_hash(conn, place, table))
                    out[table.name] = (_fingerprint(*conn.execute(query, (tenant_id,)).fetchone()), None)
        finally:
            conn.execute("ROLLBACK")
    return out


def sequential_verify(source, target, tenant_id: int, tables) -> tuple[dict, dict]:
    with ThreadPoolExecutor(2) as pool:
        src = pool.submit(_sequential_place, source, tenant_id, tables, False)
        dst = pool.submit(_sequential_place, target, tenant_id, tables, True)
        return src.result(), dst.result()


# --- Candidates ------------------------------------------------------------------------------

def _same(src: dict, dst: dict) -> bool:
    return all(src[n] and dst[n] and src[n][0] == dst[n][0] and not dst[n][1] for n in src)


def _parallel_query(place):
    """The place with parallel query forced on each of its queries (benchmark only)."""
    return replace(place, session=(*place.session, ("max_parallel_workers_per_gather", "2"),
                                   ("parallel_setup_cost", "0"), ("parallel_tuple_cost", "0"),
                                   ("min_parallel_table_scan_size", "0")))


def candidates(source, target, tenant_id: int, tables) -> dict:
    """name -> a function that verifies both places at once and returns whether they agree."""
    def measured(row_hash_of=row_hash, workers=VERIFY_WORKERS, src=source, dst=target):
        def run():
            a, b = measure_places([(src, False), (dst, True)], tenant_id, tables, workers=workers,
                                  row_hash_of=row_hash_of)
            return _same(a, b)
        return run

    def default():
        return verify_tenant(source, target, tenant_id, tables, target_is_dedicated=True).ok

    shapes = {f"{HASH64} workers={n}": measured(workers=n) for n in (1, 2, 3) if n != VERIFY_WORKERS}
    return {
        "current": lambda: _same(*sequential_verify(source, target, tenant_id, tables)),
        HASH64: default,
        **shapes,
        f"{HASH64} parallel query": measured(workers=1, src=_parallel_query(source), dst=_parallel_query(target)),
        "no text casts (inexact)": measured(native_hash),
        "per-column xor": measured(per_column_hash),
        "hashtext(row)": measured(row_text_hash),
        "md5": measured(md5_hash),
    }


# --- Server CPU ------------------------------------------------------------------------------

def server_cpu(place):
    """A function returning the CPU seconds used so far by the place's PostgreSQL server (its
    live processes and those it has reaped), or None when the server's processes are not
    readable here (another machine): the work done, whatever else loads the machine."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(path):
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields  # fields[0] is field 3 of proc(5): state

    with place.connect(autocommit=True) as conn:
        try:
            postmaster = int(stat(f"/proc/{conn.info.backend_pid}/stat")[1])
        except (OSError, ValueError, IndexError):
            return None

    def once() -> float:
        total = 0
        main = stat(f"/proc/{postmaster}/stat")
        total += int(main[11]) + int(main[12]) + int(main[13]) + int(main[14])  # utime stime cutime cstime
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == postmaster:
                continue
            try:
                fields = stat(f"/proc/{entry}/stat")
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                total += int(fields[11]) + int(fields[12])
        return total / tick

    def sample() -> float:
        # A backend reaped between reading the postmaster and listing its children is
        # missed by one reading: wait for closed connections to be gone, read until stable.
        time.sleep(0.3)
        previous, current = once(), once()
        while current != previous:
            time.sleep(0.1)
            previous, current = current, once()
        return current
    return sample


# --- The target ------------------------------------------------------------------------------

def target_database(tenant) -> str:
    return f"{settings.TENANT_DATABASE_PREFIX}verifybench_{tenant.slug}"


def _copy_of(tenant, tables, keep: bool):
    """A dedicated database holding a copy of the tenant's rows: reused when a kept one from an
    earlier run has the same row counts, else made with the engine's copy."""
    source = shared_place()
    name = target_database(tenant)
    with source.connect(autocommit=True) as conn:
        counts = row_counts(conn, source, tables, tenant.pk)
    if keep:
        target = database_place(ensure_default_server(), name)
        try:
            with target.connect(autocommit=True) as conn:
                if row_counts(conn, target, tables) == counts:
                    return target, counts, 0.0
        except Exception:  # noqa: BLE001 - no such database yet
            pass
    started = time.perf_counter()
    target = provision_target("database", name)
    with target.connect() as conn:
        deferred = [obj for t in tables for obj in deferral.secondary_objects(conn, target, t.name)]
    with target.connect(autocommit=True) as conn:
        deferral.drop_secondary(conn, target, deferred)
    copy_tenant(source, target, tenant.pk, tables, workers=settings.MIGRATION_COPY_WORKERS)
    with target.connect(autocommit=True) as conn:
        deferral.restore_secondary(conn, target, deferred)
        conn.execute("ANALYZE")
    return target, counts, time.perf_counter() - started


def run_verify_benchmark(tenant, rounds: int = 2, keep: bool = False) -> dict:
    if tenant.placement != "shared":
        raise BenchError(f"tenant {tenant.slug} is in {tenant.placement} placement: the benchmark verifies its "
                         "shared rows against a copy of them; move it back first")
    tables = tenant_tables()
    target, counts, setup = _copy_of(tenant, tables, keep)
    rows = sum(counts.values())
    try:
        runs = candidates(shared_place(), target, tenant.pk, tables)
        runs[HASH64]()  # warm-up, unmeasured: caches, hint bits of the fresh copy
        cpu = server_cpu(target)
        results = {name: [] for name in runs}
        cpu_seconds = {name: [] for name in runs}
        oks = {}
        load = os.getloadavg()[0]
        for _ in range(rounds):
            for name, run in runs.items():
                cpu_before, started = cpu() if cpu else None, time.perf_counter()
                oks[name] = run()
                results[name].append(time.perf_counter() - started)
                if cpu:
                    cpu_seconds[name].append(cpu() - cpu_before)
    finally:
        if not keep:
            drop_target("database", target_database(tenant))
    best = {name: min(seconds) for name, seconds in results.items()}
    return {"tenant": tenant.slug, "source": str(shared_place()), "target": str(target), "rows": rows,
            "setup_seconds": setup, "workers": VERIFY_WORKERS, "rounds": rounds, "cores": os.cpu_count(),
            "load": [load, os.getloadavg()[0]],
            "runs": [{"checksum": name, "rows": rows, "seconds": best[name], "all_seconds": results[name],
                      "server_cpu": min(cpu_seconds[name]) if cpu_seconds[name] else None,
                      "ok": oks[name]} for name in runs]}


def _cpu(run) -> str:
    return "-" if run["server_cpu"] is None else f"{run['server_cpu']:.2f}"


def _per_cpu(run) -> str:
    return "-" if not run["server_cpu"] else f"{run['rows'] / run['server_cpu']:,.0f}"


def format_report(report: dict) -> str:
    lines = [f"tenant {report['tenant']}: {report['rows']:,} rows in {report['source']} against a copy in "
             f"{report['target']}, both sides at once, best of {report['rounds']} round(s); "
             f"load average {report['load'][0]:.1f} before, {report['load'][1]:.1f} after, {report['cores']} cores",
             "", "| checksum | rows | both sides at once (s) | tenant rows/s | vs current | server CPU (s) "
                 "| rows per server CPU s | ok |", "|---|---|---|---|---|---|---|---|"]
    current = next(r["seconds"] for r in report["runs"] if r["checksum"] == "current")
    for run in report["runs"]:
        lines.append(f"| {run['checksum']} | {run['rows']:,} | {run['seconds']:.2f} | "
                     f"{run['rows'] / max(run['seconds'], 1e-9):,.0f} | {current / max(run['seconds'], 1e-9):.2f}x | "
                     f"{_cpu(run)} | {_per_cpu(run)} | {run['ok']} |")
    by_name = {r["checksum"]: r for r in report["runs"]}
    default, md5 = by_name[HASH64], by_name["md5"]
    lines += ["", "server CPU: of the PostgreSQL server holding both sides, whatever else loads the machine; "
                  "on idle cores the wall time of a balanced run tends to server CPU / cores.",
              f"default: {HASH64} with {report['workers']} connections per place sharing its snapshot "
                  f"(engine.verify.VERIFY_WORKERS)",
              f"{HASH64} / md5: {md5['seconds'] / max(default['seconds'], 1e-9):.1f}x faster (best of each)",
              f"verify_tenant: {default['rows']:,} rows in {default['seconds']:.2f} s, "
              f"{default['rows'] / max(default['seconds'], 1e-9):,.0f} rows/s, ok={default['ok']}"]
    return "\n".join(lines)
