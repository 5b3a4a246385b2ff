"""Online-move benchmark: a tenant of N rows moves while it takes ~`rate` writes/s and
another tenant writes at the same pace. Reports the freeze (median and max over several
runs), what the moving tenant's writers saw, and the other tenant's write throughput and
latency before the move, during the copy, during catch-up and during the cutover: moving
one tenant must not slow the others down.

Each run: writers start, the online move runs, writers stop, every acknowledged write of the
moving tenant is checked in its new place, then the tenant is put back in the shared tables
(target dropped) for the next run.
"""
from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from migration_jobs import services
from migration_jobs.bench import (check_can_run, create_bench_tenant, drop_bench_tenant, put_back_in_shared)


@dataclass
class WriteLog:
    at: list[float] = field(default_factory=list)        # time.time() of each acknowledged write
    latency: list[float] = field(default_factory=list)   # seconds it took
    refused: int = 0


class PacedWriter(threading.Thread):
    """Inserts / updates / deletes one tenant's customers at `rate` writes per second."""

    def __init__(self, tenant_id: int, rate: float, seed: int):
        super().__init__(daemon=True, name=f"bench-writer-{tenant_id}")
        self.tenant_id, self.rate, self.random = tenant_id, rate, random.Random(seed)
        self.log = WriteLog()
        self.expected: dict[int, int] = {}
        self.stop = threading.Event()
        self.error: str | None = None

    def _write(self):
        from shop.models import Customer
        from tenancy.context import tenant_context

        choice = self.random.random()
        with tenant_context(self.tenant_id), transaction.atomic():
            if choice < 0.5 or len(self.expected) < 10:
                c = Customer.objects.create(first_name="bench", last_name="writer", created_at=timezone.now(),
                                            loyalty_points=self.random.randint(0, 10 ** 6))
                return "set", c.pk, c.loyalty_points
            pk = self.random.choice(list(self.expected))
            if choice < 0.85:
                points = self.random.randint(0, 10 ** 6)
                Customer.objects.filter(pk=pk).update(loyalty_points=points)
                return "set", pk, points
            Customer.objects.filter(pk=pk).delete()
            return "del", pk, None

    def run(self):
        from tenancy.scoping import TenantWriteRefused

        interval = 1.0 / self.rate
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    kind, pk, points = self._write()
                except TenantWriteRefused:
                    self.log.refused += 1
                except Exception as exc:  # noqa: BLE001 - the database fence refusing is expected
                    if "refuses writes" not in str(exc):
                        self.error = repr(exc)
                        return
                    self.log.refused += 1
                else:
                    if kind == "set":
                        self.expected[pk] = points
                    else:
                        self.expected.pop(pk, None)
                    self.log.at.append(time.time())
                    self.log.latency.append(time.monotonic() - started)
                next_at += interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            connection.close()

    def lost_writes(self, tenant) -> int:
        from shop.models import Customer
        from tenancy.context import tenant_context

        with tenant_context(tenant):
            found = dict(Customer.objects.filter(pk__in=list(self.expected)).values_list("pk", "loyalty_points"))
        return sum(1 for pk, points in self.expected.items() if found.get(pk) != points)


