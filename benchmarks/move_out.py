"""Benchmark of moving one tenant out of the shared tables (`manage.py bench_migration`).

For each requested size a benchmark tenant `bench_<rows>` is generated server-side in the
shared tables (benchmarks.seeding's per-tenant generator: INSERT ... SELECT generate_series, no
row crosses the wire), then, in this process and on the same rows, four ways of copying it
are measured, each into a freshly provisioned dedicated target:

  (a) a row-by-row script (the naive way to move a tenant): per table in FK order, SELECT ... ORDER BY id LIMIT
      1000 OFFSET k, one parameterised INSERT per row, commit per batch; capped at
      `baseline_limit` rows (rows/s is over the rows it copied);
  (b) a bare binary COPY pipe: one connection pair, tables one after the other in FK order,
      COPY (SELECT ...) TO STDOUT (FORMAT binary) -> COPY ... FROM STDIN (FORMAT binary),
      one transaction per table, into a target with every index and foreign key in place;
  (c) the engine's copy step exactly as a run's copy step does it (deferral.secondary_objects /
      drop_secondary, copy.copy_tenant with MIGRATION_COPY_WORKERS, restore_secondary);
  (d) the engine's full run: services.request_move + services.execute (every step), its
      copy step reported on its own line. The tenant is put back in shared placement after
      each run (its shared rows are never touched by a move).

Every method is checked: per-table row counts of the target against the source (and
engine.verify.verify_tenant where the whole tenant was copied). Peak memory is this
process's RSS, sampled every ~10 ms while a method runs, minus the RSS just before it.

Plain functions; the command is a thin shell. Nothing here is imported by the engine.
"""
from __future__ import annotations

import time
from typing import Callable

from django.conf import settings
from psycopg import sql
from psycopg.types.json import Jsonb

from migration_jobs import services
from migration_jobs.engine import deferral
from migration_jobs.engine.copy import copied_rows, copy_in_statement, copy_out_statement, copy_tenant
from migration_jobs.engine.places import database_place, schema_place, shared_place
from migration_jobs.engine.tables import row_counts, tenant_tables
from migration_jobs.engine.verify import verify_tenant
from migration_jobs.models import RunStatus
from tenancy.servers import ensure_default_server

from .bench_tenants import (BenchError, bench_slug, check_can_run, create_bench_tenant, drop_bench_tenant,
                            fresh_target, put_back_in_shared, target_name)
from .measure import Measurement, RssSampler, SizeResult, format_memory, format_table, measure

BASELINE_BATCH = 1000
Say = Callable[[str], None]


# --- Checks ----------------------------------------------------------------------------------

def tenant_counts(place, tenant_id: int | None, tables) -> dict[str, int]:
    """Rows per table in the place: of one tenant, or (None) every row, whoever's: a
    foreign or duplicated row counts too."""
    with place.connect(autocommit=True, application_name="bench count") as conn:
        return row_counts(conn, place, tables, tenant_id)


def capped_plan(source_rows: dict[str, int], tables, limit: int | None) -> dict[str, int]:
    """Rows per table a copy in FK order stopping after `limit` rows must have written."""
    plan, left = {}, limit if limit is not None else sum(source_rows.values())
    for table in tables:
        plan[table.name] = min(source_rows[table.name], left)
        left -= plan[table.name]
    return plan


def check_copy(target, tables, expected: dict[str, int], *, verify_source=None, tenant_id=None) -> tuple[bool, str]:
    """Row counts per table against `expected`; with `verify_source`, verify_tenant as well."""
    got = tenant_counts(target, None, tables)
    wrong = [f"{name}: {got[name]} rows, expected {expected[name]}" for name in expected if got[name] != expected[name]]
    if wrong:
        return False, "FAIL counts: " + "; ".join(wrong)
    text = f"ok: counts of {len(tables)} tables"
    if verify_source is not None:
        report = verify_tenant(verify_source, target, tenant_id, tables, target_is_dedicated=True)
        if not report.ok:
            return False, "FAIL verify: " + report.summary()
        text += " + verify_tenant"
    return True, text


# --- (a) a row-by-row script ---------------------------------------------------------------

def _jsonb_columns(conn, place, table) -> set[str]:
    rows = conn.execute("""SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                             JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
                              AND a.atttypid IN ('json'::regtype, 'jsonb'::regtype)""",
                        (place.schema, table.name)).fetchall()
    return {name for (name,) in rows}


