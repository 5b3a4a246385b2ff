"""Online-move benchmark: a tenant of N rows moves out and back while it takes ~`rate`
writes/s and another tenant writes at the same pace. Reports the freeze (median and max over several
runs), what the moving tenant's writers saw, and the other tenant's write throughput and
latency before the move, during the copy, during catch-up and during the cutover: moving
one tenant must not slow the others down.

Each writer is a process of its own (as another app server would be). Each run: writers
start, the tenant moves out online, then back online, writers stop, every acknowledged write
of the moving tenant is checked in the shared tables, and the dedicated place is dropped.
"""
from __future__ import annotations

import multiprocessing
import statistics
import time

from django.db import connection

from migration_jobs import services
from shop.models import Customer
from tenancy.context import tenant_context

from .bench_tenants import (check_can_run, create_bench_tenant, drop_bench_tenant, put_back_in_shared)
from .writer import WriteLog, writer_process


class PacedWriter:
    """A writer.py loop in a process of its own, as requests of another app server would be: it
    shares no interpreter (GIL) with the move, so what it measures is the database's answer."""

    def __init__(self, tenant_id: int, rate: float, seed: int):
        spawn = multiprocessing.get_context("spawn")
        self._stop, self._ready = spawn.Event(), spawn.Event()
        self._results, child_end = spawn.Pipe(duplex=False)
        self._process = spawn.Process(target=writer_process, name=f"bench-writer-{tenant_id}", daemon=True,
                                      args=(tenant_id, rate, seed, self._stop, self._ready, child_end))
        self.log = WriteLog()
        self.expected: dict[int, int] = {}
        self.error: str | None = None
        self._finished = False

    def start(self, timeout: float = 60.0) -> None:
        self._process.start()
        if not self._ready.wait(timeout):
            self.finish()
            raise RuntimeError(f"a bench writer made no write in {timeout:.0f}s: {self.error}")

    def finish(self, timeout: float = 30.0) -> None:
        """Stop writing and collect what the writer saw. Idempotent."""
        if self._finished:
            return
        self._finished = True
        self._stop.set()
        try:
            if self._results.poll(timeout):
                self.log, self.expected, self.error = self._results.recv()
            else:
                self.error = self.error or "the writer process did not report"
        except EOFError:
            self.error = self.error or f"the writer process died (exit code {self._process.exitcode})"
        if self._process.pid is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()

    def lost_writes(self, tenant) -> int:
        with tenant_context(tenant):
            found = dict(Customer.objects.filter(pk__in=list(self.expected)).values_list("pk", "loyalty_points"))
        return sum(1 for pk, points in self.expected.items() if found.get(pk) != points)


def phase_stats(log: WriteLog, start: float, end: float) -> dict:
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


def _move_result(run, direction: str, mine: PacedWriter, theirs: PacedWriter, baseline: tuple[float, float]
                 ) -> dict:
    copy_step = "copy" if direction == "out" else "copy_back"
    copy_window = _step_window(run, copy_step)
    catch_window = _step_window(run, "catch_up")
    cut_window = _step_window(run, "cutover")
    started, finished = run.started_at.timestamp(), run.finished_at.timestamp()
    phases = {"before": baseline, copy_step: copy_window, "catch_up": catch_window, "cutover": cut_window}
    return {
        "run": run.pk, "direction": direction, "freeze_ms": 1000 * run.freeze_seconds,
        "seen_freeze_ms": 1000 * (mine.log.seen_freeze(started, finished) or 0.0),
        "copy_s": copy_window[1] - copy_window[0],
        "catch_up_rounds": run.steps.get(name="catch_up").details.get("round"),
        "changes_applied": run.steps.get(name="catch_up").rows,
        "freeze_phases_ms": run.steps.get(name="cutover").details.get("phases_ms", {}),
        "mine_acknowledged": sum(1 for at in mine.log.at if started <= at <= finished),
        "mine_refused": sum(1 for at in mine.log.refused_at if started <= at <= finished),
        "theirs_refused": sum(1 for at in theirs.log.refused_at if started <= at <= finished),
        "theirs": {name: phase_stats(theirs.log, *window) for name, window in phases.items()},
    }


