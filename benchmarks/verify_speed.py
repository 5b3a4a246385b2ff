"""Verification speed: the row checksum over one tenant's rows where it lives, both sides
at once (as a move's verify step reads source and target), with the current per-row hash
(verify.HASH64) against the md5 of each row's text it replaced (verify.LEGACY_MD5), on the
same data in the same process, then `verify_tenant` itself. Nothing is written."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from migration_jobs.engine.places import place_of
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.engine.verify import HASH64, LEGACY_MD5, fingerprint, verify_tenant


def _one_side(place, tables, tenant_id: int, algorithm: str) -> int:
    with place.connect() as conn:
        conn.execute("SET max_parallel_workers_per_gather = 0")  # one core per side, as in a move
        return sum(fingerprint(conn, place, table, tenant_id, algorithm=algorithm).rows for table in tables)


def run_verify_benchmark(tenant, rounds: int = 2) -> dict:
    place, tables = place_of(tenant), tenant_tables()
    results = []
    for _ in range(rounds):
        for algorithm in (LEGACY_MD5, HASH64):
            started = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                rows = list(pool.map(lambda _: _one_side(place, tables, tenant.pk, algorithm), range(2)))[0]
            results.append({"checksum": algorithm, "rows": rows, "seconds": time.perf_counter() - started})
    started = time.perf_counter()
    report = verify_tenant(place, place, tenant.pk, tables, target_is_dedicated=False)
    seconds = time.perf_counter() - started
    rows = sum(t["source_rows"] or 0 for t in report.tables.values())
    return {"tenant": tenant.slug, "place": str(place), "runs": results,
            "verify_tenant": {"rows": rows, "seconds": seconds, "ok": report.ok}}


def format_report(report: dict) -> str:
    lines = [f"tenant {report['tenant']} in {report['place']}", "",
             "| checksum | rows | both sides at once (s) | tenant rows/s |", "|---|---|---|---|"]
    for run in report["runs"]:
        lines.append(f"| {run['checksum']} | {run['rows']:,} | {run['seconds']:.2f} | "
                     f"{run['rows'] / max(run['seconds'], 1e-9):,.0f} |")
    best = {alg: min(r["seconds"] for r in report["runs"] if r["checksum"] == alg) for alg in (LEGACY_MD5, HASH64)}
    whole = report["verify_tenant"]
    lines += ["", f"{HASH64} / {LEGACY_MD5}: {best[LEGACY_MD5] / max(best[HASH64], 1e-9):.1f}x faster (best of each)",
              f"verify_tenant: {whole['rows']:,} rows in {whole['seconds']:.2f} s, "
              f"{whole['rows'] / max(whole['seconds'], 1e-9):,.0f} rows/s, ok={whole['ok']}"]
    return "\n".join(lines)