def copy_row_by_row(source, target, tenant_id: int, tables, limit: int | None) -> dict:
    """The naive loop: SELECT ... ORDER BY id LIMIT 1000 OFFSET k; one INSERT per row;
    target autocommit off, one commit per batch. Stops after `limit` rows. Returns per-table rows."""
    copied: dict[str, int] = {}
    left = limit if limit is not None else float("inf")
    with source.connect(autocommit=True, application_name="bench row-by-row read") as src, \
            target.connect(autocommit=False, application_name="bench row-by-row write") as dst:
        for table in tables:
            copied[table.name] = 0
            if left <= 0:
                continue
            json_columns = _jsonb_columns(dst, target, table)
            columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)
            select = sql.SQL("SELECT {cols} FROM {tbl} WHERE tenant_id = %s ORDER BY {pk} LIMIT %s OFFSET %s").format(
                cols=columns, tbl=source.table(table.name), pk=sql.Identifier(table.pk))
            insert = sql.SQL("INSERT INTO {tbl} ({cols}) VALUES ({values}) ON CONFLICT DO NOTHING").format(
                tbl=target.table(table.name), cols=columns,
                values=sql.SQL(", ").join(sql.Placeholder() * len(table.columns)))
            wrap = [c in json_columns for c in table.columns]
            offset = 0
            while left > 0:
                batch = int(min(BASELINE_BATCH, left))
                rows = src.execute(select, (tenant_id, batch, offset)).fetchall()
                if not rows:
                    break
                with dst.cursor() as cur:
                    for row in rows:
                        cur.execute(insert, [Jsonb(v) if w and v is not None else v for v, w in zip(row, wrap)])
                dst.commit()
                copied[table.name] += len(rows)
                left -= len(rows)
                offset += len(rows)
                if len(rows) < batch:
                    break
    return copied


# --- (b) a bare binary COPY pipe ---------------------------------------------------------------

def copy_bare_pipe(source, target, tenant_id: int, tables) -> dict:
    """One connection pair, tables in FK order, one target transaction per table, every index
    and foreign key of the target in place. Reads from one REPEATABLE READ snapshot."""
    copied = {}
    with source.connect(autocommit=False, application_name="bench bare pipe read") as src, \
            target.connect(autocommit=False, application_name="bench bare pipe write") as dst:
        src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for table in tables:
            with src.cursor() as scur, dst.cursor() as dcur:
                with scur.copy(copy_out_statement(source, table), (tenant_id,)) as copy_out, \
                        dcur.copy(copy_in_statement(target, table)) as copy_in:
                    for data in copy_out:
                        copy_in.write(data)
                copied[table.name] = copied_rows(dcur)
            dst.commit()
        src.rollback()
    return copied


# --- (c) the engine's copy step ------------------------------------------------------------------

def copy_engine_step(source, target, tenant_id: int, tables) -> dict:
    """A run's copy step without the run bookkeeping: record the secondary objects, drop them,
    copy_tenant with MIGRATION_COPY_WORKERS, restore them. Returns phase timings."""
    phases = {}
    started = time.monotonic()
    with target.connect() as conn:
        deferred = [obj for t in tables for obj in deferral.secondary_objects(conn, target, t.name)]
    with target.connect(autocommit=True) as conn:
        deferral.drop_secondary(conn, target, deferred)
    phases["list+drop"] = time.monotonic() - started
    mark = time.monotonic()
    results = copy_tenant(source, target, tenant_id, tables, workers=settings.MIGRATION_COPY_WORKERS)
    phases["copy"] = time.monotonic() - mark
    mark = time.monotonic()
    with target.connect(autocommit=True) as conn:
        deferral.restore_secondary(conn, target, deferred)
    phases["restore"] = time.monotonic() - mark
    return {"phases": phases, "objects": len(deferred),
            "tables": {name: {"rows": r.rows, "bytes": r.bytes, "seconds": r.seconds} for name, r in results.items()},
            "rows": sum(r.rows for r in results.values())}


# --- (d) the engine's full run ---------------------------------------------------------------------

def run_engine(tenant, kind: str):
    tenant.refresh_from_db()
    run = services.request_move(tenant, kind, via="bench")
    return services.execute(run)


def timed_engine_run(tenant, kind: str):
    """(run, seconds, peak RSS growth in MiB) of a full engine run."""
    with RssSampler() as rss:
        started = time.monotonic()
        run = run_engine(tenant, kind)
        seconds = time.monotonic() - started
    return run, seconds, rss.delta_mib


