"""Server capacity (issue 12, 4): tenant databases a server holds against its
max_tenant_databases, its connection headroom read live, the least loaded server, and the
refusal of a server that would go over capacity from the command, the admin and the API
(one clear line, nothing changed). Real PostgreSQL servers: the default one and a second
embedded cluster."""
import re

import psycopg
import pytest
from django.test import Client
from django.urls import reverse

from migration_jobs import services
from migration_jobs.engine import preflight, provision
from migration_jobs.engine.server_load import ConnectionLoad
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.engine.target_server import check_target_server
from migration_jobs.models import MigrationRun
from migration_jobs.services import capacity
from tenancy.models import DatabaseServer, Tenant
from tenancy.servers import ensure_default_server
from tests.helpers import make_token, run_cmd, staff_user, texts

pytestmark = pytest.mark.django_db


def nothing_changed(tenant, server):
    tenant = Tenant.objects.get(pk=tenant.pk)
    return (not MigrationRun.objects.filter(tenant=tenant).exists() and tenant.placement == "shared"
            and tenant.status == "active" and not provision.database_exists(server, tenant.database_name))


def test_tenant_databases_count_placed_tenants_and_moves_on_their_way(make_tenant, place_tenant, second_server):
    place_tenant(make_tenant("placed"), "database", server=second_server)
    services.request_move(make_tenant("coming"), "database", server_name="second")  # queued, counts
    services.request_move(make_tenant("to_schema"), "schema")  # not a database: does not count

    found = capacity.capacity(second_server)
    assert (found.placed, found.moving, found.tenant_databases, found.limit) == (1, 1, 2, None)
    assert found.load.max_connections > 0 and found.load.used >= 1 and found.refusal() is None
    assert capacity.capacity(ensure_default_server()).tenant_databases == 0

    second_server.max_tenant_databases = 2
    second_server.save()
    third = make_tenant("third")
    with pytest.raises(services.Refused, match=r"^database server 'second' is at capacity: 2 tenant databases "
                                               r"\(1 placed, 1 being moved\) of max_tenant_databases 2$"):
        services.request_move(third, "database", server_name="second")
    assert nothing_changed(third, second_server)

    second_server.max_tenant_databases = 3
    second_server.save()
    run = services.request_move(third, "database", server_name="second")
    assert run.target_server == second_server


def test_least_loaded_most_headroom_first_then_fewest_databases(second_server):
    default = ensure_default_server()
    servers = [default, second_server]
    first = capacity.capacities(servers)
    assert all(c.load is not None for c in first)
    roomier, tighter = sorted(first, key=lambda c: -c.load.free)
    # Take connections on the roomier server until it has clearly fewer free than the other.
    held = [psycopg.connect(**roomier.server.conninfo())
            for _ in range(roomier.load.free - tighter.load.free + 5)]
    try:
        assert capacity.least_loaded(servers) == tighter.server
        ranked = capacity.rank(capacity.capacities(servers))
        assert [c.server for c in ranked] == [tighter.server, roomier.server]
    finally:
        for conn in held:
            conn.close()
    # A full server is never chosen, however much headroom it has.
    roomier.server.max_tenant_databases = 0
    roomier.server.save()
    assert capacity.least_loaded(servers) == tighter.server
    tighter.server.max_tenant_databases = 0
    tighter.server.save()
    with pytest.raises(services.Refused, match="^no database server can take another tenant database: "):
        capacity.least_loaded(servers)


def test_equal_headroom_goes_to_the_server_with_fewer_tenant_databases(second_server):
    default = ensure_default_server()
    load = ConnectionLoad(max_connections=100, reserved=3, used=10)
    busy = capacity.Capacity(default, placed=3, moving=1, load=load)
    quiet = capacity.Capacity(second_server, placed=1, moving=0, load=load)
    assert capacity.rank([busy, quiet]) == [quiet, busy]
    roomy = capacity.Capacity(default, placed=3, moving=1, load=ConnectionLoad(100, 3, 5))
    assert capacity.rank([quiet, roomy]) == [roomy, quiet]
    gone = capacity.Capacity(second_server, placed=0, moving=0, problem="unreachable")
    assert capacity.rank([gone, busy]) == [busy]


@pytest.fixture
def full_second(second_server):
    second_server.max_tenant_databases = 0
    second_server.save()
    return second_server


REFUSAL = ("database server 'second' is at capacity: 0 tenant databases (0 placed, 0 being moved) of "
           "max_tenant_databases 0")


def test_over_capacity_refused_by_the_command(make_tenant, full_second):
    tenant = make_tenant("big")
    code, out, err = run_cmd("migrate_tenant", "big", "--to", "database", "--server", "second")
    assert code == 2 and err.strip() == f"error: {REFUSAL}"
    assert nothing_changed(tenant, full_second)


