"""Benchmark of moving one tenant out of the shared tables (`manage.py bench_migration`).

For each requested size a benchmark tenant `bench_<rows>` is generated server-side in the
shared tables (shop.seeding's per-tenant generator: INSERT ... SELECT generate_series, no
row crosses the wire), then, in this process and on the same rows, four ways of copying it
are measured, each into a freshly provisioned dedicated target:

  (a) the runbook's row-by-row script: per table in FK order, SELECT ... ORDER BY id LIMIT
      1000 OFFSET k, one parameterised INSERT per row, commit per batch; capped at
      `baseline_limit` rows (rows/s is over the rows it copied);
  (b) a bare binary COPY pipe: one connection pair, tables one after the other in FK order,
      COPY (SELECT ...) TO STDOUT (FORMAT binary) -> COPY ... FROM STDIN (FORMAT binary),
      one transaction per table, into a target with every index and foreign key in place;
  (c) the engine's copy step exactly as runner.Copy does it (deferral.secondary_objects /
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

import gc
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.db import connection, transaction
from psycopg import sql
from psycopg.types.json import Jsonb

BENCH_MARKER = "bench_migration"
SLUG_PREFIX = "bench_"
METHODS = ("a", "b", "c", "d")
BASELINE_BATCH = 1000
LABELS = {
    "a": "(a) runbook row-by-row INSERT",
    "b": "(b) bare binary COPY pipe",
    "c": "(c) engine copy step",
    "d": "(d) engine full run",
    "d:copy": "    (d) of which: copy step",
}


class BenchError(Exception):
    """The benchmark cannot run (or a copy was wrong); the message says why."""


# --- Measurements ---------------------------------------------------------------------------

@dataclass
class Measurement:
    method: str
    rows: int
    seconds: float
    peak_rss_mib: float | None = None
    ok: bool = True
    check: str = "ok"
    capped: bool = False
    details: dict = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class SizeResult:
    requested_rows: int
    slug: str
    target: str
    source_rows: dict[str, int]
    seed_seconds: float
    runs: dict[str, list[Measurement]] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.source_rows.values())

    def median(self, method: str) -> Measurement | None:
        runs = self.runs.get(method) or []
        if not runs:
            return None
        first = runs[0]
        peaks = [m.peak_rss_mib for m in runs if m.peak_rss_mib is not None]
        return Measurement(method=method, rows=first.rows, seconds=statistics.median(m.seconds for m in runs),
                           peak_rss_mib=statistics.median(peaks) if peaks else None,
                           ok=all(m.ok for m in runs),
                           check="; ".join(dict.fromkeys(m.check for m in runs)),
                           capped=first.capped, details=runs[-1].details)

    @property
    def ok(self) -> bool:
        return all(m.ok for runs in self.runs.values() for m in runs)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Peak RSS of this process while the block runs, minus the RSS before it (MiB)."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self):
        while not self._stop.wait(self.interval):
            value = rss_kib()
            if value > self.peak:
                self.peak = value

    def __enter__(self):
        gc.collect()
        self.baseline = self.peak = rss_kib()
        self._thread = threading.Thread(target=self._sample, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib())
        return False

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.baseline) / 1024


# --- Benchmark tenants -----------------------------------------------------------------------

def bench_slug(rows: int) -> str:
    return f"{SLUG_PREFIX}{rows}"


def bench_seed(rows: int) -> int:
    # Salts (hence Customer.public_id, globally unique) differ from every demo tenant's
    # (seed 42 ..) and between sizes.
    return 7_000_000_000 + rows


def check_can_run(sizes: list[int]) -> list:
    """Refuse when a bench tenant is dedicated or not ours; return leftovers to clear."""
    from tenancy.models import Placement, Tenant

    leftovers = []
    for tenant in Tenant.objects.filter(slug__in=[bench_slug(n) for n in sizes]):
        if tenant.placement != Placement.SHARED:
            raise BenchError(f"tenant {tenant.slug} exists in {tenant.placement} placement (kept by an earlier "
                             "--keep run?); move it back or delete it before benchmarking")
        if BENCH_MARKER not in (tenant.settings or {}):
            raise BenchError(f"tenant {tenant.slug} exists and was not made by bench_migration; "
                             "rename or delete it first")
        leftovers.append(tenant)
    return leftovers


def create_bench_tenant(rows: int):
    """A shared-placement tenant `bench_<rows>` with about `rows` shop rows, built server-side
    by shop.seeding's per-tenant generator, in one transaction. Returns (tenant, rows by table)."""
    from shop import seeding
    from tenancy.models import Tenant

    slug = bench_slug(rows)
    tables = seeding.shop_tables()
    with transaction.atomic():
        connection.set_schema_to_public()
        with connection.cursor():  # django-tenants sets the search_path
            pass
        tenant = Tenant(slug=slug, name=f"Benchmark {rows:,} rows", placement="shared", status="active",
                        settings={BENCH_MARKER: {"rows": rows}})
        tenant.save()
        pg = seeding._pg(connection)
        with pg.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            cur.execute("SET LOCAL work_mem = '64MB'")
            cur.execute("SET LOCAL jit = off")
            # Ids are assigned after each table's max id: no one may take ids meanwhile.
            cur.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in tables)))
            next_id = {}
            for table in tables:
                cur.execute(sql.SQL("SELECT coalesce(max(id), 0) + 1 FROM {}").format(sql.Identifier(table)))
                next_id[table] = cur.fetchone()[0]
            result = seeding.TenantSeed(slug=slug, name=tenant.name, tenant_id=tenant.pk, target_rows=rows)
            seeding._seed_tenant(cur, 0, result, bench_seed(rows), next_id, None)
            for table in tables:
                seeding._fix_sequence(cur, table)
    with connection.cursor() as cur:
        cur.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in tables))
                    .as_string(seeding._pg(connection)))
    return tenant, dict(result.rows)


