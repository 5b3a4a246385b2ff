"""Connections that stay bounded: one process serves requests for 50 tenants in dedicated
databases (through the test client, each at its own host) and never holds more connections to
them than TENANT_MAX_DEDICATED_CONNECTIONS, counted in the process's connection handler and by
the server (pg_stat_activity); every request still succeeds.

The 50 databases are cheap copies (CREATE DATABASE ... TEMPLATE) of one migrated database, each
with its own LOGIN role, locked down and granted as provisioning does, and one customer row;
made once for the module.
"""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from psycopg import sql

from migration_jobs.engine import provision
from tenancy import connection_budget
from tenancy.models import DatabaseCredential, DatabaseServer, default_server_values, tenant_host
from tenancy.routing import is_dedicated_alias, routes
from tenancy.servers import ensure_default_server
from tenancy.shared_db import shared_password

TENANTS = 50
BUDGET = 5
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def dedicated_databases(django_db_setup, django_db_blocker):
    """[(database, role, password)]: TENANTS databases made once for the module (each creation
    and drop costs the server a checkpoint), dropped after it."""
    server = DatabaseServer(name="default", is_default=True, **default_server_values())
    server.set_admin_password(shared_password())  # not saved: each test flushes the tables
    template = f"{settings.TENANT_DATABASE_PREFIX}budget_template"
    made = []
    try:
        with provision.admin_connection(server) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(template)))
        with django_db_blocker.unblock():
            provision.migrate_database(server, template)
        for i in range(TENANTS):
            database = f"{settings.TENANT_DATABASE_PREFIX}budget_{i:02d}"
            role, password = provision.role_name(database), provision.new_password()
            made.append((database, role, password))
            provision.ensure_role(server, role, password)
            with provision.admin_connection(server) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(database), sql.Identifier(template)))
            provision.grant_existing(server, database, role)
            with provision.admin_connection(server, database) as conn:
                conn.execute("INSERT INTO shop_customer (tenant_id, public_id, first_name, last_name, phone, "
                             "loyalty_points, tags, created_at) VALUES (0, gen_random_uuid(), 'only', %s, '', %s, "
                             "'{}', now())", (database, i))
        yield made
    finally:
        for database, role, _ in made:
            provision.drop_database(server, database, role)
        provision.drop_database(server, template)


@pytest.fixture
def dedicated_tenants(make_tenant, dedicated_databases):
    """TENANTS tenants routed to those databases, one customer each (its last name: the database)."""
    server = ensure_default_server()
    tenants = []
    for i, (database, role, password) in enumerate(dedicated_databases):
        tenant = make_tenant(f"budget_{i:02d}")
        assert tenant.database_name == database
        with provision.admin_connection(server, database) as conn:
            conn.execute("UPDATE shop_customer SET tenant_id = %s", (tenant.pk,))
        credential = DatabaseCredential(tenant=tenant, server=server, database=database, role=role)
        credential.set_password(password)
        credential.save()
        tenant.placement = "database"
        tenant.save()
        tenants.append(tenant)
    yield tenants
    for conn in connections.all(initialized_only=True):
        if is_dedicated_alias(conn.alias):
            conn.close()


def handler_open() -> int:
    """Dedicated connections open in this thread's connection handler."""
    return sum(1 for conn in connections.all(initialized_only=True)
               if is_dedicated_alias(conn.alias) and conn.connection is not None)


def server_sessions(databases: list[str]) -> int:
    with provision.admin_connection(ensure_default_server()) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) "
                            "AND backend_type = 'client backend'", (databases,)).fetchone()[0]


def settled_sessions(databases: list[str], at_most: int) -> int:
    """The server's count once closed sessions are gone (a backend ends a moment after its
    client closes it): waits up to 10 s for it to reach `at_most`, returns the last count."""
    deadline = time.monotonic() + 10
    while (count := server_sessions(databases)) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def serve(client: Client, tenant) -> None:
    response = client.get("/shop/customers/", HTTP_HOST=tenant_host(tenant.slug))
    assert response.status_code == 200, (tenant.slug, response.status_code, response.content[:300])
    body = response.json()
    assert body["count"] == 1 and body["results"][0]["last_name"] == tenant.database_name, body


@pytest.fixture
def persistent(monkeypatch, settings):
    """Connections kept between requests (CONN_MAX_AGE=None, what the budget is for), and a
    small budget. Dedicated aliases copy the default's settings when first routed."""
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", None)
    settings.TENANT_MAX_DEDICATED_CONNECTIONS = BUDGET