def _phase_stats(log: WriteLog, start: float, end: float) -> dict:
    picked = [lat for at, lat in zip(log.at, log.latency) if start <= at < end]
    seconds = max(end - start, 1e-6)
    if not picked:
        return {"writes_per_s": 0.0, "p50_ms": None, "p99_ms": None}
    ordered = sorted(picked)
    return {"writes_per_s": len(picked) / seconds, "p50_ms": 1000 * ordered[len(ordered) // 2],
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}


def _step_window(run, name: str) -> tuple[float, float]:
    step = run.steps.get(name=name)
    return step.started_at.timestamp(), step.finished_at.timestamp()


def run_online_benchmark(rows: int, *, runs: int = 3, rate: float = 200.0, target: str = "database",
                         say=print) -> dict:
    other_rows = 5_000
    for leftover in check_can_run([rows, other_rows]):
        drop_bench_tenant(leftover)
    say(f"creating a tenant of {rows:,} rows and another of {other_rows:,} ...")
    tenant, counts = create_bench_tenant(rows)
    other, _ = create_bench_tenant(other_rows)
    results = []
    writers: list[PacedWriter] = []
    try:
        for number in range(1, runs + 1):
            tenant.refresh_from_db()  # back in shared after the previous run
            mine = PacedWriter(tenant.pk, rate, seed=number)
            theirs = PacedWriter(other.pk, rate, seed=1000 + number)
            writers = [mine, theirs]
            mine.start()
            theirs.start()
            time.sleep(3.0)  # baseline for the other tenant
            baseline_end = time.time()
            run = services.execute(services.request_move(tenant, target, online=True, via="bench"))
            time.sleep(1.0)
            mine.stop.set()
            theirs.stop.set()
            mine.join(30)
            theirs.join(30)
            run.refresh_from_db()
            if run.status != "succeeded":
                raise RuntimeError(f"run {run.pk} {run.status}: {run.error}")
            if mine.error or theirs.error:
                raise RuntimeError(f"a writer failed: {mine.error or theirs.error}")
            tenant.refresh_from_db()
            lost = mine.lost_writes(tenant)
            copy_window = _step_window(run, "copy")
            catch_window = _step_window(run, "catch_up")
            cut_window = _step_window(run, "cutover")
            result = {
                "run": run.pk, "rows": sum(counts.values()), "freeze_ms": 1000 * run.freeze_seconds,
                "copy_s": copy_window[1] - copy_window[0],
                "catch_up_rounds": run.steps.get(name="catch_up").details.get("round"),
                "freeze_phases_ms": run.steps.get(name="cutover").details.get("phases_ms", {}),
                "changes_applied": run.steps.get(name="catch_up").rows,
                "mine_acknowledged": len(mine.log.at), "mine_refused": mine.log.refused, "lost": lost,
                "theirs_refused": theirs.log.refused,
                "theirs": {
                    "before": _phase_stats(theirs.log, baseline_end - 3.0, baseline_end),
                    "copy": _phase_stats(theirs.log, *copy_window),
                    "catch_up": _phase_stats(theirs.log, *catch_window),
                    "cutover": _phase_stats(theirs.log, *cut_window),
                },
            }
            results.append(result)
            say(f"run {number}: freeze {result['freeze_ms']:.0f} ms, copy {result['copy_s']:.1f} s, "
                f"{result['changes_applied']} changes caught up, {lost} writes lost")
            put_back_in_shared(tenant, run)
    finally:
        for writer in writers:  # never delete a tenant a writer still writes to
            writer.stop.set()
            writer.join(30)
        connection.set_schema_to_public()
        for made in (tenant, other):
            made.refresh_from_db()
            drop_bench_tenant(made)
    freezes = [r["freeze_ms"] for r in results]
    return {"rows": rows, "rate": rate, "target": target, "runs": results,
            "freeze_median_ms": statistics.median(freezes), "freeze_max_ms": max(freezes)}


def format_report(report: dict) -> str:
    lines = [f"Online move of a {report['rows']:,}-row tenant to a dedicated {report['target']} under "
             f"~{report['rate']:.0f} writes/s (and another tenant at the same pace)", ""]
    header = f"{'run':>4} {'rows':>10} {'copy s':>7} {'rounds':>6} {'changes':>8} {'freeze ms':>9} " \
             f"{'acked':>6} {'refused':>7} {'lost':>4}"
    lines += [header, "-" * len(header)]
    for r in report["runs"]:
        lines.append(f"{r['run']:>4} {r['rows']:>10,} {r['copy_s']:>7.1f} {r['catch_up_rounds']:>6} "
                     f"{r['changes_applied']:>8} {r['freeze_ms']:>9.0f} {r['mine_acknowledged']:>6} "
                     f"{r['mine_refused']:>7} {r['lost']:>4}")
    lines += ["", f"freeze: median {report['freeze_median_ms']:.0f} ms, max {report['freeze_max_ms']:.0f} ms"]
    for r in report["runs"]:
        phases = ", ".join(f"{k} {v:.0f}" for k, v in r["freeze_phases_ms"].items())
        lines.append(f"  run {r['run']} freeze phases (ms): {phases}")
    lines += ["",
              "other tenant's writes (median over runs):",
              f"{'phase':<10} {'writes/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "]
    phases = ("before", "copy", "catch_up", "cutover")
    base = statistics.median(r["theirs"]["before"]["writes_per_s"] for r in report["runs"]) or 1e-9
    for phase in phases:
        stats = [r["theirs"][phase] for r in report["runs"]]
        rate = statistics.median(s["writes_per_s"] for s in stats)
        p50 = [s["p50_ms"] for s in stats if s["p50_ms"] is not None]
        p99 = [s["p99_ms"] for s in stats if s["p99_ms"] is not None]
        lines.append(f"{phase:<10} {rate:>9.1f} {rate / base:>6.2f} "
                     f"{statistics.median(p50) if p50 else float('nan'):>7.1f} "
                     f"{statistics.median(p99) if p99 else float('nan'):>7.1f}")
    lines.append(f"other tenant's refused writes: {sum(r['theirs_refused'] for r in report['runs'])}")
    return "\n".join(lines)