def drop_bench_tenant(tenant) -> None:
    """Delete a benchmark tenant: its places, runs, exports, credential, shop rows, itself."""
    from migration_jobs.engine import provision
    from shop import seeding
    from tenancy.models import DatabaseCredential, Tenant
    from tenancy.servers import ensure_default_server

    if BENCH_MARKER not in (tenant.settings or {}):
        raise BenchError(f"refusing to delete tenant {tenant.slug}: not made by bench_migration")
    server = ensure_default_server()
    connection.set_schema_to_public()
    for method in METHODS[:3]:
        provision.drop_database(server, target_name("database", tenant.slug, method),
                                provision.role_name(target_name("database", tenant.slug, method)))
        provision.drop_schema(target_name("schema", tenant.slug, method))
    for credential in DatabaseCredential.objects.filter(tenant=tenant):
        provision.drop_database(credential.server, credential.database, credential.role)
    provision.drop_database(server, tenant.database_name, provision.role_name(tenant.database_name))
    provision.drop_schema(tenant.schema_name)
    for run in tenant.migration_runs.all():
        _remove_exports(run)
    tenant.migration_runs.all().delete()
    DatabaseCredential.objects.filter(tenant=tenant).delete()
    remove_fence(tenant.pk)  # a move fenced its shared rows: they would refuse the DELETE
    with connection.cursor() as cur:
        for table in reversed(seeding.shop_tables()):  # children first
            cur.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(sql.Identifier(table))
                        .as_string(seeding._pg(connection)), [tenant.pk])
    Tenant.objects.filter(pk=tenant.pk).delete()


def _remove_exports(run) -> None:
    for step in run.steps.filter(name="backup"):
        path = step.details.get("path")
        if path:
            for candidate in (Path(path), Path(path + ".partial")):
                candidate.unlink(missing_ok=True)


# --- Targets ---------------------------------------------------------------------------------

def target_name(kind: str, slug: str, method: str) -> str:
    prefix = settings.TENANT_DATABASE_PREFIX if kind == "database" else settings.TENANT_SCHEMA_PREFIX
    return f"{prefix}{slug}_{method}"


def provision_target(kind: str, name: str):
    """A fresh dedicated target (dropped first if an earlier run left it), every table migrated."""
    from migration_jobs.engine import provision
    from migration_jobs.engine.places import database_place, schema_place
    from tenancy.servers import ensure_default_server

    if kind == "schema":
        provision.drop_schema(name)
        provision.ensure_schema(name)
        return schema_place(name)
    server = ensure_default_server()
    role = provision.role_name(name)
    provision.drop_database(server, name, role)
    provision.provision_database(server, name, role, provision.new_password())
    return database_place(server, name)


def drop_target(kind: str, name: str) -> None:
    from migration_jobs.engine import provision
    from tenancy.servers import ensure_default_server

    if kind == "schema":
        connection.set_schema_to_public()
        provision.drop_schema(name)
    else:
        provision.drop_database(ensure_default_server(), name, provision.role_name(name))


@contextmanager
def fresh_target(kind: str, name: str, keep: bool):
    place = provision_target(kind, name)
    try:
        yield place
    finally:
        if not keep:
            drop_target(kind, name)


# --- Checks ----------------------------------------------------------------------------------

def tenant_counts(place, tenant_id: int, tables) -> dict[str, int]:
    with place.connect(autocommit=True, application_name="bench count") as conn:
        return {t.name: conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
            place.table(t.name)), (tenant_id,)).fetchone()[0] for t in tables}


