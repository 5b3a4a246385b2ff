"""How a parked run gets a worker again: a held online move applies a catch-up round, then
waits in the database (status `running`, capture on, `next_round_at` set, no lock held)
rather than in a django-q2 worker. Its next round is a django-q2 `Schedule` of type ONCE,
named after the run, that enqueues `tasks.execute_run(run_id, resume=True)` at
`next_round_at`. django-q2's scheduler looks for due schedules about every 30 seconds
(cluster.py: once its guard loop has counted 30 s), so a parked run gets a round every
MIGRATION_HELD_ROUND_INTERVAL seconds at the earliest and 30 s later at the latest. Clearing the
hold or cancelling does not wait for it: the services enqueue the run at once.

The schedule is written in the same transaction as `next_round_at`, so a parked run always
has its pickup; the worker that claims the run deletes it, and so does the end of the run.
A schedule is stored in the database whatever the broker (ORM or Redis)."""
from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.utils import timezone
from django_q.models import Schedule

PICKUP_TASK = "migration_jobs.tasks.execute_run"


def schedule_name(run_id: int) -> str:
    return f"tenant-move-run-{run_id}-round"


def schedule(run_id: int, at: datetime) -> Schedule:
    """The run's one pending pickup, at `at` (replacing any earlier one)."""
    drop(run_id)
    options = {"task_name": f"tenant-move-run-{run_id}-resume", "group": "tenant-moves",
               "timeout": settings.MIGRATION_TASK_TIMEOUT}
    return Schedule.objects.create(name=schedule_name(run_id), func=PICKUP_TASK, args=repr((run_id, True)),
                                   kwargs=repr({"q_options": options}), schedule_type=Schedule.ONCE,
                                   repeats=-1, next_run=at)


def drop(run_id: int) -> None:
    Schedule.objects.filter(name=schedule_name(run_id)).delete()


def pending(run_id: int) -> Schedule | None:
    return Schedule.objects.filter(name=schedule_name(run_id)).first()


def due(run) -> bool:
    """Whether a parked run should get a worker now: its round is due, or staff released the
    hold (cut over) or asked to cancel."""
    return (run.next_round_at is None or run.next_round_at <= timezone.now() or not run.hold_cutover
            or run.cancel_requested)
