"""The copy step's worker threads record each table through the ORM: one connection per thread
for all its tables (a login per table cost ~5 ms each, twice per table with the cancel check),
closed when the thread ends, whatever the copy's outcome."""
import pytest
from django.conf import settings
from django.db import connection
from django.db.backends.signals import connection_created

from migration_jobs import services
from migration_jobs.engine import provision
from migration_jobs.models import RunStatus
from migration_jobs.runs import executor
from migration_jobs.runs.faults import Faults
from tests.helpers import closing_connections

pytestmark = pytest.mark.django_db(transaction=True)

SEEDED = {"largest": 1500, "seed": 29}


def other_backends() -> list:
    """Sessions of this test database other than this thread's ORM connection."""
    with connection.cursor() as cur:
        cur.execute("SELECT pid, application_name, state FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return cur.fetchall()


@pytest.fixture
def orm_logins():
    made = []

    def count(sender, connection, **kwargs):
        made.append(connection.alias)
    connection_created.connect(count)
    yield made
    connection_created.disconnect(count)


@pytest.mark.parametrize("target", ["database", "schema"])
def test_one_orm_connection_per_copy_thread_closed_at_its_end(seeded, made_places, orm_logins, target):
    assert other_backends() == []
    run = executor.execute(services.request_move(seeded, target).pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    seeded.refresh_from_db()
    made_places.append(("schema", seeded.schema_name) if target == "schema" else
                       ("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    assert len(run.steps.get(name="copy").details["tables"]) == 9
    # One login of the shared database per copying thread (2; a schema move's main thread may
    # log in again once), not one or two per table (9 tables).
    assert 1 <= orm_logins.count("default") <= settings.MIGRATION_COPY_WORKERS + 1, orm_logins
    assert other_backends() == []


def test_a_failed_copy_closes_its_threads_connections_too(seeded, orm_logins):
    run = services.request_move(seeded, "database")
    with closing_connections():
        run = executor.execute(run.pk, faults=Faults({"copy:shop_repair": RuntimeError}))
    assert run.status == RunStatus.ROLLED_BACK, run.error
    assert other_backends() == []