def all_counts(place, tables) -> dict[str, int]:
    """Every row of the target's tables, whoever's: a foreign or duplicated row counts too."""
    with place.connect(autocommit=True, application_name="bench count") as conn:
        return {t.name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(place.table(t.name))).fetchone()[0]
                for t in tables}


def capped_plan(source_rows: dict[str, int], tables, limit: int | None) -> dict[str, int]:
    """Rows per table a copy in FK order stopping after `limit` rows must have written."""
    plan, left = {}, limit if limit is not None else sum(source_rows.values())
    for table in tables:
        plan[table.name] = min(source_rows[table.name], left)
        left -= plan[table.name]
    return plan


def check_copy(target, tables, expected: dict[str, int], *, verify_source=None, tenant_id=None) -> tuple[bool, str]:
    """Row counts per table against `expected`; with `verify_source`, verify_tenant as well."""
    got = all_counts(target, tables)
    wrong = [f"{name}: {got[name]} rows, expected {expected[name]}" for name in expected if got[name] != expected[name]]
    if wrong:
        return False, "FAIL counts: " + "; ".join(wrong)
    text = f"ok: counts of {len(tables)} tables"
    if verify_source is not None:
        from migration_jobs.engine.verify import verify_tenant

        report = verify_tenant(verify_source, target, tenant_id, tables, target_is_dedicated=True)
        if not report.ok:
            return False, "FAIL verify: " + report.summary()
        text += " + verify_tenant"
    return True, text


# --- (a) the runbook's row-by-row script -----------------------------------------------------

def _jsonb_columns(conn, place, table) -> set[str]:
    rows = conn.execute("""SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                             JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
                              AND a.atttypid IN ('json'::regtype, 'jsonb'::regtype)""",
                        (place.schema, table.name)).fetchall()
    return {name for (name,) in rows}


def copy_row_by_row(source, target, tenant_id: int, tables, limit: int | None) -> dict:
    """The runbook's loop: SELECT ... ORDER BY id LIMIT 1000 OFFSET k; one INSERT per row;
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
    from migration_jobs.engine.copy import _copied_rows, copy_in_statement, copy_out_statement

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
                copied[table.name] = _copied_rows(dcur)
            dst.commit()
        src.rollback()
    return copied


# --- (c) the engine's copy step ------------------------------------------------------------------

def copy_engine_step(source, target, tenant_id: int, tables) -> dict:
    """runner.Copy.run without the run bookkeeping: record the secondary objects, drop them,
    copy_tenant with MIGRATION_COPY_WORKERS, restore them. Returns phase timings."""
    from migration_jobs.engine import deferral
    from migration_jobs.engine.copy import copy_tenant

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
    from migration_jobs import services

    tenant.refresh_from_db()
    run = services.request_move(tenant, kind, via="bench")
    return services.execute(run)


def remove_fence(tenant_id: int) -> None:
    """Drop the write fence a move leaves on the tenant's (legacy) rows in the shared tables."""
    from migration_jobs.engine import capture
    from migration_jobs.engine.places import shared_place
    from migration_jobs.engine.tables import tenant_tables

    place = shared_place()
    with place.connect(application_name="bench cleanup") as conn:
        capture.remove_fence(conn, place, tenant_id, tenant_tables())


def put_back_in_shared(tenant, run, *, drop: bool = True) -> None:
    """Undo a benchmark move without copying: the shared rows were never touched by the move."""
    from migration_jobs.engine import provision
    from tenancy.models import DatabaseCredential, Placement, Status, Tenant

    connection.set_schema_to_public()
    remove_fence(tenant.pk)
    if drop:
        if run.target_schema:
            provision.drop_schema(run.target_schema)
        if run.target_database:
            provision.drop_database(run.target_server, run.target_database,
                                    provision.role_name(run.target_database))
        DatabaseCredential.objects.filter(tenant_id=tenant.pk).delete()
    fresh = Tenant.objects.get(pk=tenant.pk)
    fresh.placement, fresh.status = Placement.SHARED, Status.ACTIVE
    fresh.save()  # the route caches hear about it


# --- One size ------------------------------------------------------------------------------------

Say = Callable[[str], None]


def measure(method: str, body: Callable[[], tuple[int, dict]], *, capped: bool = False) -> Measurement:
    with RssSampler() as rss:
        started = time.monotonic()
        rows, details = body()
        seconds = time.monotonic() - started
    return Measurement(method=method, rows=rows, seconds=seconds, peak_rss_mib=rss.delta_mib, capped=capped,
                       details=details)


