"""django-q2 tasks: thin wrappers that the admin enqueues. Each is keyed by its run and is a
no-op when the run is already taken by a live worker or has ended, so a re-delivered task
can never execute a move twice."""
from migration_jobs.runs.executor import closing_connections, execute, rollback


def execute_run(run_id: int, resume: bool = False) -> str:
    with closing_connections():
        run = execute(run_id, resume=resume)
        return f"run {run.pk}: {run.status}"


def rollback_run(run_id: int) -> str:
    with closing_connections():
        run = rollback(run_id)
        return f"run {run.pk}: {run.status}"


def verify_tenant(tenant_id: int) -> dict:
    from migration_jobs.verification import verify_in_place
    from tenancy.models import Tenant

    with closing_connections():
        return verify_in_place(Tenant.objects.get(pk=tenant_id))

