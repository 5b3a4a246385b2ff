"""Helpers shared by several test modules."""


def run_cmd(name, *args):
    """(exit status, stdout, stderr) of a management command run in this process."""
    from io import StringIO

    from django.core.management import CommandError, call_command

    out, err = StringIO(), StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=err)
        code = 0
    except CommandError as exc:
        code = exc.returncode
        err.write(f"error: {exc}\n")
    return code, out.getvalue(), err.getvalue()


def delete_tenant(tenant):
    """The tenant gone entirely: its shop rows in the shared tables and its tenant row (and domain)."""
    from psycopg import sql

    from migration_jobs.engine.places import shared_place
    from migration_jobs.engine.tables import tenant_tables
    from tenancy.models import Tenant

    with shared_place().connect() as conn:
        for table in reversed(tenant_tables()):
            conn.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(shared_place().table(table.name)),
                         (tenant.pk,))
        conn.commit()
    Tenant.objects.filter(pk=tenant.pk).delete()


def drop_places(made) -> None:
    """Drop what tests made: ("schema", name) or ("database", server, database, role) items."""
    from django.db import connection

    from migration_jobs.engine import provision

    connection.set_schema_to_public()
    for kind, *args in made:
        if kind == "schema":
            provision.drop_schema(*args)
        else:
            provision.drop_database(*args)


def crash_move(tenant, target: str, where: str = "after:copy", *, online: bool = False):
    """A move whose worker dies at `where`: the run stays running, as a crash leaves it."""
    import pytest

    from migration_jobs import services
    from migration_jobs.runs.executor import closing_connections, execute
    from migration_jobs.runs.faults import Faults, WorkerKilled

    run = services.request_move(tenant, target, online=online)
    with pytest.raises(WorkerKilled), closing_connections():
        execute(run.pk, faults=Faults({where: WorkerKilled}))
    return run