def bench_size(tenant, source_rows: dict[str, int], result: SizeResult, *, kind: str, baseline_limit: int | None,
               repeat: int, keep: bool, say: Say) -> None:
    from migration_jobs.engine.places import database_place, schema_place, shared_place
    from migration_jobs.engine.tables import tenant_tables
    from migration_jobs.models import RunStatus

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
            with RssSampler() as rss:
                started = time.monotonic()
                run = run_engine(tenant, kind)
                seconds = time.monotonic() - started
            steps = {s.name: s for s in run.steps.all()}
            copy = steps.get("copy")
            step_seconds = {n: s.duration.total_seconds() for n, s in steps.items() if s.duration}
            rows = copy.rows if copy and copy.rows else 0
            m = Measurement("d", rows=rows, seconds=seconds, peak_rss_mib=rss.delta_mib,
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
    from tenancy.servers import ensure_default_server

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


# --- Output ------------------------------------------------------------------------------------

def _ratio(value: float, base: float | None) -> str:
    if not base or base != base:
        return "-"
    return f"{value / base:.2f}x" if value / base < 10 else f"{value / base:.1f}x"


def format_table(result: SizeResult, *, repeat: int = 1) -> str:
    a, b = result.median("a"), result.median("b")
    head = (f"\nTenant {result.slug}: {result.total_rows:,} rows in {len(result.source_rows)} tables -> dedicated "
            f"{result.target}; copy workers {settings.MIGRATION_COPY_WORKERS}; "
            f"{'median of ' + str(repeat) + ' runs' if repeat > 1 else '1 run'}")
    columns = ("method", "rows", "seconds", "rows/s", "vs (a)", "vs (b)", "peak RSS Δ MiB", "check")
    lines = []
    for method in ("a", "b", "c", "d", "d:copy"):
        m = result.median(method)
        if m is None:
            continue
        label = LABELS[method] + (" [capped]" if m.capped else "")
        lines.append((label, f"{m.rows:,}", f"{m.seconds:.2f}", f"{m.rows_per_second:,.0f}",
                      _ratio(m.rows_per_second, a.rows_per_second if a else None),
                      _ratio(m.rows_per_second, b.rows_per_second if b else None),
                      f"{m.peak_rss_mib:.1f}" if m.peak_rss_mib is not None else "-", m.check))
    widths = [max(len(str(row[i])) for row in [columns, *lines]) for i in range(len(columns))]
    right = {1, 2, 3, 4, 5, 6}

    def fmt(row):
        return "  ".join(str(v).rjust(w) if i in right else str(v).ljust(w)
                         for i, (v, w) in enumerate(zip(row, widths))).rstrip()

    out = [head, fmt(columns), fmt(["-" * w for w in widths]), *map(fmt, lines)]
    if a is not None and a.capped:
        out.append(f"Note: (a) is capped at {a.rows:,} of {result.total_rows:,} rows (--baseline-limit); "
                   "its rows/s is over the rows it copied, and OFFSET makes it slower still on the rest.")
    last = " (last run)" if repeat > 1 else ""
    if repeat > 1:
        out.append("seconds per run: " + "; ".join(
            f"({m}) " + ", ".join(f"{x.seconds:.2f}" for x in result.runs[m]) for m in ("a", "b", "c", "d", "d:copy")
            if result.runs.get(m)))
    c = result.median("c")
    if c is not None and "phases" in c.details:
        p = c.details["phases"]
        slow = sorted(c.details["tables"].items(), key=lambda kv: -kv[1]["seconds"])[:3]
        out.append(f"(c) phases{last}: list+drop {p['list+drop']:.2f}s, copy {p['copy']:.2f}s, restore "
                   f"{c.details['objects']} indexes/constraints {p['restore']:.2f}s; slowest tables: "
                   + ", ".join(f"{n} {v['rows']:,} rows {v['seconds']:.2f}s" for n, v in slow))
    d = result.median("d")
    if d is not None and d.details.get("steps"):
        out.append(f"(d) steps{last}: " + ", ".join(f"{n} {s:.2f}s" for n, s in d.details["steps"].items()))
        tables = d.details.get("copy_tables") or {}
        slow = sorted(tables.items(), key=lambda kv: -kv[1]["seconds"])[:3]
        if slow:
            out.append(f"(d) copy step{last}, slowest tables: "
                       + ", ".join(f"{n} {v['rows']:,} rows {v['seconds']:.2f}s" for n, v in slow))
    return "\n".join(out)


def format_memory(results: list[SizeResult]) -> str:
    peaks = [(r.total_rows, r.median("c").peak_rss_mib) for r in results if r.median("c") is not None]
    if not peaks:
        return ""
    text = "; ".join(f"{rows:,} rows: {peak:.1f} MiB" for rows, peak in peaks)
    values = [p for _, p in peaks]
    growth = max(values) - min(values)
    rows_growth = max(r for r, _ in peaks) / max(1, min(r for r, _ in peaks))
    return (f"\nMemory, (c) engine copy step peak RSS Δ by tenant size: {text} "
            f"(spread {growth:.1f} MiB while the tenant grows {rows_growth:.1f}x)")
