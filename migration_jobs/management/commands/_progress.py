"""Progress and printing of the tenant-move commands (not a command itself: the leading
underscore keeps Django from listing it; their base class is migration_jobs.management.base).

- `execute_with_progress`: runs services.execute in a background thread and polls the
  MigrationRun row (the only progress django-q2 or the run executor offer) from the main thread:
  a tqdm bar on stderr when it is a terminal, otherwise a plain line per step and now and
  then during long steps.
- Printing: the run summary, the preflight report, plain-text tables, `--json` output
  (always the last line of stdout, one line).

No business logic here: everything that decides lives in migration_jobs.services.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from tqdm import tqdm

from migration_jobs import services
from migration_jobs.models import MigrationRun
from migration_jobs.services import human_duration, one_line

POLL_SECONDS = 0.5
PLAIN_EVERY_SECONDS = 5.0


# --- Progress -----------------------------------------------------------------------------

PROGRESS_FIELDS = ("status", "current_step", "rows_copied", "rows_total", "started_at", "lag_changes", "lag_seconds")


class _Display:
    """Turns snapshots of the run row into a tqdm bar or occasional plain lines."""

    def __init__(self, stream, run: MigrationRun, tty: bool):
        self.stream, self.run, self.tty = stream, run, tty
        self.bar = None
        self.step = None
        self.last_plain = 0.0
        self.samples: deque[tuple[float, int]] = deque(maxlen=40)  # (time, rows) for rate/ETA
        if tty:
            total = None if run.dry_run else (run.rows_total or None)
            self.bar = tqdm(total=total, unit="rows", unit_scale=True, file=stream, desc=f"run {run.pk}",
                            dynamic_ncols=True, leave=True)

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, r0), (t1, r1) = self.samples[0], self.samples[-1]
        return (r1 - r0) / (t1 - t0) if t1 > t0 and r1 > r0 else None

    def update(self, snap: dict) -> None:
        now = time.monotonic()
        rows, total = snap["rows_copied"] or 0, snap["rows_total"] or 0
        if self.run.dry_run:
            rows = total = 0  # a preflight counts rows, it copies none
        self.samples.append((now, rows))
        step = snap["current_step"] or snap["status"]
        if self.bar is not None:
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.set_description_str(f"run {self.run.pk} {step}", refresh=False)
            if snap.get("lag_changes") is not None:
                self.bar.set_postfix_str(lag_text(snap), refresh=False)
            self.bar.update(max(0, rows - self.bar.n))
            self.bar.refresh()  # the step name changes even when the row count does not
            return
        changed = step != self.step
        lag = snap.get("lag_changes") is not None
        if changed or (now - self.last_plain >= PLAIN_EVERY_SECONDS and (rows or lag)):
            line = progress_line(self.run.pk, step, rows, total, self.rate())
            self.stream.write(line + (f"  {lag_text(snap)}" if lag else "") + "\n")
            self.stream.flush()
            self.last_plain = now
        self.step = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def lag_text(snap: dict) -> str:
    """The catch-up lag of an online move."""
    seconds = snap.get("lag_seconds")
    return f"lag {snap['lag_changes']:,} changes" + (f", oldest {human_duration(seconds)}" if seconds is not None else "")


def progress_line(run_id, step, rows, total, rate) -> str:
    parts = [f"run {run_id}", f"{step:<14}"]
    if total:
        parts.append(f"{rows:,}/{total:,} rows ({100.0 * min(rows, total) / total:5.1f}%)")
    elif rows:
        parts.append(f"{rows:,} rows")
    if rate:
        parts.append(f"{rate:,.0f} rows/s")
        if total and rows < total:
            parts.append(f"ETA {human_duration(timedelta(seconds=(total - rows) / rate))}")
    return "  ".join(parts)


def _snapshot(run_id: int) -> dict | None:
    return MigrationRun.objects.filter(pk=run_id).values(*PROGRESS_FIELDS).first()


def execute_with_progress(cmd: BaseCommand, run: MigrationRun, *, resume: bool = False) -> MigrationRun:
    """services.execute in a worker thread; this thread shows the run row's progress.

    Ctrl-C leaves the run as a crash would (the worker thread dies with the process, its
    advisory lock goes with its connection): resumable or reversible, and we say how.
    """
    outcome: dict = {}

    def work():
        try:
            outcome["run"] = services.execute(run, resume=resume)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc
        finally:
            connections.close_all()  # this thread's connections

    stream = getattr(cmd.stderr, "_out", cmd.stderr)
    tty = bool(getattr(stream, "isatty", lambda: False)())
    display = _Display(stream, run, tty)
    worker = threading.Thread(target=work, name=f"tenant-move-run-{run.pk}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            snap = _snapshot(run.pk)
            if snap:
                display.update(snap)
    except KeyboardInterrupt:
        display.close()
        slug = run.tenant.slug
        raise CommandError(f"interrupted: run {run.pk} is left unfinished; `manage.py resume_tenant_move {slug}` "
                           f"goes on with it, `manage.py rollback_tenant {slug}` undoes it", returncode=130) from None
    finally:
        display.close()
    if "error" in outcome:
        raise outcome["error"]
    done = outcome["run"]
    done.refresh_from_db()
    return done


# --- Printing -----------------------------------------------------------------------------

def table(rows: list[list], headers: list[str]) -> str:
    """A plain left-aligned text table (numbers right-aligned)."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and rows
               for i in range(len(headers))]

    def fmt(values):
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def describe(run: MigrationRun) -> str:
    where = run.target_schema if run.target_placement == "schema" or run.source_placement == "schema" else (
        f"{run.target_database} on {run.target_server.name}" if run.target_server_id else "")
    return f"{run.tenant.slug} {run.source_placement} -> {run.target_placement}" + (f" ({where})" if where else "")


