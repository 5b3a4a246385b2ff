"""Round trips per step: counted exactly (psycopg and ORM, every thread), recorded on every
step of a run, and kept under bounds that a statement per row would break."""
import threading

import pytest
from django.db import connection

from migration_jobs.engine import provision, roundtrips
from migration_jobs.engine.places import shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.models import RunStatus
from tenancy.models import Tenant
from tests.test_moves import move

pytestmark = pytest.mark.django_db(transaction=True)

SEEDED = {"largest": 3000, "seed": 7}  # the conftest `seeded` tenant


def test_statements_of_every_thread_are_counted_once_and_only_inside_the_block(db):
    place = shared_place()

    def orm_in_a_new_thread():
        try:
            Tenant.objects.count()   # the thread's own ORM connection: opened, set up, queried
        finally:
            connection.close()       # as the copy's worker threads do

    def in_a_thread():
        thread = threading.Thread(target=orm_in_a_new_thread)
        thread.start()
        thread.join()

    in_a_thread()  # Django looks some type oids up on the first connection of the process only
    with roundtrips.counting() as probe:
        in_a_thread()
    orm = probe.statements        # the count plus Django's set-up queries of a new connection
    assert probe.connections == 1 and orm >= 1
    Tenant.objects.exists()               # this thread's ORM connection is open before the blocks
    with place.connect(autocommit=True) as conn:
        conn.execute("SELECT 1")          # outside: not counted
        with roundtrips.counting() as outer:
            conn.execute("SELECT 1")
            with roundtrips.counting() as inner:   # nested blocks both count

                def work():
                    with place.connect() as own:       # not autocommit: BEGIN + 20 + COMMIT
                        for _ in range(20):
                            own.execute("SELECT 1")
                        own.commit()
                    orm_in_a_new_thread()

                threads = [threading.Thread(target=work) for _ in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            Tenant.objects.exists()
            list(Tenant.objects.all()[:1])
        conn.execute("SELECT 1")          # after: not counted
    assert inner.as_dict() == {"round_trips": 4 * (1 + 20 + 1 + orm), "connections": 8}
    assert outer.as_dict() == {"round_trips": 1 + 4 * (22 + orm) + 2, "connections": 8}


# Measured on the seeded tenant (3,000 rows, 9 tables), the most of a move to a schema or a
# database (preflight, suspend, backup, provision, create_tables, copy, sequences, verify,
# switch, reactivate): 60, 61, 60, 52, 248, 423, 68, 28, 30, 3. The copy's ~40 a table are
# mostly the step's own bookkeeping (details, progress, a sample, a new ORM connection per
# table in a worker thread); suspend polls for in-flight transactions. Each bound is
# `per_table * tables + fixed`, about 1.5x what was measured: a step that starts sending a
# statement per row (thousands here) fails.
BOUNDS = {  # step: (per table, fixed)
    "preflight": (6, 60),
    "suspend": (0, 150),
    "backup": (10, 40),
    "provision": (0, 80),
    "create_tables": (20, 200),
    "copy": (60, 100),
    "sequences": (8, 40),
    "verify": (6, 30),
    "switch": (0, 50),
    "reactivate": (0, 20),
}


@pytest.mark.parametrize("target", ["schema", "database"])
def test_a_move_records_round_trips_per_step_within_bounds(seeded, made_places, target):
    run = move(seeded, target)
    assert run.status == RunStatus.SUCCEEDED, run.error
    made_places.append(("schema", run.target_schema) if target == "schema" else
                       ("database", run.target_server, run.target_database,
                        provision.role_name(run.target_database)))
    tables = len(tenant_tables())
    counts = {s.name: s.details.get("round_trips") for s in run.steps.all()}
    print(target, counts, {s.name: s.details.get("connections") for s in run.steps.all()})
    assert all(isinstance(n, int) and n > 0 for n in counts.values()), counts
    too_many = {name: (n, BOUNDS[name][0] * tables + BOUNDS[name][1]) for name, n in counts.items()
                if name in BOUNDS and n > BOUNDS[name][0] * tables + BOUNDS[name][1]}
    assert not too_many, too_many
    assert set(counts) <= set(BOUNDS), set(counts) - set(BOUNDS)
