"""What a run records right after it switched the tenant: the smoke check (engine/smoke.py)
and when the switch happened, into MigrationRun.health; and a few scheduled refreshes of the
before/after verdict (services/health.py) until the hour after the switch is over.

Called past the point of no return: nothing here may undo or fail the switch. A failed
smoke check is flagged on the run (health.smoke.ok false, the step message) and logged.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import schedule

from migration_jobs.engine.smoke import smoke_check
from migration_jobs.models import MigrationRun

log = logging.getLogger(__name__)

REFRESH_TASK = "migration_jobs.services.health.refresh_run_health"
REFRESH_EVERY_MINUTES = 10
REFRESHES = 8  # 80 minutes: past the hour after the switch, and the last flush of every process


def schedule_name(run_id: int) -> str:
    return f"tenant-health-run-{run_id}"


def after_switch(ctx, switched_at: datetime | None = None) -> str:
    """Smoke-check the tenant where it now lives, record it on the run; a few words for the
    step's message. Never raises."""
    run = ctx.run
    switched_at = switched_at or timezone.now()
    try:
        check = smoke_check(run.tenant_id)
    except Exception as exc:  # noqa: BLE001 - smoke_check records its errors; this is the last guard
        check = {"ok": False, "placement": None, "tables": {}, "total_ms": None,
                 "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    run.health = {**(run.health or {}), "switched_at": switched_at.isoformat(), "smoke": check,
                  "smoke_ms": check["total_ms"], "smoke_at": timezone.now().isoformat()}
    try:
        MigrationRun.objects.filter(pk=run.pk).update(health=run.health)
        _schedule_refreshes(run.pk, switched_at)
    except Exception:  # noqa: BLE001 - the figures are the run's; the switch stands either way
        log.warning("run %s: could not record the smoke check after the switch", run.pk, exc_info=True)
    if check["ok"]:
        return f"smoke check: {len(check['tables'])} tables read in {check['total_ms']:.0f} ms"
    failed = [name for name, t in check["tables"].items() if "error" in t]
    log.warning("run %s: smoke check after the switch failed (%s)", run.pk,
                check["error"] or ", ".join(failed))
    return f"SMOKE CHECK FAILED ({check['error'] or 'tables: ' + ', '.join(failed)}); the switch stands"


def _schedule_refreshes(run_id: int, switched_at: datetime) -> None:
    """Recompute the verdict every REFRESH_EVERY_MINUTES until the hour after the switch is
    judged (django-q2's scheduler; the run page recomputes it too, when it is opened)."""
    name = schedule_name(run_id)
    Schedule.objects.filter(name=name).delete()  # a resumed cutover schedules once
    schedule(REFRESH_TASK, run_id, name=name, schedule_type=Schedule.MINUTES, minutes=REFRESH_EVERY_MINUTES,
             repeats=REFRESHES, next_run=switched_at + timedelta(minutes=REFRESH_EVERY_MINUTES))