def print_preflight(cmd: BaseCommand, preflight: dict | None) -> None:
    if not preflight:
        cmd.stdout.write("preflight: no report (the run stopped before its preflight)")
        return
    cmd.stdout.write(f"preflight: {'OK' if preflight.get('ok') else 'FAILED'}")
    for check in preflight.get("checks", []):
        mark = "ok  " if check["ok"] else "FAIL"
        line = f"  [{mark}] {check['name']}: {check['detail']}"
        if not check["ok"] and check.get("fix"):
            line += f" -> {check['fix']}"
        cmd.stdout.write(line)
    counts = preflight.get("row_counts") or {}
    if counts:
        cmd.stdout.write(table([[name, n] for name, n in counts.items()], ["table", "rows"]))
    cmd.stdout.write(f"total: {preflight.get('total_rows', 0):,} rows, "
                     f"~{(preflight.get('estimated_bytes') or 0) // 1024:,} KiB")


def print_run(cmd: BaseCommand, run: MigrationRun) -> None:
    rate = f", {run.rows_per_second:,.0f} rows/s" if run.rows_per_second else ""
    refused = services.writes_refused(run)
    freeze = f", writes frozen {services.human_refusal(refused)}" if refused is not None else ""
    cmd.stdout.write(f"run {run.pk} {run.get_status_display().lower()}: {describe(run)}"
                     f"{' [dry run]' if run.dry_run else ''}{' [online]' if run.online else ''} in "
                     f"{human_duration(run.duration)}, {run.rows_copied:,} rows copied{rate}{freeze}")
    if run.dry_run:
        print_preflight(cmd, run.report.get("preflight"))
        return
    steps = list(run.steps.all())
    cmd.stdout.write(table([[s.order, s.name, s.status, s.rows, human_duration(s.duration), one_line(s.message)[:100]]
                            for s in steps], ["#", "step", "status", "rows", "time", "message"]))
    verify = (run.report.get("verify") or {}).get("tables") or {}
    if verify:
        cmd.stdout.write(table([[name, t.get("source_rows"), t.get("target_rows"), t.get("target_checksum"),
                                 t.get("foreign_rows"), "ok" if t.get("ok") else "MISMATCH"]
                                for name, t in verify.items()],
                               ["table", "source rows", "target rows", "checksum", "foreign", "ok"]))
    # run.error goes to stderr once, as the command's `error:` line (base.TenantCommand.finish).


def print_verification(cmd: BaseCommand, report: dict) -> None:
    cmd.stdout.write(f"tenant {report['tenant']} ({report['placement']}, {report['status']}) in "
                     f"{report.get('place') or '?'}: {'OK' if report['ok'] else 'PROBLEMS'}")
    rows = []
    for name, t in report["tables"].items():
        seq = "-" if t.get("sequence") is None else f"{t['sequence']} >= {t['max_id']}" if t["sequence_ok"] \
            else f"{t['sequence']} < {t['max_id']}"
        rows.append([name, "yes" if t["exists"] else "NO", t["rows"], t["checksum"], t["foreign_rows"], seq,
                     "ok" if t["ok"] else "FAIL"])
    if rows:
        cmd.stdout.write(table(rows, ["table", "exists", "rows", "checksum", "foreign rows", "sequence", "ok"]))
    cmd.stdout.write(f"total: {report.get('total_rows', 0):,} rows")
    legacy = report.get("legacy_shared_rows")
    if legacy:
        cmd.stdout.write(f"legacy rows still in the shared tables (information): "
                         f"{report.get('legacy_shared_total', 0):,} "
                         f"({', '.join(f'{k} {v}' for k, v in legacy.items() if v) or 'none'})")
    for problem in report["problems"]:
        cmd.stderr.write(f"problem: {problem}")
