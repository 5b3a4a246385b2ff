"""Measurements of a benchmark: seconds, rows/s and peak RSS per method, and the tables
bench_migration prints."""
from __future__ import annotations

import gc
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from django.conf import settings

LABELS = {
    "a": "(a) row-by-row INSERT",
    "b": "(b) bare binary COPY pipe",
    "c": "(c) engine copy step",
    "d": "(d) engine full run",
    "d:copy": "    (d) of which: copy step",
}



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


def measure(method: str, body: Callable[[], tuple[int, dict]], *, capped: bool = False) -> Measurement:
    with RssSampler() as rss:
        started = time.monotonic()
        rows, details = body()
        seconds = time.monotonic() - started
    return Measurement(method=method, rows=rows, seconds=seconds, peak_rss_mib=rss.delta_mib, capped=capped,
                       details=details)



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
