"""Helpers shared by several test modules: commands, snapshots and fingerprints of a
tenant's rows, archive rewriting, a small ORM-made tenant, cleanup of places."""
import hashlib
import html
import io
import json
import tarfile
import threading
import time
from datetime import date, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from django.utils.html import strip_tags
from psycopg import sql

from api.models import ApiToken
from migration_jobs import services
from migration_jobs.engine import provision
from migration_jobs.engine.places import shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.engine.verify import fingerprint
from migration_jobs.runs.executor import closing_connections, execute
from migration_jobs.runs.faults import Faults, WorkerKilled
from shop.models import Customer, Device, Employee, Repair, RepairPart, RepairStatusHistory, SparePart
from tenancy.context import tenant_context
from tenancy.models import Domain, Tenant
from tenancy.shared_db import shared_conninfo

SHOP = [Employee, Customer, Device, SparePart, Repair, RepairStatusHistory, RepairPart]


def server_conninfo_of(dbname="postgres") -> dict:
    """psycopg keywords for a database (default: postgres) on the shared database's server."""
    return shared_conninfo(dbname, connect_timeout=None)


def run_cmd(name, *args):
    """(exit status, stdout, stderr) of a management command run in this process."""
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
    with shared_place().connect() as conn:
        for table in reversed(tenant_tables()):
            conn.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(shared_place().table(table.name)),
                         (tenant.pk,))
        conn.commit()
    Tenant.objects.filter(pk=tenant.pk).delete()


def drop_places(made) -> None:
    """Drop what tests made: ("schema", name) or ("database", server, database, role) items."""
    connection.set_schema_to_public()
    for kind, *args in made:
        if kind == "schema":
            provision.drop_schema(*args)
        else:
            provision.drop_database(*args)


def crash_move(tenant, target: str, where: str = "after:copy", *, online: bool = False):
    """A move whose worker dies at `where`: the run stays running, as a crash leaves it."""
    run = services.request_move(tenant, target, online=online)
    with pytest.raises(WorkerKilled), closing_connections():
        execute(run.pk, faults=Faults({where: WorkerKilled}))
    return run


def rows_of(place, table, tenant_id, *, without_tenant=False):
    """Every row of the tenant in that place, as Python values, in key order."""
    cols = [c for c in table.columns if not (without_tenant and c == "tenant_id")]
    with place.connect() as conn:
        return conn.execute(sql.SQL("SELECT {} FROM {} WHERE tenant_id = %s ORDER BY {}").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)), place.table(table.name), sql.Identifier(table.pk)),
            (tenant_id,)).fetchall()


def snapshot(place, tenant_id, **kwargs):
    return {t.name: rows_of(place, t, tenant_id, **kwargs) for t in tenant_tables()}


def point_at_another_tenant(tenant) -> int:
    """Make one of the tenant's devices reference another tenant's customer (in the shared
    tables, committed); returns the device's id."""
    other = Tenant.objects.exclude(pk=tenant.pk).first()
    with shared_place().connect() as conn:
        theirs = conn.execute("SELECT id FROM shop_customer WHERE tenant_id = %s LIMIT 1", (other.pk,)).fetchone()[0]
        mine = conn.execute("SELECT id FROM shop_device WHERE tenant_id = %s LIMIT 1", (tenant.pk,)).fetchone()[0]
        conn.execute("UPDATE shop_device SET customer_id = %s WHERE id = %s", (theirs, mine))
        conn.commit()
    return mine


def fingerprints(place, tenant_id):
    with place.connect() as conn:
        return {t.name: fingerprint(conn, place, t, tenant_id) for t in tenant_tables()}


def shared_state():
    """Everything a refused restore must leave alone: all shop rows and the tenant rows."""
    with shared_place().connect() as conn:
        shop = {t.name: conn.execute(sql.SQL("SELECT count(*), coalesce(sum(hashtext(x::text)), 0) FROM {} x").format(
            shared_place().table(t.name))).fetchone() for t in tenant_tables()}
    return shop, sorted(Tenant.objects.values_list("pk", "slug", "placement", "status")), \
        sorted(Domain.objects.values_list("domain", flat=True))


def schema_exists(name):
    with shared_place().connect() as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() is not None


