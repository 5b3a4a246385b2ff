"""The cutover reads the sequences of the tenant tables while other moves drop their change
logs (each has an identity sequence): reading them must never trip over a sequence dropped
meanwhile (found by bench_fleet with 4 moves at once: "could not open relation with OID")."""
import threading
import time

import psycopg
import pytest

from migration_jobs.engine.places import shared_place
from migration_jobs.engine.sequences import all_positions, sequence_positions
from migration_jobs.engine.tables import tenant_tables
from tests.helpers import fill

pytestmark = pytest.mark.django_db(transaction=True)


def test_all_positions_ignores_sequences_dropped_meanwhile(make_tenant):
    fill(make_tenant("seqs"), 2)
    place, tables = shared_place(), tenant_tables()
    expected = sequence_positions(psycopg.connect(**place.conninfo, autocommit=True), place, tables)
    assert expected and any(v > 0 for v in expected.values())
    stop, churned = threading.Event(), [0]

    def churn():  # what other moves' capture and cleanup do: a log with an identity, then DROP
        with psycopg.connect(**place.conninfo, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("CREATE TABLE seq_churn (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY)")
                conn.execute("DROP TABLE seq_churn")
                churned[0] += 1

    thread = threading.Thread(target=churn)
    thread.start()
    calls = 0
    try:
        with psycopg.connect(**place.conninfo, autocommit=True) as conn:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                assert all_positions(conn, place, tables) == expected
                calls += 1
    finally:
        stop.set()
        thread.join()
    assert calls > 50 and churned[0] > 50  # the two really overlapped, many times
