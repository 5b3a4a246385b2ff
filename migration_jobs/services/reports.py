"""What the entry points show of runs and tenants: a run as a dict (one function for the
commands' `--json`, `migration_status`, the API and the run's own recorded summary), a
duration for humans, verifying a tenant where it lives, and the change-capture objects
that no live run owns (leftovers). Never a password: runs and steps hold none."""
from __future__ import annotations

import re
from datetime import timedelta

import psycopg
from django.utils.timezone import localtime
from django_q.tasks import async_task, result

from migration_jobs.runs.executor import is_parked, lock_is_free, writes_refused_seconds
from migration_jobs.runs.plans import steps_for
from migration_jobs.engine.capture import leftovers as capture_leftovers
from migration_jobs.engine.places import database_place, shared_place
from migration_jobs.models import ACTIVE_STATUSES, MigrationRun, RunStatus
from migration_jobs.services.moves import why_waiting
from migration_jobs.verification import verify_in_place
from tenancy.models import DatabaseCredential, Tenant

_CAPTURE_OWNER = re.compile(r"tenant_move_(?:capture|log)_(\d+)")


def one_line(text) -> str:
    return " ".join(str(text).split())


def human_duration(value, empty: str = "-") -> str:
    """12.3s, 4:05 or 1:02:03 (a timedelta or seconds); `empty` for None."""
    if value is None:
        return empty
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def writes_refused(run: MigrationRun) -> float | None:
    """The one downtime figure: seconds the tenant's writes were refused (offline: suspend to
    reactivate; online: the cutover's freeze), recorded at the end, measured so far while the
    run goes on; None before it started."""
    if run.writes_refused_seconds is not None:
        return run.writes_refused_seconds
    if run.started_at is None:
        return None
    return writes_refused_seconds(run)


def human_refusal(seconds, empty: str = "-") -> str:
    """The downtime figure for humans, the same everywhere: "46 ms", "6.1s", "1:13"."""
    if seconds is None:
        return empty
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return human_duration(seconds)


def run_state(run: MigrationRun) -> str:
    """What a run is doing, in words: "queued: 2 of 2 workers busy: runs 5, 6", "copy", "held in
    sync: waiting for you to cut over", "cancelling", "cancelled"... (the admin list, the run
    page and its live figures, the tenant list, the API)."""
    waiting = why_waiting(run)
    if run.status == RunStatus.QUEUED:
        return f"queued: {waiting}" if waiting else "queued"
    if run.status == RunStatus.RUNNING:
        if run.cancel_requested:
            return f"cancelling: {waiting}" if waiting else "cancelling: rolls back at the next safe point"
        if run.online and run.hold_cutover and run.current_step == "catch_up":
            state = "held in sync: waiting for you to cut over"
            if waiting:
                return f"{state}; its next round waits for a worker: {waiting}"
            if run.next_round_at:
                return f"{state} (no worker kept; next round at {localtime(run.next_round_at):%H:%M:%S})"
            return state
        if waiting:  # parked, released: the cutover waits for a worker
            return f"cutting over: {waiting}"
        return f"running: {run.current_step}" if run.current_step else "running"
    return run.get_status_display().lower()


def _seconds(duration):
    return round(duration.total_seconds(), 3) if duration else None


# Which fields each view of a run has; every field is spelled once, in run_dict.
REF = ("run_id", "kind", "status", "source", "target", "created_at")
ROW = ("run_id", "tenant", "kind", "source", "target", "dry_run", "online", "status", "state", "current_step",
       "progress_percent", "rows_copied", "rows_total", "seconds", "rows_per_second", "writes_refused_seconds",
       "freeze_seconds", "created_at", "error")
FULL = ("run_id", "tenant", "kind", "status", "state", "source", "target", "server", "database", "schema", "dry_run",
        "error", "started_at", "finished_at", "seconds", "rows_copied", "bytes_copied", "rows_per_second",
        "online", "writes_refused_seconds", "freeze_seconds", "lag", "next_round_at", "tables", "steps", "preflight")


def _iso(moment):
    return moment.isoformat() if moment else None


def step_labels(run: MigrationRun) -> dict[str, str]:
    """Step name -> what the step does, in words ("copy" -> "Copy the rows")."""
    return {step.name: step.label for step in steps_for(run)}


def run_steps(run: MigrationRun) -> list[dict]:
    """The run's steps in order: name, label, status, started_at / finished_at (ISO), seconds,
    rows, message (the JSON report's and the run page's timeline)."""
    labels = step_labels(run)
    times = {name: (started, finished) for name, started, finished
             in run.steps.values_list("name", "started_at", "finished_at")}
    return [{**report, "label": labels.get(report["name"], report["name"]),
             "started_at": _iso(times[report["name"]][0]), "finished_at": _iso(times[report["name"]][1])}
            for report in run.steps_report()]


