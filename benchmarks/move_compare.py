"""`bench_migration --compare`: the engine's whole moves against what a DBA would do by hand,
in one process on the same generated tenant, for each size (issue 13's table):

  (b) bare binary COPY pipe into a fresh database (move_out.copy_bare_pipe: FK order, one
      transaction per table, every index and foreign key of the target in place);
  (e) bare `INSERT ... SELECT` into a fresh schema of the same database: one transaction, FK
      order, every index in place (a hand-written move within one server);
  (d-db) the engine's full run to a dedicated database; (d-schema) to a dedicated schema:
      every step with its seconds and round trips (the step's details), and the verify
      step's rows/s (the tenant's rows / the step's seconds); and (d-schema, pipe) the same
      schema move with MIGRATION_COPY_IN_SERVER off, its rows piped through this process as
      to a database (what the in-server copy saves).

Then the ratios the issue asks for: full database move / (b) and full schema move / (e)
(goal at most 1.0x), verification rows/s (goal 1M/s), the full database move's seconds at
~50k rows (goal under 1.5 s, in this process, start-up excluded) and the peak RSS of the
full runs at every size (memory flat from ~200k rows to the biggest). Goals are printed, not asserted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.test import override_settings
from psycopg import sql

from migration_jobs.engine.archive import PART_QUEUE_BLOCKS
from migration_jobs.engine.copy import BLOCK_SIZE
from migration_jobs.engine.places import shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.models import RunStatus
from tenancy.servers import ensure_default_server

from .bench_tenants import (BenchError, bench_slug, check_can_run, create_bench_tenant, drop_bench_tenant,
                            fresh_target, put_back_in_shared, target_name)
from .measure import Measurement, measure
from .move_out import Say, capped_plan, check_copy, copy_bare_pipe, tenant_counts, timed_engine_run

GOAL_SMALL_ROWS = 100_000   # sizes up to this are checked against the 1.5 s goal
GOAL_SMALL_SECONDS = 1.5
GOAL_VERIFY_ROWS_PER_SECOND = 1_000_000
# Memory must stay flat from ~200k rows to the biggest size: each copying thread holds at most
# the block it reads, libpq's output buffer (up to two blocks: it doubles when a block does not
# fit behind what it still holds), its archive part's queue, the block being compressed and its
# output; nothing grows with the rows. The bound below is that, plus slack for the interpreter
# and the ORM.
MEMORY_FROM_ROWS = 150_000


def memory_bound_mib() -> float:
    blocks = settings.MIGRATION_COPY_WORKERS * (PART_QUEUE_BLOCKS + 5)
    return blocks * BLOCK_SIZE / 2**20 + 4


@dataclass
class EngineRun:
    kind: str
    seconds: float
    peak_rss_mib: float
    ok: bool
    check: str
    steps: dict = field(default_factory=dict)   # name -> {"seconds", "round_trips"}

    @property
    def round_trips(self) -> int:
        return sum(s.get("round_trips") or 0 for s in self.steps.values())


@dataclass
class Comparison:
    rows: int
    slug: str
    pipe: Measurement | None = None
    insert_select: Measurement | None = None
    engine: dict = field(default_factory=dict)  # "database" | "schema" | "schema-pipe" -> EngineRun

    @property
    def ok(self) -> bool:
        return all(m.ok for m in (self.pipe, self.insert_select) if m) and all(r.ok for r in self.engine.values())

    def verify_rate(self, kind: str) -> float | None:
        run = self.engine.get(kind)
        seconds = run.steps.get("verify", {}).get("seconds") if run else None
        return self.rows / seconds if seconds else None


# --- (e) a bare INSERT ... SELECT -------------------------------------------------------------

def copy_insert_select(source, target, tenant_id: int, tables) -> dict:
    """Every table in FK order in one transaction: INSERT INTO target SELECT ... FROM source."""
    copied = {}
    with target.connect(autocommit=False, application_name="bench insert select") as conn:
        for table in tables:
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)
            cur = conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE tenant_id = %s").format(
                target.table(table.name), cols, cols, source.table(table.name)), (tenant_id,))
            copied[table.name] = cur.rowcount
        conn.commit()
    return copied


# --- (d) the engine's full runs, step by step -------------------------------------------------

def engine_run(tenant, kind: str, total: int) -> EngineRun:
    run = None
    try:
        run, seconds, rss_mib = timed_engine_run(tenant, kind)
        steps = {s.name: {"seconds": s.duration.total_seconds() if s.duration else 0.0,
                          "round_trips": s.details.get("round_trips")} for s in run.steps.order_by("order")}
        ok = run.status == RunStatus.SUCCEEDED and run.report.get("verify", {}).get("ok") and run.rows_copied == total
        check = (f"ok: run's verify step, {run.rows_copied:,} rows" if ok else
                 f"FAIL run {run.pk} {run.status}: {run.error or 'verify not ok or rows differ'}")
        return EngineRun(kind, seconds, rss_mib, bool(ok), check, steps)
    finally:
        if run is not None:
            put_back_in_shared(tenant, run)


def compare_size(tenant, source_rows: dict[str, int], say: Say) -> Comparison:
    tables = tenant_tables()
    source = shared_place()
    total = sum(source_rows.values())
    if tenant_counts(source, tenant.pk, tables) != {t.name: source_rows.get(t.name, 0) for t in tables}:
        raise BenchError(f"{tenant.slug}: source counts differ from the generated ones")
    full = capped_plan(source_rows, tables, None)
    result = Comparison(rows=total, slug=tenant.slug)

    def bare(method: str, kind: str, label: str, copy) -> Measurement:
        """A hand-written move of the same rows into a fresh target, checked."""
        with fresh_target(kind, target_name(kind, tenant.slug, method), False) as target:
            say(f"  ({method}) {label} into {target} ...")
            m = measure(method, lambda: (lambda c: (sum(c.values()), {"tables": c}))(
                copy(source, target, tenant.pk, tables)))
            m.ok, m.check = check_copy(target, tables, full, verify_source=source, tenant_id=tenant.pk)
            return m

    result.pipe = bare("b", "database", "bare binary COPY pipe", copy_bare_pipe)
    result.insert_select = bare("e", "schema", "bare INSERT ... SELECT", copy_insert_select)

    for kind in ("database", "schema"):
        say(f"  (d) engine full run to a dedicated {kind} ...")
        result.engine[kind] = engine_run(tenant, kind, total)
    say("  (d) engine full run to a dedicated schema, rows piped through this process ...")
    with override_settings(MIGRATION_COPY_IN_SERVER=False):
        result.engine["schema-pipe"] = engine_run(tenant, "schema", total)
    return result


def run_compare(sizes: list[int], *, say: Say = print) -> list[Comparison]:
    sizes = sorted(dict.fromkeys(sizes))
    if not sizes or min(sizes) < 1:
        raise BenchError("--rows must be at least 1")
    ensure_default_server()
    for tenant in check_can_run(sizes):
        say(f"removing {tenant.slug} left by an earlier run")
        drop_bench_tenant(tenant)
    results: list[Comparison] = []
    for rows in sizes:
        say(f"generating tenant {bench_slug(rows)} (~{rows:,} rows) server-side ...")
        tenant, source_rows = create_bench_tenant(rows)
        try:
            result = compare_size(tenant, source_rows, say)
        finally:
            drop_bench_tenant(tenant)
        results.append(result)
        say(format_comparison(result))
    say(format_goals(results))
    return results


# --- Output -------------------------------------------------------------------------------------

def _table(columns, lines, right) -> list[str]:
    widths = [max(len(str(row[i])) for row in [columns, *lines]) for i in range(len(columns))]

    def fmt(row):
        return "  ".join(str(v).rjust(w) if i in right else str(v).ljust(w)
                         for i, (v, w) in enumerate(zip(row, widths))).rstrip()
    return [fmt(columns), fmt(["-" * w for w in widths]), *map(fmt, lines)]


def _x(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else "-"


def format_comparison(c: Comparison) -> str:
    db, schema, piped = c.engine.get("database"), c.engine.get("schema"), c.engine.get("schema-pipe")
    pipe = c.pipe.seconds if c.pipe else None
    insert = c.insert_select.seconds if c.insert_select else None
    rows = []
    for label, m in (("(b) bare binary COPY pipe -> database", c.pipe),
                     ("(e) bare INSERT ... SELECT -> schema", c.insert_select)):
        if m:
            rows.append((label, f"{m.seconds:.2f}", f"{m.rows / m.seconds:,.0f}", "1.00x", "-",
                         f"{m.peak_rss_mib:.1f}", m.check))
    for label, run, base in (("(d) engine full run -> database", db, pipe),
                             ("(d) engine full run -> schema", schema, insert),
                             ("(d) engine full run -> schema, pipe copy", piped, insert)):
        if run:
            rows.append((label, f"{run.seconds:.2f}", f"{c.rows / run.seconds:,.0f}", _x(run.seconds, base),
                         f"{run.round_trips:,}", f"{run.peak_rss_mib:.1f}", run.check))
    out = [f"\nTenant {c.slug}: {c.rows:,} rows; one run of each, same rows",
           *_table(("method", "seconds", "rows/s", "vs bare", "round trips", "peak RSS Δ MiB", "check"), rows,
                   {1, 2, 3, 4, 5})]
    runs = (db, schema, piped)
    names = list(dict.fromkeys(name for run in runs if run for name in run.steps))
    def cells(run, name):
        x = run.steps.get(name) if run else None
        if not x:
            return ["-", "-"]
        return [f"{x['seconds']:.2f}", "-" if x["round_trips"] is None else str(x["round_trips"])]

    steps = [(name, *(cell for run in runs for cell in cells(run, name))) for name in names]
    out += ["", *_table(("step", "database s", "round trips", "schema s", "round trips", "schema (pipe) s",
                         "round trips"), steps, {1, 2, 3, 4, 5, 6})]
    rates = [f"{kind} {rate:,.0f} rows/s" for kind in ("database", "schema")
             if (rate := c.verify_rate(kind)) is not None]
    if rates:
        out.append("verification (the verify step): " + ", ".join(rates))
    return "\n".join(out)


def format_goals(results: list[Comparison]) -> str:
    if not results:
        return ""
    big = results[-1]
    db, schema = big.engine.get("database"), big.engine.get("schema")
    lines = [f"\nGoals (issue 13), at {big.rows:,} rows:"]

    def goal(text, ok):
        lines.append(f"  {'met ' if ok else 'MISS'}  {text}")

    if db and big.pipe:
        r = db.seconds / big.pipe.seconds
        goal(f"full database move / bare pipe = {r:.2f}x (goal <= 1.0x)", r <= 1.0)
    if schema and big.insert_select:
        r = schema.seconds / big.insert_select.seconds
        goal(f"full schema move / INSERT ... SELECT = {r:.2f}x (goal <= 1.0x)", r <= 1.0)
    for kind in ("database", "schema"):
        rate = big.verify_rate(kind)
        if rate is not None:
            goal(f"verification ({kind}) {rate:,.0f} rows/s (goal >= {GOAL_VERIFY_ROWS_PER_SECOND:,})",
                 rate >= GOAL_VERIFY_ROWS_PER_SECOND)
    inside, piped = (big.engine.get(k) for k in ("schema", "schema-pipe"))
    if inside and piped and "copy" in inside.steps and "copy" in piped.steps:
        a, b = inside.steps["copy"]["seconds"], piped.steps["copy"]["seconds"]
        lines.append(f"  copy step to a schema: in server {a:.2f} s, piped through this process {b:.2f} s "
                     f"({_x(a, b)} of the pipe's time)")
    for c in results:
        run = c.engine.get("database")
        if run and c.rows <= GOAL_SMALL_ROWS:
            goal(f"full database move of {c.rows:,} rows {run.seconds:.2f} s (goal < {GOAL_SMALL_SECONDS} s, "
                 "in process)", run.seconds < GOAL_SMALL_SECONDS)
    for kind in ("database", "schema"):
        runs = [(c.rows, c.engine[kind].peak_rss_mib) for c in results if kind in c.engine]
        if len(runs) < 2:
            continue
        lines.append(f"  peak RSS Δ of the full {kind} run: " + ", ".join(f"{mib:.1f} MiB at {rows:,} rows"
                                                                      for rows, mib in runs))
        sized = [(rows, mib) for rows, mib in runs if rows >= MEMORY_FROM_ROWS]
        if sized:
            bound = memory_bound_mib()
            worst = max(mib for _, mib in sized)
            goal(f"memory flat ({kind}): at most {worst:.1f} MiB from {sized[0][0]:,} to {sized[-1][0]:,} rows "
                 f"(goal: within the blocks in flight, {bound:.0f} MiB, whatever the rows)", worst <= bound)
    return "\n".join(lines)