def run_online_benchmark(rows: int, *, runs: int = 3, rate: float = 200.0, target: str = "database",
                         say=print) -> dict:
    """Per run: an online move out and an online move back, both under the writers."""
    other_rows = 5_000
    for leftover in check_can_run([rows, other_rows]):
        drop_bench_tenant(leftover)
    say(f"creating a tenant of {rows:,} rows and another of {other_rows:,} ...")
    tenant, counts = create_bench_tenant(rows)
    other, _ = create_bench_tenant(other_rows)
    moves, lost_total = [], 0
    writers: list[PacedWriter] = []
    try:
        for number in range(1, runs + 1):
            tenant.refresh_from_db()  # back in shared after the previous run
            mine = PacedWriter(tenant.pk, rate, seed=number)
            theirs = PacedWriter(other.pk, rate, seed=1000 + number)
            writers = [mine, theirs]
            mine.start()
            theirs.start()
            done = []
            for direction in ("out", "back"):
                time.sleep(3.0)  # a baseline for the other tenant
                baseline = (time.time() - 3.0, time.time())
                tenant.refresh_from_db()
                if direction == "out":
                    request = services.request_move(tenant, target, online=True, via="bench")
                else:
                    request = services.request_move_back(tenant, online=True, via="bench")
                run = services.execute(request)
                if run.status != "succeeded":
                    raise RuntimeError(f"run {run.pk} ({direction}) {run.status}: {run.error}")
                done.append((run, direction, baseline))
            time.sleep(1.0)
            mine.finish()
            theirs.finish()
            if mine.error or theirs.error:
                raise RuntimeError(f"a writer failed: {mine.error or theirs.error}")
            tenant.refresh_from_db()
            # Every write acknowledged during both moves, in the tenant's final place (shared):
            # one lost in the move out would have been copied back missing.
            lost = mine.lost_writes(tenant)
            lost_total += lost
            for run, direction, baseline in done:
                run.refresh_from_db()
                result = _move_result(run, direction, mine, theirs, baseline)
                result["rows"] = sum(counts.values())
                moves.append(result)
                say(f"run {number} {direction}: freeze {result['freeze_ms']:.0f} ms (the writer saw "
                    f"{result['seen_freeze_ms']:.0f} ms), copy {result['copy_s']:.1f} s, "
                    f"{result['changes_applied']} changes caught up")
            say(f"run {number}: {len(mine.expected):,} rows written by the writer checked, {lost} lost")
            put_back_in_shared(tenant, done[-1][0])  # drops the dedicated place the move back left
    finally:
        for writer in writers:  # never delete a tenant a writer still writes to
            writer.finish()
        connection.set_schema_to_public()
        for made in (tenant, other):
            made.refresh_from_db()
            drop_bench_tenant(made)
    report = {"rows": rows, "rate": rate, "target": target, "moves": moves, "lost": lost_total}
    for direction in ("out", "back"):
        freezes = [m["freeze_ms"] for m in moves if m["direction"] == direction]
        seen = [m["seen_freeze_ms"] for m in moves if m["direction"] == direction]
        report[direction] = {"freeze_median_ms": statistics.median(freezes), "freeze_max_ms": max(freezes),
                             "seen_median_ms": statistics.median(seen), "seen_max_ms": max(seen)}
    return report


def format_report(report: dict) -> str:
    lines = [f"Online moves of a {report['rows']:,}-row tenant to a dedicated {report['target']} and back, under "
             f"~{report['rate']:.0f} writes/s (and another tenant at the same pace)", ""]
    header = (f"{'run':>4} {'move':>4} {'copy s':>7} {'rounds':>6} {'changes':>8} {'freeze ms':>9} "
              f"{'seen ms':>7} {'acked':>6} {'refused':>7}")
    lines += [header, "-" * len(header)]
    for m in report["moves"]:
        lines.append(f"{m['run']:>4} {m['direction']:>4} {m['copy_s']:>7.1f} {m['catch_up_rounds']:>6} "
                     f"{m['changes_applied']:>8} {m['freeze_ms']:>9.0f} {m['seen_freeze_ms']:>7.0f} "
                     f"{m['mine_acknowledged']:>6} {m['mine_refused']:>7}")
    lines.append(f"writes lost (every acknowledged write checked in the final place): {report['lost']}")
    lines.append("")
    for direction in ("out", "back"):
        r = report[direction]
        lines.append(f"freeze, move {direction}: recorded on the run (fence closed -> switch committed) median "
                     f"{r['freeze_median_ms']:.0f} ms, max {r['freeze_max_ms']:.0f} ms; seen by the writer (first "
                     f"refused -> first accepted write) median {r['seen_median_ms']:.0f} ms, "
                     f"max {r['seen_max_ms']:.0f} ms")
    for m in report["moves"]:
        phases = ", ".join(f"{k} {v:.0f}" for k, v in m["freeze_phases_ms"].items())
        lines.append(f"  run {m['run']} freeze phases (ms): {phases}")
    for direction in ("out", "back"):
        picked = [m for m in report["moves"] if m["direction"] == direction]
        lines += ["", f"other tenant's writes during the moves {direction} (median over runs):",
                  f"{'phase':<10} {'writes/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}"]
        base = statistics.median(m["theirs"]["before"]["writes_per_s"] for m in picked) or 1e-9
        for phase in picked[0]["theirs"]:
            stats = [m["theirs"][phase] for m in picked]
            rate = statistics.median(s["writes_per_s"] for s in stats)
            p50 = [s["p50_ms"] for s in stats if s["p50_ms"] is not None]
            p99 = [s["p99_ms"] for s in stats if s["p99_ms"] is not None]
            lines.append(f"{phase:<10} {rate:>9.1f} {rate / base:>6.2f} "
                         f"{statistics.median(p50) if p50 else float('nan'):>7.1f} "
                         f"{statistics.median(p99) if p99 else float('nan'):>7.1f}")
    lines.append(f"other tenant's refused writes: {sum(m['theirs_refused'] for m in report['moves'])}")
    return "\n".join(lines)
