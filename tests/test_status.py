"""Tenant status is enforced for requests (503 / 409) and for ORM writes (an exception
naming the tenant), and other tenants are not affected."""
import json

import pytest
from django.utils import timezone

from shop.models import Customer
from tenancy.context import tenant_context
from tenancy.exceptions import TenantWriteRefused


def post_customer(client, host):
    return client.post("/shop/customers/", data=json.dumps({"first_name": "Ada", "last_name": "L"}),
                       content_type="application/json", HTTP_HOST=host)


@pytest.mark.django_db
def test_suspended_tenant_gets_503_with_retry_after(client, make_tenant, settings):
    make_tenant("sleepy", status="suspended")
    make_tenant("awake")
    for response in (client.get("/shop/customers/", HTTP_HOST="sleepy.localhost"),
                     post_customer(client, "sleepy.localhost")):
        assert response.status_code == 503
        assert response["Retry-After"] == str(settings.TENANT_RETRY_AFTER)
        assert "sleepy" in response.json()["error"]
    assert client.get("/shop/customers/", HTTP_HOST="awake.localhost").status_code == 200
    assert post_customer(client, "awake.localhost").status_code == 201


@pytest.mark.django_db
def test_read_only_tenant_reads_but_cannot_write(client, make_tenant):
    tenant = make_tenant("frozen")
    with tenant_context(tenant):
        Customer.objects.create(first_name="A", last_name="B", created_at=timezone.now())
    tenant.status = "read_only"
    tenant.save()
    assert client.get("/shop/customers/", HTTP_HOST="frozen.localhost").json()["count"] == 1
    response = post_customer(client, "frozen.localhost")
    assert response.status_code == 409 and "frozen" in response.json()["error"]
    pk = Customer.unscoped.get(tenant=tenant).pk
    assert client.delete(f"/shop/customers/{pk}/", HTTP_HOST="frozen.localhost").status_code == 409
    assert Customer.unscoped.filter(tenant=tenant).count() == 1


@pytest.mark.django_db
def test_migrating_tenant_refuses_writes_with_503(client, make_tenant):
    make_tenant("moving", status="migrating")
    assert client.get("/shop/customers/", HTTP_HOST="moving.localhost").status_code == 200
    response = post_customer(client, "moving.localhost")
    assert response.status_code == 503 and response.has_header("Retry-After")


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["read_only", "suspended", "migrating"])
def test_orm_writes_for_inactive_tenant_raise_naming_it(make_tenant, status):
    tenant = make_tenant("inactive")
    with tenant_context(tenant):
        customer = Customer.objects.create(first_name="A", last_name="B", created_at=timezone.now())
    tenant.status = status
    tenant.save()
    with tenant_context(tenant):
        with pytest.raises(TenantWriteRefused, match="tenant inactive"):
            Customer.objects.create(first_name="C", last_name="D", created_at=timezone.now())
        with pytest.raises(TenantWriteRefused, match="tenant inactive"):
            Customer.objects.update(loyalty_points=1)
        with pytest.raises(TenantWriteRefused, match="tenant inactive"):
            customer.delete()
    # Outside any tenant context, saving that tenant's row is refused as well.
    customer.first_name = "Z"
    with pytest.raises(TenantWriteRefused, match="tenant inactive"):
        customer.save()
    assert Customer.unscoped.get(pk=customer.pk).first_name == "A"