def rewrite(path, out_path, *, members=None, manifest=None, fix_digest=True):
    """Copy an archive, changing member bytes (`members`: name -> fn(bytes)) and/or the
    manifest (`manifest`: fn(dict)); the manifest digest is recomputed unless told not to."""
    with tarfile.open(path) as tar:
        items = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    data = dict((m.name, b) for m, b in items)
    for name, change in (members or {}).items():
        data[name] = change(data[name])
    if manifest is not None:
        doc = json.loads(data["manifest.json"])
        manifest(doc)
        data["manifest.json"] = json.dumps(doc).encode()
    if fix_digest:
        data["manifest.sha256"] = f"{hashlib.sha256(data['manifest.json']).hexdigest()}  manifest.json\n".encode()
    with tarfile.open(out_path, "w") as tar:
        for member, _ in items:
            info = tarfile.TarInfo(member.name)
            info.size = len(data[member.name])
            tar.addfile(info, io.BytesIO(data[member.name]))
    return out_path


def fill(tenant, n=4):
    """A small tenant: a few rows in most shop tables, written through the ORM as the tenant."""
    now = timezone.now()
    with tenant_context(tenant):
        boss = Employee.objects.create(full_name="Boss", email=f"boss@{tenant.slug}.test", role="owner",
                                       hired_on=date(2020, 1, 2), hourly_rate=Decimal("42.50"), skills=["all"])
        part = SparePart.objects.create(sku="SKU-1", name="Screen", unit_price=Decimal("99.90"), stock=3,
                                        compatible_models=["X1", "X2"])
        for i in range(n):
            customer = Customer.objects.create(first_name=f"First{i}", last_name=f"Last{i}", email=f"c{i}@x.test",
                                               tags=["vip"] if i % 2 else [], created_at=now - timedelta(days=i))
            device = Device.objects.create(customer=customer, kind="phone", brand="Acme", model_name="X1",
                                           serial_number=f"SN{i}")
            repair = Repair.objects.create(device=device, customer=customer, assigned_to=boss, ticket_number=1000 + i,
                                           problem="broken\nscreen 'quoted'", received_at=now,
                                           metadata={"i": i, "nested": {"ok": True}})
            RepairStatusHistory.objects.create(repair=repair, to_status="received", changed_at=now, changed_by=boss)
            RepairPart.objects.create(repair=repair, part=part, quantity=1, unit_price=Decimal("99.90"))


def shared_counts(tenant) -> dict:
    return {m._meta.db_table: m.unscoped.filter(tenant_id=tenant.pk).count() for m in SHOP}


def place_counts(tenant) -> dict:
    tenant = Tenant.objects.get(pk=tenant.pk)
    with tenant_context(tenant):
        return {m._meta.db_table: m.objects.count() for m in SHOP}


def staff_user(username, perms=(), superuser=False):
    """An active staff user with these permissions ("app.codename"), or a superuser."""
    users = get_user_model().objects
    if superuser:
        return users.create_superuser(username, f"{username}@example.test", "pw-Perm-123")
    user = users.create_user(username, f"{username}@example.test", "pw-Perm-123", is_staff=True)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return users.get(pk=user.pk)  # no stale permission cache


def make_token(user, name="t", revoked=False, created_by=None, scope="read-write", expires_at=None):
    """An API token's plaintext; its creator is the user unless told otherwise."""
    token = ApiToken(name=name, user=user, revoked=revoked, created_by=created_by or user, scope=scope,
                     expires_at=expires_at)
    plaintext = token.issue()
    token.save()
    return plaintext


def texts(response, as_html: bool = False) -> list[str]:
    """The messages this request added (earlier ones may still wait in the cookie), as the
    user reads them, or as sent (`as_html`): a refusal's message links the run it names."""
    sent = [str(m) for m in get_messages(response.wsgi_request)._queued_messages]
    return sent if as_html else [html.unescape(strip_tags(m)) for m in sent]


def wait_for_catch_up_round(run, rounds: int, timeout: float = 120.0) -> None:
    """Until the online run has applied this many catch-up rounds (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.current_step == "catch_up" and run.steps.get(name="catch_up").details.get("round", 0) >= rounds:
            return
        time.sleep(0.05)


def execute_held(run, staff, seen: dict, rounds: int):
    """Execute a held online move here while `staff()` acts on it from a thread of its own
    once `rounds` catch-up rounds are done (as a person in the admin would). An error in the
    thread lands in seen["error"] and releases the hold, so the run still ends. The run."""
    def act():
        try:
            wait_for_catch_up_round(run, rounds)
            staff()
        except Exception as exc:  # noqa: BLE001 - reported by the caller's assertions
            seen["error"] = repr(exc)
            type(run).objects.filter(pk=run.pk).update(hold_cutover=False)
        finally:
            connection.close()

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    finished = execute(run.pk)
    thread.join(30)
    return finished