def test_over_capacity_refused_by_the_admin_action(staff, make_tenant, full_second):
    tenant = make_tenant("big")
    done = staff.post(reverse("admin:tenancy_tenant_changelist"),
                      {"action": "move_to_database", "_selected_action": [tenant.pk], "confirm": "yes",
                       "server": "second"})
    assert done.status_code == 302
    assert texts(done) == [f"big: refused: {REFUSAL}"]
    assert nothing_changed(tenant, full_second)


def test_over_capacity_refused_by_the_api(make_tenant, full_second):
    tenant = make_tenant("big")
    token = make_token(staff_user("ops", superuser=True))
    response = Client().post(f"/api/admin/tenants/{tenant.pk}/migrations", {"to": "database", "server": "second"},
                             content_type="application/json", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 409 and response.json()["error"] == REFUSAL
    assert nothing_changed(tenant, full_second)


def test_too_few_free_connections_refused_and_in_preflight(make_tenant, second_server, settings):
    tenant = make_tenant("big")
    settings.TENANT_SERVER_MIN_FREE_CONNECTIONS = 100_000
    code, out, err = run_cmd("migrate_tenant", "big", "--to", "database", "--server", "second")
    assert code == 2
    assert re.fullmatch(r"error: database server 'second' has \d+ free connections \(\d+ of \d+ in use, \d+ "
                        r"reserved\); at least 100000 must stay free \(TENANT_SERVER_MIN_FREE_CONNECTIONS\)\n", err)
    assert nothing_changed(tenant, second_server)
    # The run's own preflight (a run queued before the server filled up) checks the same.
    report = preflight.PreflightReport()
    with provision.admin_connection(second_server) as conn:
        preflight.check_server(conn, "server second", report, need_create_db=True, connections_needed=4)
    [failed] = report.failures()
    assert failed.name == "server second: connection capacity" and "100000 must stay free" in failed.detail

    settings.TENANT_SERVER_MIN_FREE_CONNECTIONS = 5
    assert services.request_move(tenant, "database", server_name="second").target_server == second_server


def test_server_list_shows_capacity_and_unreachable_servers(staff, second_server, second_cluster):
    second_server.max_tenant_databases = 7
    second_server.save()
    spare = DatabaseServer(name="spare", host="127.0.0.1", port=1, admin_user="x")
    spare.set_admin_password("pw-Spare-secret-99")
    spare.save()

    page = staff.get(reverse("admin:tenancy_databaseserver_changelist"))

    assert page.status_code == 200
    html = page.content.decode()
    rows = {name: row for name, row in re.findall(r'<tr>.*?>(default|second|spare)</a>(.*?)</tr>', html, re.S)}
    assert "0 / 7" in rows["second"] and "0 / no limit" in rows["default"]
    assert re.search(r"\d+ / \d+ \(\d+ free\)", rows["second"]) and re.search(r"\d+ / 200 \(\d+ free\)",
                                                                               rows["default"])
    assert "unreachable" in rows["spare"]
    assert "pw-Spare-secret-99" not in html and second_cluster.password not in html


@pytest.mark.django_db(transaction=True)
def test_a_queued_move_checks_capacity_again_in_its_preflight(make_tenant, second_server, cleanup):
    tenant = make_tenant("queued")
    cleanup(tenant)
    run = services.request_move(tenant, "database", server_name="second")
    assert capacity.capacity(second_server).moving == 1
    second_server.max_tenant_databases = 1  # the run's own move does not count against it
    second_server.save()
    report = preflight.PreflightReport()
    check_target_server(second_server, run.target_database, report, connections_needed=4,
                        tenant_tables=[t.name for t in tenant_tables()])
    assert report.ok, report.summary()

    second_server.max_tenant_databases = 0  # the server filled up while the run waited
    second_server.save()
    done = services.execute(run)

    assert done.status == "rolled_back" and "server second: tenant databases" in done.error
    assert "0 tenant databases (0 placed, 0 other moves on the way), limit 0" in done.error
    assert Tenant.objects.get(pk=tenant.pk).placement == "shared"
    assert not provision.database_exists(second_server, tenant.database_name)


def test_the_move_confirmation_preselects_the_least_loaded_server(staff, make_tenant, second_server):
    tenant = make_tenant("pick")
    default = ensure_default_server()
    default.max_tenant_databases = 0  # full: the second server is the one that can take it
    default.save()
    page = staff.post(reverse("admin:tenancy_tenant_changelist"),
                      {"action": "move_to_database", "_selected_action": [tenant.pk]})
    html = page.content.decode()
    options = dict(re.findall(r'<option value="([^"]+)"( selected)?>', html))
    assert options == {"default": "", "second": " selected"}, options
    assert "least loaded" in html
    assert "(full: a move there is refused)" in html
    assert not MigrationRun.objects.exists()
