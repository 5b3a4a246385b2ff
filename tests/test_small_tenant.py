"""A small tenant (fewer rows than MIGRATION_DEFER_INDEXES_FROM_ROWS) is copied with the target's
indexes and foreign keys in place instead of dropping and rebuilding them: the same rows, the
same objects afterwards, and a reference to another tenant's row still fails the copy (the
foreign keys check every row as it is written) with a clean rollback. The rest of the suite
defers always (project/test_settings.py), as a big tenant's move does."""
import pytest
from django.test import override_settings

from migration_jobs import services
from migration_jobs.engine import load, provision
from migration_jobs.engine.places import place_of, shared_place
from migration_jobs.engine.tables import row_counts, tenant_tables
from migration_jobs.models import RunStatus
from migration_jobs.runs import executor
from tests.helpers import fingerprints, point_at_another_tenant, schema_exists, snapshot

pytestmark = pytest.mark.django_db(transaction=True)

SEEDED = {"largest": 800, "seed": 23}
THRESHOLD = 5000  # the production default


def objects(place):
    """(kind, name, table, definition) of every secondary object; an index's definition names its
    place's schema, left out."""
    return sorted((o["kind"], o["name"], o["table"], o["definition"].replace(f" ON {place.schema}.", " ON "))
                  for o in load.secondary_objects(place, tenant_tables()))


def tenant_rows(tenant) -> int:
    with shared_place().connect() as conn:
        return sum(row_counts(conn, shared_place(), [t.name for t in tenant_tables()], tenant.pk).values())


def test_the_count_that_decides_is_exact_at_the_threshold(seeded):
    tables = tenant_tables()
    total = tenant_rows(seeded)
    assert 0 < total < THRESHOLD
    assert load._fewer_rows_than(shared_place(), seeded.pk, tables, total + 1)
    assert not load._fewer_rows_than(shared_place(), seeded.pk, tables, total)
    assert not load._fewer_rows_than(shared_place(), seeded.pk, tables, 0)  # 0: always defer
    assert load._fewer_rows_than(shared_place(), 10**9, tables, 1)          # a tenant without rows


@pytest.mark.parametrize("target", ["database", "schema"])
@override_settings(MIGRATION_DEFER_INDEXES_FROM_ROWS=THRESHOLD)
def test_a_small_tenant_moves_with_its_indexes_in_place(seeded, made_places, target):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    run = executor.execute(services.request_move(tenant, target).pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    tenant.refresh_from_db()
    made_places.append(("schema", tenant.schema_name) if target == "schema" else
                       ("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    assert run.steps.get(name="copy").details["deferred"] == []  # nothing dropped, nothing to rebuild
    assert snapshot(place_of(tenant), tenant.pk) == before
    assert run.report["verify"]["ok"]
    # Every index and constraint the migrations make, as in the shared tables.
    assert objects(place_of(tenant)) == objects(shared_place()) != []


@override_settings(MIGRATION_DEFER_INDEXES_FROM_ROWS=THRESHOLD)
def test_a_reference_to_another_tenants_row_still_fails_the_copy(seeded):
    tenant = seeded
    point_at_another_tenant(tenant)
    before = fingerprints(shared_place(), tenant.pk)
    for target in ("database", "schema"):
        run = executor.execute(services.request_move(tenant, target).pk)
        assert run.status == RunStatus.ROLLED_BACK, (run.status, run.error)
        assert run.steps.get(name="copy").details["deferred"] == []
        assert "point at rows that are not its own" in run.error and "shop_device" in run.error
        tenant.refresh_from_db()
        assert (tenant.placement, tenant.status) == ("shared", "active")
        assert fingerprints(shared_place(), tenant.pk) == before
        if target == "schema":
            assert not schema_exists(run.target_schema)
        else:
            assert not provision.database_exists(run.target_server, run.target_database)
