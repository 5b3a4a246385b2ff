"""Routing and isolation: each placement gets the tenant's rows from the right place, and
code running for one tenant never sees or writes another's."""
import time

import psycopg
import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from shop.models import Customer
from tenancy.context import current_route, tenant_context
from tenancy.exceptions import CrossTenantAccess
from tenancy.models import ReadSwitch
from tenancy.routing import RouteCache, routes, set_read_switch
from tests.helpers import server_conninfo_of


def add_customers(tenant, n, prefix="c"):
    with tenant_context(tenant):
        for i in range(n):
            Customer.objects.create(first_name=f"{prefix}{i}", last_name=tenant.slug, email=f"{prefix}{i}@x.test",
                                    created_at=timezone.now())


@pytest.mark.django_db
def test_shared_placement_isolates_tenants(make_tenant):
    a, b = make_tenant("alpha"), make_tenant("beta")
    add_customers(a, 3)
    add_customers(b, 2)
    b_row = Customer.unscoped.filter(tenant=b).first()
    with tenant_context(a):
        assert Customer.objects.count() == 3
        assert set(Customer.objects.values_list("tenant_id", flat=True)) == {a.pk}
        with pytest.raises(Customer.DoesNotExist):
            Customer.objects.get(pk=b_row.pk)
        # Bulk writes through the scoped manager only reach A's rows.
        assert Customer.objects.update(loyalty_points=7) == 3
        # A row of B, obtained some other way, cannot be written from A's context.
        b_row.first_name = "hijacked"
        with pytest.raises(CrossTenantAccess):
            b_row.save()
        with pytest.raises(CrossTenantAccess):
            b_row.delete()
    assert Customer.unscoped.filter(tenant=b, loyalty_points=7).count() == 0
    assert Customer.unscoped.filter(first_name="hijacked").count() == 0
    assert current_route() is None  # context restored
    assert Customer.objects.count() == 5  # staff code without a tenant sees everyone


@pytest.mark.django_db
def test_schema_placement_reads_and_writes_the_schema(make_tenant, place_tenant):
    s, other = make_tenant("schemed"), make_tenant("pooled")
    add_customers(s, 2, prefix="legacy")  # rows in the shared tables, before the move
    add_customers(other, 1)
    place_tenant(s, "schema")
    add_customers(s, 4, prefix="new")
    with connection.cursor() as cur:
        cur.execute('SELECT count(*) FROM "tenant_schemed".shop_customer')
        assert cur.fetchone()[0] == 4
        cur.execute("SELECT count(*) FROM public.shop_customer WHERE tenant_id = %s", [s.pk])
        assert cur.fetchone()[0] == 2  # legacy rows untouched and no longer reachable
    with tenant_context(s):
        assert sorted(Customer.objects.values_list("first_name", flat=True)) == [f"new{i}" for i in range(4)]
    with tenant_context(other):
        assert Customer.objects.count() == 1
    assert connection.schema_name == "public"


@pytest.mark.django_db
def test_database_placement_reads_and_writes_the_dedicated_database(make_tenant, place_tenant):
    d = make_tenant("dedic")
    add_customers(d, 2, prefix="legacy")
    place_tenant(d, "database")
    add_customers(d, 3, prefix="new")
    credential = d.credential
    with psycopg.connect(**credential.conninfo()) as conn:
        assert conn.execute("SELECT count(*) FROM shop_customer WHERE tenant_id = %s", (d.pk,)).fetchone()[0] == 3
    with tenant_context(d) as route:
        assert route.db_alias and route.db_alias.startswith("tenant_")
        assert Customer.objects.db == route.db_alias
        assert Customer.objects.count() == 3
    assert Customer.unscoped.filter(tenant=d).count() == 2  # the shared rows are left alone


@pytest.mark.django_db
def test_tenant_role_reaches_only_its_own_database(make_tenant, place_tenant):
    one, two = make_tenant("one_db"), make_tenant("two_db")
    place_tenant(one, "database")
    place_tenant(two, "database")
    info = one.credential.conninfo()
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(**{**info, "dbname": two.credential.database}).close()
    with psycopg.connect(**info) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE sneaky (id int)")


