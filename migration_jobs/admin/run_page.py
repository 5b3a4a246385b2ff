"""The run page's parts, as plain data and as HTML fragments: the header figures, the buttons
that apply to the run now, the steps as a timeline and the chart of rows/s and lag over time.

The page renders the fragments once; while the run is live it polls `<run>/live/`, whose
JSON carries the same figures, steps and samples plus the fragments rendered again by the
same templates, and puts them in place (no full reload, no build step)."""
from __future__ import annotations

import json
import math
from datetime import datetime

from django.template.loader import render_to_string

from migration_jobs import services
from migration_jobs.admin.common import human_duration, human_time
from migration_jobs.models import MigrationRun, RunStatus

FRAGMENTS = {  # element id on the page -> the template that renders its content
    "run-steps": "admin/migration_jobs/migrationrun/steps.html",
    "run-chart": "admin/migration_jobs/migrationrun/chart.html",
    "run-actions": "admin/migration_jobs/migrationrun/actions.html",
}
REPORT = "admin/migration_jobs/migrationrun/report.html"


# --- Figures --------------------------------------------------------------------------------

def freeze_text(run: MigrationRun) -> str:
    return "—" if run.freeze_seconds is None else f"{run.freeze_seconds * 1000:.0f} ms"


def lag_text(run: MigrationRun) -> str:
    """The catch-up lag of a live online run ("3 changes, 0.5s"); "—" otherwise."""
    if not (run.online and run.is_active and run.lag_changes is not None):
        return "—"
    return f"{run.lag_changes:,} changes, {human_duration(run.lag_seconds or 0)}"


def timeline(run: MigrationRun) -> list[dict]:
    """The steps for the timeline: label, status, start (to the second), duration, rows, message."""
    return [{"name": s["name"], "label": s["label"], "status": s["status"], "message": s["message"],
             "rows": s["rows"], "started_at": s["started_at"], "started": human_time(s["started_at"]),
             "finished": human_time(s["finished_at"]), "duration": human_duration(s["seconds"])}
            for s in services.run_steps(run)]


def live_figures(run: MigrationRun) -> dict:
    """What the run page's header shows, as plain data (also its JSON for the live refresh)."""
    percent = run.progress_percent
    return {
        "id": run.pk, "title": str(run), "status": run.status, "state": services.run_state(run), "live": run.is_active,
        "current_step": run.current_step or None,
        "progress_percent": None if percent is None or run.dry_run else round(percent, 1),
        "rows_copied": run.rows_copied, "rows_total": run.rows_expected,
        "rate": f"{run.rows_per_second:,.0f} rows/s" if run.rows_per_second else "—",
        "lag": lag_text(run),
        "freeze": freeze_text(run),
        "writes_frozen": services.human_refusal(services.writes_refused(run), "—"),
        "read_percent": run.read_percent,
        "started": human_time(run.started_at), "finished": human_time(run.finished_at),
        "heartbeat": human_time(run.heartbeat_at),
        "duration": human_duration(run.duration),
        "steps": timeline(run),
        "samples": list(run.samples or []),
    }


# --- The buttons that apply now -------------------------------------------------------------

def run_actions(run: MigrationRun, can_move: bool) -> list[dict]:
    """[{"op", "label", "current"}]: what this user may do to this run now (`op` is what the
    control view takes; `current`: the read share in force, shown pressed)."""
    if not can_move:
        return []
    actions = []
    if services.why_not_cancel(run) is None:
        actions.append(("cancel", "Cancel"))
    if run.online and run.kind == "move" and run.is_active:
        actions += [(f"read_share_{p}", f"Reads {p} %") for p in services.READ_SHARES]
    if run.online and run.is_active and run.hold_cutover:
        actions.append(("cut_over", "Cut over now"))
    if run.status == RunStatus.RUNNING:
        ok, _ = services.interrupted_runs([run], allow_queued=False)
        if ok:  # its worker is gone
            actions += [("resume", "Resume"), ("roll_back", "Roll back")]
    elif run.status == RunStatus.FAILED:
        actions.append(("roll_back", "Roll back"))
    return [{"op": op, "label": label, "current": op == f"read_share_{run.read_percent}"} for op, label in actions]


# --- The chart ------------------------------------------------------------------------------

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 64, 14, 30  # room for the axes' labels


def nice_ceiling(value: float) -> float:
    """The axis' top: `value` rounded up to 1, 2 or 5 times a power of ten (1 at least)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def chart(samples: list[dict]) -> dict | None:
    """The SVG geometry of rows/s (left axis) and lag (right axis) over the run's time, or None
    before the first sample."""
    points = [(datetime.fromisoformat(s["t"]), s) for s in samples or [] if s.get("t")]
    if not points:
        return None
    start = points[0][0]
    span = max((points[-1][0] - start).total_seconds(), 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def series(key):
        values = [((t - start).total_seconds(), s[key]) for t, s in points if s.get(key) is not None]
        top = nice_ceiling(max((v for _, v in values), default=0))
        coords = [(LEFT + plot_w * seconds / span, TOP + plot_h * (1 - v / top)) for seconds, v in values]
        return {"points": " ".join(f"{x:.1f},{y:.1f}" for x, y in coords), "count": len(coords),
                "last": {"x": f"{coords[-1][0]:.1f}", "y": f"{coords[-1][1]:.1f}"} if coords else None,
                "top": f"{top:,.0f}"}

    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
            "bottom": HEIGHT - BOTTOM, "middle": TOP + plot_h / 2, "label_y": HEIGHT - 8,
            "rate": series("rows_per_second"), "lag": series("lag"), "samples": len(points),
            "start": human_time(start), "span": human_duration(span)}


# --- The page and its live JSON -------------------------------------------------------------

def run_page_context(run: MigrationRun, can_move: bool) -> dict:
    """What the run page's template and its fragments need."""
    return {"run_page": live_figures(run), "run_actions": run_actions(run, can_move), "run_obj": run,
            "run_chart": chart(run.samples),
            "run_report_json": json.dumps(run.report, indent=2, sort_keys=True, default=str) if run.report else ""}


def live_json(run: MigrationRun, can_move: bool, request) -> dict:
    """The live refresh: the figures, the steps, the samples, the buttons that apply now, and the
    page's fragments rendered again ({element id: inner HTML})."""
    context = run_page_context(run, can_move)
    fragments = FRAGMENTS if run.is_active else {**FRAGMENTS, "run-report": REPORT}  # the report once, at the end
    return {**context["run_page"], "actions": context["run_actions"],
            "html": {element: render_to_string(template, context, request)
                     for element, template in fragments.items()}}