def test_fifty_dedicated_tenants_from_one_process_stay_within_the_budget(dedicated_tenants, persistent, client):
    databases = [t.database_name for t in dedicated_tenants]
    assert server_sessions(databases) == 0
    highest = 0
    for round_ in range(2):  # the second round reopens what the first closed
        for tenant in dedicated_tenants:
            serve(client, tenant)
            held, in_handler = connection_budget.open_connections(), handler_open()
            assert held <= BUDGET and in_handler <= BUDGET, (round_, tenant.slug, held, in_handler)
            on_server = settled_sessions(databases, BUDGET)
            assert on_server <= BUDGET, f"{on_server} sessions on the server after {tenant.slug} (budget {BUDGET})"
            highest = max(highest, in_handler)
    assert highest == BUDGET, "the budget was never reached: the test proves nothing"
    # The most recently served tenants kept theirs (least recently used went first).
    open_aliases = {conn.settings_dict["NAME"] for conn in connections.all(initialized_only=True)
                    if is_dedicated_alias(conn.alias) and conn.connection is not None}
    assert open_aliases == set(databases[-BUDGET:])


def test_connections_past_conn_max_age_close_without_a_request_cycle(dedicated_tenants, persistent, client,
                                                                    monkeypatch):
    """The test client, like a task or a command, never runs Django's close_old_connections:
    the budget still closes this thread's connections once CONN_MAX_AGE has passed."""
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 1)
    first, second, third = dedicated_tenants[:3]
    serve(client, first)
    serve(client, second)
    assert handler_open() == 2
    time.sleep(1.1)
    serve(client, third)  # opening a connection closes those past their age
    assert handler_open() == 1
    assert settled_sessions([first.database_name, second.database_name], 0) == 0


def test_threads_close_each_others_idle_connections_between_requests(dedicated_tenants, persistent):
    """Threads (a threaded server): a thread between requests has its idle connections closed
    by one that needs room; a thread inside a request keeps them and closes them itself at the
    end of its request."""
    tenants = dedicated_tenants
    databases = [t.database_name for t in tenants]
    # One thread opens BUDGET connections and finishes its requests (it is between requests).
    first = threading.Thread(target=lambda: [serve(Client(), t) for t in tenants[:BUDGET]])
    first.start()
    first.join()
    assert first.is_alive() is False
    # It has ended: its connections went with it (weakly held, never leaked).
    assert connection_budget.open_connections() == 0
    assert settled_sessions(databases, 0) == 0

    # A thread that stays between requests, holding BUDGET connections.
    done_first, go_on = threading.Event(), threading.Event()
    errors = []

    def idle_holder():
        try:
            client = Client()
            for tenant in tenants[:BUDGET]:
                serve(client, tenant)
            done_first.set()
            go_on.wait(60)
            serve(client, tenants[0])  # reopens if it was closed for room meanwhile
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
            done_first.set()
        finally:
            for conn in connections.all(initialized_only=True):
                conn.close()

    holder = threading.Thread(target=idle_holder)
    holder.start()
    assert done_first.wait(60) and not errors, errors
    assert connection_budget.open_connections() == BUDGET
    client = Client()
    for tenant in tenants[BUDGET:2 * BUDGET]:  # this thread needs room: the holder's idle ones go
        serve(client, tenant)
        assert connection_budget.open_connections() <= BUDGET
        assert settled_sessions(databases, BUDGET) <= BUDGET
    assert handler_open() == BUDGET
    go_on.set()
    holder.join(60)
    assert not errors, errors


@contextmanager
def tcp_relay(host: str, port: int):
    """A TCP relay to host:port on a free local port (stands in for PgBouncer, not installed
    here): yields (its port, a list of the connections it accepted)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted, sockets = [], [listener]

    def pump(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve_relay():
        while True:
            try:
                client, address = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((host, port))
            sockets.extend([client, upstream])
            accepted.append(address)
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve_relay, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        for sock in sockets:
            sock.close()


def test_tenant_connections_go_through_the_servers_pooler(dedicated_tenants, persistent, client, settings):
    """TENANT_DEDICATED_POOLERS: the tenants' requests connect to the pooler's address, without
    server-side cursors (transaction pooling); still within the budget."""
    server = ensure_default_server()
    with tcp_relay(server.host, int(server.port)) as (relay_port, accepted):
        settings.TENANT_DEDICATED_POOLERS = {"default": f"127.0.0.1:{relay_port}"}
        routes.clear()
        for tenant in dedicated_tenants[:BUDGET + 3]:
            serve(client, tenant)
            assert connection_budget.open_connections() <= BUDGET
        assert len(accepted) == BUDGET + 3, "every tenant connection went through the pooler's address"
        pooled = [conn for conn in connections.all(initialized_only=True)
                  if is_dedicated_alias(conn.alias) and conn.connection is not None]
        assert {(c.settings_dict["PORT"], c.settings_dict["DISABLE_SERVER_SIDE_CURSORS"]) for c in pooled} == {
            (str(relay_port), True)}
        for conn in pooled:
            conn.close()
