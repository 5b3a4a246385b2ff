"""Health after a move: the tenant's requests in the hour before the switch against the hour
after it (monitoring.health), the smoke check the run recorded at the switch
(runs/health.py), and the verdict: regressed when, with at least TENANT_HEALTH_MIN_REQUESTS
requests on both sides, the p95 after exceeds TENANT_HEALTH_REGRESSION_RATIO times the p95
before, or the error rate grew by more than TENANT_HEALTH_ERROR_RATE_MARGIN.

The minute of the switch itself belongs to neither side. The verdict is cached in
run.health as soon as the hour after has enough requests, and is final (never recomputed)
once that hour and the processes' last flush are over. Cheap: two indexed queries over at
most 60 rows each, none once final.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from migration_jobs.models import ACTIVE_STATUSES, MigrationRun, RunKind, RunStatus
from migration_jobs.services.reports import writes_refused
from monitoring.health import Window, window

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
SWITCHING_KINDS = (RunKind.MOVE, RunKind.MOVE_BACK)


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def switched_at(run: MigrationRun) -> datetime | None:
    """When the run switched the tenant's placement (recorded at the switch; for older runs
    the end of the cutover's freeze or the run's end), None if it never did."""
    if run.status in ("rolled_back", "cancelled"):
        return None  # a switch undone by its rollback: the tenant lives where it was
    recorded = (run.health or {}).get("switched_at")
    if recorded:
        return parse_datetime(recorded)
    if run.kind not in SWITCHING_KINDS or run.dry_run or run.status != "succeeded":
        return None
    return run.freeze_ended_at or run.finished_at


def judge(before: Window, after: Window) -> tuple[bool | None, str]:
    """(regressed, why): None when either side has too few requests to tell."""
    need = max(settings.TENANT_HEALTH_MIN_REQUESTS, 1)
    if before.requests < need or after.requests < need:
        return None, (f"not enough requests to judge: {before.requests} before, {after.requests} after "
                      f"(TENANT_HEALTH_MIN_REQUESTS = {need})")
    ratio, margin = settings.TENANT_HEALTH_REGRESSION_RATIO, settings.TENANT_HEALTH_ERROR_RATE_MARGIN
    reasons = []
    p95_before, p95_after = before.quantile_ms(0.95), after.quantile_ms(0.95)
    if p95_before is not None and p95_after is not None and p95_after > ratio * p95_before:
        reasons.append(f"p95 {p95_after:.0f} ms after vs {p95_before:.0f} ms before (over {ratio:g}x)")
    if after.error_rate - before.error_rate > margin:
        reasons.append(f"error rate {after.error_rate:.1%} after vs {before.error_rate:.1%} before "
                       f"(over +{margin:.1%})")
    if reasons:
        return True, "; ".join(reasons)
    return False, f"p95 within {ratio:g}x and error rate within +{margin:.1%} of the hour before"


def run_health(run: MigrationRun, now: datetime | None = None) -> dict | None:
    """The run's health after its switch: {"switched_at", "before", "after" ({requests,
    errors, error_rate, p50_ms, p95_ms, ...}), "smoke" and "smoke_ms" (the check at the
    switch), "smoke_ok", "regressed" (True/False, None until enough requests), "reason",
    "final", "ratio"}; None for a run that switched nothing (yet)."""
    at = switched_at(run)
    if at is None or run.is_active:
        return None
    health = dict(run.health or {})
    if not health.get("final"):
        now = now or timezone.now()
        minute = _floor_minute(at)
        before = window(run.tenant_id, minute - HOUR, minute)
        after_start = minute + MINUTE
        after_end = min(after_start + HOUR, _floor_minute(now))  # complete minutes only
        after = window(run.tenant_id, after_start, after_end) if after_end > after_start else Window()
        regressed, reason = judge(before, after)
        grace = timedelta(seconds=max(settings.MONITORING_FLUSH_SECONDS, 0) + 60)
        final = now >= after_start + HOUR + grace
        figures = {"switched_at": at.isoformat(), "before": before.as_dict(), "after": after.as_dict(),
                   "regressed": regressed, "reason": reason, "final": final,
                   "after_minutes": max(int((after_end - after_start) / MINUTE), 0)}
        health.update(figures)
        if regressed is not None or final:
            stored = dict(run.health or {})
            if any(stored.get(key) != value for key, value in figures.items()):
                MigrationRun.objects.filter(pk=run.pk).update(health={**stored, **figures})
                run.health = {**stored, **figures}
    smoke = health.get("smoke")
    return {**health, "smoke_ok": None if smoke is None else bool(smoke.get("ok")),
            "ratio": settings.TENANT_HEALTH_REGRESSION_RATIO, "min_requests": settings.TENANT_HEALTH_MIN_REQUESTS}


def flagged(health: dict | None) -> bool:
    """Whether a run's health wants attention: a regression, or a failed smoke check."""
    return bool(health) and (health.get("regressed") is True or health.get("smoke_ok") is False
                             or (health.get("smoke") or {}).get("ok") is False)


def refresh_run_health(run_id: int) -> dict | None:
    """The django-q2 task scheduled at the switch (runs/health.py): recompute and cache the
    verdict. A no-op for a run that is gone or already judged for good."""
    run = MigrationRun.objects.filter(pk=run_id).first()
    if run is None:
        return None
    health = run_health(run)
    return None if health is None else {"regressed": health.get("regressed"), "final": health.get("final")}


# --- What /metrics exports of the runs ------------------------------------------------------

def runs_for_metrics(hours: float, limit: int = 200, now: datetime | None = None) -> list[dict]:
    """The active runs and those that ended in the last `hours` (newest first, at most
    `limit`: a bounded set of labels), as plain figures; never a secret."""
    since = (now or timezone.now()) - timedelta(hours=hours)
    runs = (MigrationRun.objects.select_related("tenant")
            .filter(Q(status__in=ACTIVE_STATUSES) | Q(finished_at__gte=since))
            .order_by("-created_at", "-pk")[:limit])
    out = []
    for run in runs:
        health = run.health or {}
        smoke = health.get("smoke") or {}
        out.append({"run": run.pk, "tenant": run.tenant.slug, "kind": run.kind, "status": run.status,
                    "online": run.online, "rows_copied": run.rows_copied, "rows_total": run.rows_total,
                    "lag_changes": run.lag_changes, "lag_seconds": run.lag_seconds,
                    "freeze_seconds": run.freeze_seconds, "writes_refused_seconds": writes_refused(run),
                    "regressed": health.get("regressed"), "smoke_ok": smoke.get("ok"),
                    "smoke_seconds": None if health.get("smoke_ms") is None else health["smoke_ms"] / 1000.0})
    return out


def run_counts() -> dict[str, int]:
    """{status: runs} over every run (one GROUP BY)."""
    counts = dict(MigrationRun.objects.order_by().values_list("status").annotate(n=Count("pk")))
    return {status: counts.get(status, 0) for status in RunStatus.values}
