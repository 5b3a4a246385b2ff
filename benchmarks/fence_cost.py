"""What fences cost the tenants that stay: a single-row insert (latency, median and p99) and a
bulk insert of a staying tenant's rows, with 0, 100 and 1,000 other tenants fenced, under
  - `per-tenant`: the earlier design, recreated here from its SQL as the baseline: per fenced
    tenant three BEFORE row triggers (one per write kind) WHEN (tenant_id = X) calling a check
    of the fence table;
  - `guard`: the engine's guard (engine/guard.py): three statement triggers per table whatever
    the number of fenced tenants, which look the written tenants up in the fence table.
Same table, same process, configurations interleaved round by round (the machine may be
shared). The table is a copy of shop_customer (columns, defaults, indexes; no foreign key, so
the fenced tenants need no rows elsewhere) in a scratch schema, dropped at the end; every
insert is rolled back, so the table does not grow between configurations. Latency is the
statement's (the commit, the same for all, is left out)."""
from __future__ import annotations

import statistics
import time
import uuid

import psycopg
from psycopg import sql

from migration_jobs.engine import guard
from migration_jobs.engine.places import shared_place

SCHEMA = "bench_fences"
TABLE = "shop_customer"
STAYING = 1                 # the staying tenant's id (no foreign key here: any id)
FENCED_FROM = 1_000_000     # fenced tenants: FENCED_FROM, FENCED_FROM + 1, ...
APPROACHES = ("per-tenant", "guard")

# The per-tenant design's check function and triggers (capture.py before the guard).
OLD_FENCE_FUNCTION = """CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
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
    END $$"""
OLD_WHEN = {"INSERT": "NEW.tenant_id = {t}", "UPDATE": "OLD.tenant_id = {t} OR NEW.tenant_id = {t}",
             "DELETE": "OLD.tenant_id = {t}"}

INSERT_ONE = sql.SQL("INSERT INTO {} (tenant_id, public_id, first_name, last_name, email, phone, notes, "
                     "loyalty_points, tags, created_at) VALUES (%s, %s, 'Ada', 'Staying', NULL, '+41 00', NULL, "
                     "7, '{{a,b}}', now())").format(sql.Identifier(SCHEMA, TABLE))
INSERT_BULK = sql.SQL("INSERT INTO {} (tenant_id, public_id, first_name, last_name, phone, loyalty_points, tags, "
                      "created_at) SELECT %s, gen_random_uuid(), 'Bulk', 'Row ' || g, '', g, '{{}}', now() "
                      "FROM generate_series(1, %s) g").format(sql.Identifier(SCHEMA, TABLE))


def _table():
    return sql.Identifier(SCHEMA, TABLE)


def _setup_schema(conn, existing_rows: int) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE public.{} INCLUDING DEFAULTS INCLUDING IDENTITY "
                         "INCLUDING CONSTRAINTS INCLUDING INDEXES)").format(_table(), sql.Identifier(TABLE)))
    # Some rows of the staying and the fenced tenants, so indexes are not empty.
    conn.execute(INSERT_BULK, (STAYING, existing_rows // 2))
    conn.execute(sql.SQL("INSERT INTO {} (tenant_id, public_id, first_name, last_name, phone, loyalty_points, "
                         "tags, created_at) SELECT %s + (g %% 1000), gen_random_uuid(), 'F', 'R' || g, '', g, "
                         "'{{}}', now() FROM generate_series(1, %s) g").format(_table()),
                 (FENCED_FROM, existing_rows // 2))
    conn.execute(sql.SQL("ANALYZE {}").format(_table()))
    conn.execute(sql.SQL(OLD_FENCE_FUNCTION).format(fn=sql.Identifier(SCHEMA, "old_fence_check"),
                                               fence=sql.Identifier(SCHEMA, guard.FENCE_TABLE)))
    conn.commit()
    guard.ensure_objects(conn, SCHEMA)  # the fence table both approaches read


def _clear(conn) -> None:
    """No trigger and no fence on the table."""
    for (name,) in conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                                (f"{SCHEMA}.{TABLE}",)).fetchall():
        conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(name), _table()))
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(SCHEMA, guard.FENCE_TABLE)))
    conn.commit()


def _configure(conn, approach: str, fenced: int) -> int:
    """Triggers and fence rows for `fenced` tenants under `approach`; returns the triggers on the table."""
    _clear(conn)
    conn.execute(sql.SQL("INSERT INTO {} (tenant_id, reason, slug) SELECT g, 'benchmark', 'fenced-' || g "
                         "FROM generate_series(%s, %s) g").format(sql.Identifier(SCHEMA, guard.FENCE_TABLE)),
                 (FENCED_FROM, FENCED_FROM + fenced - 1))
    if approach == "per-tenant":
        for tenant in range(FENCED_FROM, FENCED_FROM + fenced):
            for op, when in OLD_WHEN.items():
                conn.execute(sql.SQL("CREATE TRIGGER {name} BEFORE {op} ON {tbl} FOR EACH ROW WHEN ({when}) "
                                     "EXECUTE FUNCTION {fn}({tid}, {slug})").format(
                    name=sql.Identifier(f"tenant_fence_{tenant}_{op[:3].lower()}"), op=sql.SQL(op), tbl=_table(),
                    when=sql.SQL(when.format(t=tenant)), fn=sql.Identifier(SCHEMA, "old_fence_check"),
                    tid=sql.Literal(str(tenant)), slug=sql.Literal(f"fenced-{tenant}")))
        conn.commit()
    else:
        conn.commit()
        guard.ensure(conn, SCHEMA, [TABLE])
    count = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                         (f"{SCHEMA}.{TABLE}",)).fetchone()[0]
    conn.commit()
    return count


