"""The row checksum tells apart values that are equal for their type but not the same data:
a copy that changed 1.0 into 1.00 inside jsonb, or an array's bounds, must fail verification."""
import pytest
from django.db import connection
from django.utils import timezone

from migration_jobs.engine.places import shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.engine.verify import HASH64, LEGACY_MD5, fingerprint
from shop.models import Customer, Device, Repair
from tenancy.context import tenant_context


@pytest.fixture
def repair(make_tenant):
    tenant = make_tenant("checksums")
    with tenant_context(tenant):
        customer = Customer.objects.create(first_name="A", last_name="B", created_at=timezone.now(),
                                           tags=["x", "y"])
        device = Device.objects.create(customer=customer, kind="phone", brand="b", model_name="m",
                                       serial_number="s1")
        repair = Repair.objects.create(device=device, customer=customer, ticket_number=1, problem="p",
                                       received_at=timezone.now(), metadata={"price": 1.5})
    return tenant, repair


def _fp(table_name, tenant, algorithm=HASH64):
    table = next(t for t in tenant_tables() if t.name == table_name)
    connection.ensure_connection()  # the test's own transaction: it sees the rows made above
    return fingerprint(connection.connection, shared_place(), table, tenant.pk, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", [HASH64, LEGACY_MD5])
@pytest.mark.parametrize("table, change", [
    ("shop_repair", "UPDATE shop_repair SET metadata = '{\"price\": 1.50}' WHERE tenant_id = %s"),
    ("shop_customer", "UPDATE shop_customer SET tags = '[2:3]={x,y}' WHERE tenant_id = %s"),
])
def test_equal_but_different_values_change_the_checksum(repair, table, change, algorithm):
    tenant, _ = repair
    before = _fp(table, tenant, algorithm)
    with connection.cursor() as cursor:
        cursor.execute(change, [tenant.pk])
    after = _fp(table, tenant, algorithm)
    assert after.rows == before.rows == 1
    assert after.checksum != before.checksum