_FIELDS = {
    "run_id": lambda r: r.pk,
    "tenant": lambda r: r.tenant.slug,
    "kind": lambda r: r.kind,
    "status": lambda r: r.status,
    "state": lambda r: run_state(r),
    "source": lambda r: r.source_placement,
    "target": lambda r: r.target_placement,
    "server": lambda r: r.target_server.name if r.target_server_id else None,
    "database": lambda r: r.target_database or None,
    "schema": lambda r: r.target_schema or None,
    "dry_run": lambda r: r.dry_run,
    "online": lambda r: r.online,
    "current_step": lambda r: r.current_step or None,
    "progress_percent": lambda r: round(r.progress_percent, 1) if r.progress_percent is not None else None,
    "rows_copied": lambda r: r.rows_copied,
    "rows_total": lambda r: r.rows_total,
    "bytes_copied": lambda r: r.bytes_copied,
    "rows_per_second": lambda r: round(r.rows_per_second, 1) if r.rows_per_second else None,
    "freeze_seconds": lambda r: r.freeze_seconds,
    "writes_refused_seconds": lambda r: None if writes_refused(r) is None else round(writes_refused(r), 3),
    "lag": lambda r: {"changes": r.lag_changes, "oldest_seconds": r.lag_seconds} if r.online else None,
    "error": lambda r: one_line(r.error) or None,
    "created_at": lambda r: _iso(r.created_at),
    "started_at": lambda r: _iso(r.started_at),
    "finished_at": lambda r: _iso(r.finished_at),
    "next_round_at": lambda r: _iso(r.next_round_at),
    "seconds": lambda r: _seconds(r.duration),
    "tables": lambda r: {name: {"rows": t.get("target_rows"), "checksum": t.get("target_checksum"),
                                "ok": t.get("ok")}
                         for name, t in (r.report.get("verify") or {}).get("tables", {}).items()},
    "steps": run_steps,
    "preflight": lambda r: r.report.get("preflight"),
}


def run_dict(run: MigrationRun, fields=FULL) -> dict:
    """A run as plain JSON-able data: FULL (a report), ROW (a history line) or REF (a link)."""
    return {name: _FIELDS[name](run) for name in fields}


def run_report(run: MigrationRun) -> dict:
    """What `--json` prints and the API returns for one run, as the database has it now."""
    run.refresh_from_db()
    return run_dict(run, FULL)


def run_history(tenant: Tenant | None = None, limit: int = 50) -> list[dict]:
    """Runs newest first (one tenant's or every tenant's), as ROW dicts."""
    runs = MigrationRun.objects.select_related("tenant").order_by("-created_at", "-pk")
    if tenant is not None:
        runs = runs.filter(tenant=tenant)
    return [run_dict(run, ROW) for run in runs[:max(limit, 1)]]


# --- Verifying a tenant where it lives ------------------------------------------------------

def verify(tenant: Tenant) -> dict:
    """Counts, checksums, foreign rows and sequences of the tenant's place (verification.py)."""
    return verify_in_place(tenant)


def verify_via_cluster(tenant: Tenant):
    """Verify through the django-q2 cluster: the report, or None while it is still queued.
    In sync mode (tests, no cluster) the task's own error is raised here."""
    task_id = async_task("migration_jobs.tasks.verify_tenant", tenant.pk, task_name=f"tenant-verify-{tenant.pk}",
                         group="tenant-verify")
    return task_id, result(task_id)


# --- Change-capture objects no live run owns ---------------------------------------------

def _owner(name: str) -> int | None:
    match = _CAPTURE_OWNER.search(name)
    return int(match.group(1)) if match else None


def leftovers() -> list[dict]:
    """Triggers, change logs, functions, replication slots and publications of moves, in the
    shared database and every dedicated tenant database, each with the run that made it and
    `orphaned` (no live worker holds that run); an unreachable place is listed as such."""
    places = [shared_place()] + [database_place(c.server, c.database)
                                 for c in DatabaseCredential.objects.select_related("server")]
    active = set(MigrationRun.objects.filter(status__in=ACTIVE_STATUSES).values_list("pk", flat=True))
    # A held run parked between rounds holds no lock, yet owns its capture.
    parked = {run.pk for run in MigrationRun.objects.filter(pk__in=active).only("status", "next_round_at")
              if is_parked(run)}
    found = []
    for place in places:
        try:
            with place.connect() as conn:
                items = capture_leftovers(conn)
        except psycopg.OperationalError as exc:
            found.append({"place": str(place), "kind": "unreachable", "name": type(exc).__name__})
            continue
        for item in items:
            owner = _owner(item["name"])
            # A run marked running whose worker died holds nothing: its objects count too.
            live = owner in parked or (owner in active and not lock_is_free(owner))
            item.update(place=str(place), run=owner, orphaned=not live, active=owner in active)
            found.append(item)
    return found