def bench_size(tenant, source_rows: dict[str, int], result: SizeResult, *, kind: str, baseline_limit: int | None,
               repeat: int, keep: bool, say: Say) -> None:
    tables = tenant_tables()
    source = shared_place()
    total = sum(source_rows.values())
    counted = tenant_counts(source, tenant.pk, tables)
    if counted != {t.name: source_rows.get(t.name, 0) for t in tables}:
        raise BenchError(f"{tenant.slug}: source counts {counted} differ from the generated {source_rows}")
    limit = baseline_limit if baseline_limit and baseline_limit < total else None
    full = capped_plan(source_rows, tables, None)

    for round_ in range(1, repeat + 1):
        last = round_ == repeat
        tag = f" (round {round_}/{repeat})" if repeat > 1 else ""

        name = target_name(kind, tenant.slug, "a")
        with fresh_target(kind, name, keep and last) as target:
            say(f"  (a) row-by-row into {target}{tag} ...")
            m = measure("a", lambda: (lambda c: (sum(c.values()), {"tables": c}))(
                copy_row_by_row(source, target, tenant.pk, tables, limit)), capped=limit is not None)
            m.ok, m.check = check_copy(target, tables, capped_plan(source_rows, tables, limit),
                                       verify_source=None if limit else source, tenant_id=tenant.pk)
            if limit:
                m.check = m.check.replace("ok: counts", "ok: capped counts")
            result.runs.setdefault("a", []).append(m)

        name = target_name(kind, tenant.slug, "b")
        with fresh_target(kind, name, keep and last) as target:
            say(f"  (b) bare binary COPY pipe into {target}{tag} ...")
            m = measure("b", lambda: (lambda c: (sum(c.values()), {"tables": c}))(
                copy_bare_pipe(source, target, tenant.pk, tables)))
            m.ok, m.check = check_copy(target, tables, full, verify_source=source, tenant_id=tenant.pk)
            result.runs.setdefault("b", []).append(m)

        name = target_name(kind, tenant.slug, "c")
        with fresh_target(kind, name, keep and last) as target:
            say(f"  (c) engine copy step ({settings.MIGRATION_COPY_WORKERS} workers) into {target}{tag} ...")
            m = measure("c", lambda: (lambda d: (d["rows"], d))(copy_engine_step(source, target, tenant.pk, tables)))
            m.ok, m.check = check_copy(target, tables, full, verify_source=source, tenant_id=tenant.pk)
            result.runs.setdefault("c", []).append(m)

        say(f"  (d) engine full run to a dedicated {kind}{tag} ...")
        run = None
        try:
            run, seconds, rss_mib = timed_engine_run(tenant, kind)
            steps = {s.name: s for s in run.steps.all()}
            copy = steps.get("copy")
            step_seconds = {n: s.duration.total_seconds() for n, s in steps.items() if s.duration}
            rows = copy.rows if copy and copy.rows else 0
            m = Measurement("d", rows=rows, seconds=seconds, peak_rss_mib=rss_mib,
                            details={"steps": step_seconds, "run": run.pk, "copy_tables": copy.details.get("tables")
                                     if copy else None})
            verify = run.report.get("verify", {})
            if run.status != RunStatus.SUCCEEDED:
                m.ok, m.check = False, f"FAIL run {run.pk} {run.status}: {run.error}"
            elif not verify.get("ok"):
                m.ok, m.check = False, f"FAIL run {run.pk}: verify_tenant not ok"
            else:
                target = schema_place(run.target_schema) if kind == "schema" else \
                    database_place(run.target_server, run.target_database)
                m.ok, m.check = check_copy(target, tables, full)
                if m.ok:
                    m.check += " + verify_tenant (run's verify step)"
            result.runs.setdefault("d", []).append(m)
            copy_m = Measurement("d:copy", rows=rows, seconds=step_seconds.get("copy", float("nan")), ok=m.ok,
                                 check=m.check)
            result.runs.setdefault("d:copy", []).append(copy_m)
        finally:
            if run is not None and not (keep and last and run.status == RunStatus.SUCCEEDED):
                put_back_in_shared(tenant, run)


def run_benchmark(sizes: list[int], *, kind: str = "database", baseline_limit: int | None = 50_000,
                  repeat: int = 1, keep: bool = False, say: Say = print) -> list[SizeResult]:
    """Benchmark every size; benchmark tenants and targets are removed at the end (even on
    failure) unless `keep`. Raises BenchError before doing anything if it must not run."""
    if kind not in ("database", "schema"):
        raise BenchError(f"unknown target {kind!r}: use database or schema")
    if repeat < 1:
        raise BenchError("--repeat must be at least 1")
    sizes = list(dict.fromkeys(sizes))
    if not sizes or min(sizes) < 1:
        raise BenchError("--rows must be at least 1")
    ensure_default_server()
    leftovers = check_can_run(sizes)
    for tenant in leftovers:
        say(f"removing {tenant.slug} left by an earlier run")
        drop_bench_tenant(tenant)
    results: list[SizeResult] = []
    made = []
    try:
        for rows in sizes:
            say(f"generating tenant {bench_slug(rows)} (~{rows:,} rows) server-side ...")
            started = time.monotonic()
            tenant, source_rows = create_bench_tenant(rows)
            made.append(tenant)
            result = SizeResult(requested_rows=rows, slug=tenant.slug, target=kind, source_rows=source_rows,
                                seed_seconds=time.monotonic() - started)
            say(f"  {result.total_rows:,} rows in {len(source_rows)} tables in {result.seed_seconds:.1f}s")
            try:
                bench_size(tenant, source_rows, result, kind=kind, baseline_limit=baseline_limit, repeat=repeat,
                           keep=keep, say=say)
            finally:
                results.append(result)
            if not keep:
                drop_bench_tenant(tenant)
                made.remove(tenant)
            say(format_table(result, repeat=repeat))
    finally:
        if not keep:
            for tenant in made:
                try:
                    drop_bench_tenant(tenant)
                except Exception as exc:  # noqa: BLE001 - report, clean the others
                    say(f"cleanup of {tenant.slug} failed: {type(exc).__name__}: {exc}")
    if len(results) > 1:
        say(format_memory(results))
    return results

