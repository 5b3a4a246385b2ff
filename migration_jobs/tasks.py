"""django-q2 tasks: thin wrappers around migration_jobs.services that the services enqueue.
Each is keyed by its run and is a no-op when the run is already taken by a live worker or has
ended, so a re-delivered task can never execute a move twice."""
from migration_jobs import services


def execute_run(run_id: int, resume: bool = False) -> str:
    """Execute (or resume) a run; a held online move is parked between catch-up rounds and
    picked up again by a scheduled call of this task (runs/pickup.py), so it keeps no worker."""
    run = services.execute(run_id, resume=resume, park_when_held=True)
    if services.is_parked(run):
        return f"run {run.pk}: held in sync, parked until {run.next_round_at.isoformat()}"
    return f"run {run.pk}: {run.status}"


def rollback_run(run_id: int) -> str:
    run = services.roll_back(run_id)
    return f"run {run.pk}: {run.status}"


def verify_tenant(tenant_id: int) -> dict:
    with services.worker_connections():
        return services.verify(services.tenant_by_id(tenant_id))
