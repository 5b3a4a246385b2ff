"""What fleet listens to (connected by FleetConfig.ready):

- migration_jobs.signals.run_finished: a run of a plan ended, so its plan's task is enqueued
  (after the commit of whatever ended it) to record it and start the next moves.
- post_migrate: the django-q2 Schedule that advances every open plan each minute. In the
  database, so it is made once per deployment (by `manage.py migrate`, which every deployment
  runs) and whichever cluster's scheduler is due runs it (django-q2 locks schedule rows): a
  plan whose window opens starts on time, and a plan carries on after every worker restarted,
  or after a lost task, within a minute.
"""
from functools import partial

from django.db import transaction
from django_q.models import Schedule

from fleet.models import MovePlanItem
from fleet.services import enqueue_advance

SCHEDULE_NAME = "fleet: advance open plans"
SCHEDULE_FUNC = "fleet.tasks.advance_open_plans"


def advance_plans_of_run(sender, run, **kwargs) -> None:
    for plan_id in MovePlanItem.objects.filter(run_id=run.pk).values_list("plan_id", flat=True):
        transaction.on_commit(partial(enqueue_advance, plan_id))


def ensure_schedule(using="default", **kwargs) -> Schedule | None:
    """The periodic advance of open plans, created once, kept as it should be (idempotent)."""
    if using != "default":
        return None
    schedule, _ = Schedule.objects.update_or_create(
        name=SCHEDULE_NAME, defaults={"func": SCHEDULE_FUNC, "schedule_type": Schedule.MINUTES, "minutes": 1,
                                      "repeats": -1})
    return schedule