def _check_fence(conn, fenced: int) -> bool:
    """The last fenced tenant's insert is refused (the configuration really fences)."""
    if not fenced:
        return True
    try:
        conn.execute(INSERT_ONE, (FENCED_FROM + fenced - 1, uuid.uuid4()))
    except psycopg.Error as exc:
        conn.rollback()
        return "refuses writes" in str(exc)
    conn.rollback()
    return False


def _singles(conn, inserts: int) -> list[float]:
    times = []
    for i in range(inserts):
        key = uuid.uuid4()
        started = time.perf_counter()
        conn.execute(INSERT_ONE, (STAYING, key))
        times.append(time.perf_counter() - started)
        if i % 100 == 99:
            conn.rollback()
    conn.rollback()
    return times


def _bulk(conn, rows: int) -> float:
    started = time.perf_counter()
    conn.execute(INSERT_BULK, (STAYING, rows))
    seconds = time.perf_counter() - started
    conn.rollback()
    return seconds


def run_fence_benchmark(fenced_counts=(0, 100, 1000), inserts: int = 2000, bulk_rows: int = 10_000,
                        bulk_runs: int = 3, rounds: int = 2, existing_rows: int = 20_000,
                        approaches=APPROACHES) -> dict:
    place = shared_place()
    samples = {(a, n): {"single": [], "bulk": [], "triggers": 0, "refused": True}
               for a in approaches for n in fenced_counts}
    with place.connect(application_name="bench fences") as conn:
        _setup_schema(conn, existing_rows)
        try:
            for _ in range(rounds):
                for (approach, fenced), sample in samples.items():
                    sample["triggers"] = _configure(conn, approach, fenced)
                    sample["refused"] = sample["refused"] and _check_fence(conn, fenced)
                    _singles(conn, min(200, inserts))  # warm: plans, caches
                    sample["single"] += _singles(conn, inserts)
                    sample["bulk"] += [_bulk(conn, bulk_rows) for _ in range(bulk_runs)]
        finally:
            conn.rollback()
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
            conn.commit()
    results = []
    for (approach, fenced), sample in samples.items():
        single = sorted(sample["single"])
        results.append({"approach": approach, "fenced": fenced, "triggers": sample["triggers"],
                        "refused": sample["refused"], "inserts": len(single),
                        "median_ms": 1000 * statistics.median(single),
                        "p99_ms": 1000 * single[min(len(single) - 1, int(len(single) * 0.99))],
                        "bulk_ms": 1000 * statistics.median(sample["bulk"])})
    return {"server": place.label, "inserts": inserts, "bulk_rows": bulk_rows, "rounds": rounds,
            "results": results}


def format_report(report: dict) -> str:
    by = {(r["approach"], r["fenced"]): r for r in report["results"]}
    base = by.get(("per-tenant", 0))  # no trigger at all: what a table costs with no fence
    lines = [f"{report['server']}: {report['inserts']:,} single-row inserts and {report['bulk_rows']:,}-row bulk "
             f"inserts of a staying tenant per configuration and round, {report['rounds']} rounds interleaved",
             "",
             "| approach | fenced tenants | triggers on the table | fenced write refused | single insert median (ms) "
             "| p99 (ms) | x vs 0 fenced | x vs no trigger | bulk insert (ms) | x vs 0 fenced | x vs no trigger |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        zero = by[(r["approach"], min(n for a, n in by if a == r["approach"]))]
        lines.append(
            f"| {r['approach']} | {r['fenced']:,} | {r['triggers']:,} | {'yes' if r['refused'] else 'NO'} "
            f"| {r['median_ms']:.3f} | {r['p99_ms']:.3f} | {r['median_ms'] / zero['median_ms']:.2f} "
            f"| {r['median_ms'] / base['median_ms']:.2f} | {r['bulk_ms']:.1f} | {r['bulk_ms'] / zero['bulk_ms']:.2f} "
            f"| {r['bulk_ms'] / base['bulk_ms']:.2f} |")
    most = max(n for _, n in by)
    guard_ratio = by[("guard", most)]["median_ms"] / by[("guard", min(n for _, n in by))]["median_ms"]
    old_ratio = by[("per-tenant", most)]["median_ms"] / base["median_ms"]
    lines += ["", f"single-row insert with {most:,} fenced tenants vs 0: guard {guard_ratio:.2f}x "
                  f"(goal: within 1.2x), per-tenant triggers {old_ratio:.2f}x"]
    return "\n".join(lines)