@pytest.mark.django_db
def test_requests_route_by_host_without_extra_queries(client, make_tenant, place_tenant):
    a, d = make_tenant("hostа".replace("а", "a")), make_tenant("hostd")
    add_customers(a, 2)
    place_tenant(d, "database")
    add_customers(d, 5)
    routes.clear()
    assert client.get("/shop/summary/", HTTP_HOST="hosta.localhost").json()["customers"] == 2  # warm-up
    with CaptureQueriesContext(connection) as queries:
        body = client.get("/shop/summary/", HTTP_HOST="hosta.localhost").json()
    assert body == {"tenant": "hosta", "placement": "shared", "customers": 2, "repairs": 0}
    assert len(queries) == 2, [q["sql"] for q in queries]  # the view's two counts, nothing for routing

    assert client.get("/shop/summary/", HTTP_HOST="hostd.localhost").json()["customers"] == 5
    alias = routes.by_id(d.pk).db_alias
    with CaptureQueriesContext(connection) as on_default, CaptureQueriesContext(connections[alias]) as on_dedicated:
        body = client.get("/shop/summary/", HTTP_HOST="hostd.localhost").json()
    assert body["customers"] == 5 and body["placement"] == "database"
    assert len(on_default) == 0, [q["sql"] for q in on_default]
    assert len(on_dedicated) == 2


@pytest.mark.django_db
def test_placement_change_is_seen_by_the_next_request(client, make_tenant, place_tenant):
    t = make_tenant("mover")
    add_customers(t, 1, prefix="old")
    assert client.get("/shop/summary/", HTTP_HOST="mover.localhost").json()["customers"] == 1
    place_tenant(t, "schema")
    body = client.get("/shop/summary/", HTTP_HOST="mover.localhost").json()
    assert body["placement"] == "schema" and body["customers"] == 0


@pytest.mark.django_db
def test_unknown_host_has_no_tenant(client):
    assert client.get("/shop/summary/", HTTP_HOST="nobody.localhost").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_other_processes_invalidate_the_route_cache(settings, make_tenant):
    """A change committed by another process reaches this one through LISTEN/NOTIFY."""
    settings.TENANT_ROUTE_LISTENER = True
    cache = RouteCache()
    t = make_tenant("listened")
    try:
        assert cache.by_id(t.pk).status == "active"
        assert cache.listener.connected.wait(5)
        with psycopg.connect(**server_conninfo_of(settings.DATABASES["default"]["NAME"])) as other:
            other.execute("UPDATE tenancy_tenant SET status = 'suspended' WHERE id = %s", (t.pk,))
            other.execute("SELECT pg_notify('tenant_routes', %s)", (str(t.pk),))
        deadline = time.monotonic() + 5
        while cache._by_id.get(t.pk) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.by_id(t.pk).status == "suspended"
    finally:
        cache.listener.stop()


@pytest.mark.django_db
def test_read_switch_serves_a_share_of_reads_from_the_copy(client, make_tenant, place_tenant):
    """The read switch lives in tenancy (written by an online move through set_read_switch):
    on, the route carries a read-only route to the copy; off, none; each change is seen at once."""
    t = make_tenant("switched")
    add_customers(t, 2)
    assert routes.by_id(t.pk).read_route is None  # cached from here on
    set_read_switch(t.pk, 100, "schema", "tenant_switched_copy")
    route = routes.by_id(t.pk)
    assert route.read_percent == 100 and route.placement == "shared" and route.accepts_writes
    assert (route.read_route.placement, route.read_route.schema_name, route.read_route.status) == (
        "schema", "tenant_switched_copy", "read_only")
    set_read_switch(t.pk, 0)
    assert routes.by_id(t.pk).read_route is None and not ReadSwitch.objects.filter(tenant=t).exists()

    place_tenant(t, "database")  # a database copy is read through the tenant's dedicated alias
    set_read_switch(t.pk, 50, "database")
    reads = routes.by_id(t.pk).read_route
    assert reads.placement == "database" and reads.db_alias and reads.db_alias == routes.by_id(t.pk).db_alias
