"""django-q2 tasks of fleet plans: thin wrappers around fleet.services. advance_plan is
enqueued when a plan starts or resumes and when one of its runs ends; advance_open_plans runs
every minute (the Schedule made by fleet.receivers.ensure_schedule). Both read everything
from the database and lock the plan's row, so any worker on any machine may run them, at the
same time, or again."""
from fleet import services
from migration_jobs.services import worker_connections


def advance_plan(plan_id: int) -> str:
    with worker_connections():
        return services.advance(plan_id)


def advance_open_plans() -> list[str]:
    with worker_connections():
        return services.advance_open_plans()
