"""Restore a tenant archive into the shared tables, a fresh schema or a fresh database, all
or nothing: validate the whole file (engine/archive_read.py), plan (engine/restore_plan.py),
load in one transaction per target (engine/restore_load.py), then the tenant row: in the same
transaction for shared and schema targets (both in the shared database); for a database
target after its data committed, with the encrypted credential of the new database's role.
On any failure a schema or database made by this restore is dropped again.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import psycopg
from django.core.exceptions import ValidationError
from django.db import connection as default_connection
from django.db import DatabaseError as DjangoDatabaseError
from django.db import transaction

from migration_jobs.engine import provision
from migration_jobs.engine.archive_read import check_manifest_shape, open_archive, row_checksum, validate_archive
from migration_jobs.engine.places import database_place, schema_place, shared_place
from migration_jobs.engine.restore_ids import allocate_tenant_id, set_tenant_sequence
from migration_jobs.engine.restore_load import load
from migration_jobs.engine.restore_plan import Plan, archive_tables, check_migrations, make_plan
from migration_jobs.exceptions import RestoreConflict, RestoreFailed
from tenancy.models import DatabaseCredential, Domain, Placement, Status, Tenant, tenant_host

# Tenant settings that describe how a tenant was made, not the tenant: not carried to a copy
# restored under another slug.
NOT_COPIED_SETTINGS = ("seed_demo",)
RESTORE_PLACE_LOCK = 74_215  # first key of pg_advisory_lock(int, int): a restore making a schema or database


def restore_tenant(path, *, into: str | None = None, as_slug: str | None = None, replace: bool = False,
                   server_name: str | None = None, check_only: bool = False, on_table=None,
                   manifest: dict | None = None, resolve_server=None) -> dict:
    """Validate `path`, plan, and restore (see the module docstring). Returns a report
    (never a secret). `check_only`: validate and plan, write nothing."""
    started = time.monotonic()
    manifest = manifest or validate_archive(path)
    check_manifest_shape(manifest)
    check_migrations(manifest)
    tables = archive_tables(manifest)
    plan = make_plan(manifest, into=into, as_slug=as_slug, replace=replace, server_name=server_name,
                     resolve_server=resolve_server)
    report = {"plan": plan.as_dict(), "archive": {
        "tenant": manifest["tenant"]["slug"], "tenant_id": manifest["tenant"]["id"],
        "created_at": manifest.get("created_at"), "format_version": manifest["format_version"],
        "source": (manifest.get("source") or {}).get("label"),
        "rows": sum(t["rows"] for t in manifest["tables"])}}
    if check_only:
        report["checked"] = True
        return report
    if plan.into == "database":
        result = _restore_database(plan, path, tables, on_table)
    else:
        result = _restore_default(plan, path, tables, on_table)
    report.update(result)
    report["plan"] = plan.as_dict()  # with the tenant id allocated
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def _create_tenant(plan: Plan, placement: str):
    source = plan.manifest["tenant"]
    settings_ = dict(source.get("settings") or {})
    if plan.slug != source["slug"]:
        for key in NOT_COPIED_SETTINGS:
            settings_.pop(key, None)
    tenant = Tenant(id=plan.tenant_id, slug=plan.slug, name=source.get("name") or plan.slug,
                    placement=placement, status=Status.ACTIVE, settings=settings_)
    tenant.save(force_insert=True)
    Domain.objects.create(domain=tenant_host(plan.slug), tenant=tenant, is_primary=True)
    return tenant


def _result(plan: Plan, tenant, loaded: dict) -> dict:
    return {"tenant": tenant.slug, "tenant_id": tenant.pk, "created": plan.creates_tenant,
            "placement": tenant.placement, "status": tenant.status,
            "tenant_id_rewritten": tenant.pk != plan.archive_tenant_id, **loaded}


def _wrap_db_errors(func):
    """psycopg errors during a load become RestoreFailed with the server's primary message
    (never DETAIL, which can quote row values)."""
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ValidationError as exc:  # the tenant row, refused by the model (a concurrent restore made it)
            raise RestoreConflict(f"restore refused and rolled back: {'; '.join(exc.messages)}") from None
        except (psycopg.Error, DjangoDatabaseError) as exc:
            cause = exc.__cause__ if isinstance(exc, DjangoDatabaseError) else exc
            message = getattr(getattr(cause, "diag", None), "message_primary", None) or type(exc).__name__
            raise RestoreFailed(f"restore failed and was rolled back: {message}") from None
    return wrapper


@contextmanager
def _making(place: str):
    """One restore at a time checks that `place` (a schema or database name) is free and makes
    it: the plan checked earlier, and two restores of the same archive planned at once would
    both "make" it, the one that fails then dropping the other's (session advisory lock on the
    shared database, on a connection of its own: provisioning may close Django's)."""
    with shared_place().connect(autocommit=True, application_name="tenant-restore lock") as conn:
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (RESTORE_PLACE_LOCK, place))
        yield  # the lock goes with the connection


@_wrap_db_errors
def _restore_default(plan: Plan, path, tables, on_table) -> dict:
    """Shared tables or a schema of the shared database: data and tenant row in ONE transaction."""
    created_schema = False
    place = shared_place() if plan.into == Placement.SHARED else schema_place(plan.schema)
    try:
        if plan.into == Placement.SCHEMA:
            with _making(f"schema {plan.schema}"):
                exists = provision.schema_exists(plan.schema)
                if exists and (plan.tenant is None or plan.switch_placement):
                    raise RestoreConflict(f"schema {plan.schema} was made meanwhile (another restore?); "
                                          "nothing was changed")
                if not exists:
                    created_schema = True
                    provision.ensure_schema(plan.schema)
        if plan.tenant_id is None:
            plan.tenant_id = allocate_tenant_id()
        default_connection.set_schema_to_public()
        staged = plan.into == Placement.SHARED or plan.tenant_id != plan.archive_tenant_id
        with open_archive(path) as tar, transaction.atomic():
            default_connection.ensure_connection()
            conn = default_connection.connection
            if plan.tenant is None:
                tenant = _create_tenant(plan, plan.into)
            else:
                tenant = Tenant.objects.select_for_update().get(pk=plan.tenant.pk)
            loaded = load(conn, place, tar, tables, algorithm=row_checksum(plan.manifest), archive_tenant_id=plan.archive_tenant_id,
                          tenant_id=plan.tenant_id, replace=plan.replace, staged=staged,
                          check_collisions=plan.into == Placement.SHARED, dedicated=plan.into != Placement.SHARED,
                          sequences_floor=plan.manifest.get("sequences"), on_table=on_table)
            if plan.switch_placement:
                tenant.placement = plan.into
                tenant.save()
            if plan.tenant is None:
                set_tenant_sequence(conn)
        return _result(plan, tenant, loaded)
    except BaseException:
        if created_schema:
            default_connection.set_schema_to_public()
            provision.drop_schema(plan.schema)
        raise


@_wrap_db_errors
def _restore_database(plan: Plan, path, tables, on_table) -> dict:
    """A dedicated database: the data in one transaction there, then the tenant row and its
    encrypted credential in the shared database; a database made here is dropped on failure."""
    server, database = plan.server, plan.database
    role = provision.role_name(database)
    fresh = plan.tenant is None or plan.switch_placement
    password = None
    made = False  # only a database made by this restore is dropped on failure
    try:
        if plan.tenant_id is None:
            plan.tenant_id = allocate_tenant_id()
        if fresh:
            password = provision.new_password()
            with _making(f"database {server.name} {database}"):
                if provision.database_exists(server, database):
                    raise RestoreConflict(f"database {database} was made on server {server.name} meanwhile "
                                          "(another restore?); nothing was changed")
                made = True
                provision.provision_database(server, database, role, password)
        place = database_place(server, database)
        staged = plan.tenant_id != plan.archive_tenant_id
        with open_archive(path) as tar, place.connect(application_name="tenant-restore") as conn:
            loaded = load(conn, place, tar, tables, algorithm=row_checksum(plan.manifest), archive_tenant_id=plan.archive_tenant_id,
                          tenant_id=plan.tenant_id, replace=plan.replace, staged=staged, check_collisions=False,
                          dedicated=True, sequences_floor=plan.manifest.get("sequences"), on_table=on_table)
            conn.commit()
        if fresh:
            default_connection.set_schema_to_public()
            with transaction.atomic():
                if plan.tenant is None:
                    tenant = _create_tenant(plan, Placement.DATABASE)
                    default_connection.ensure_connection()
                    set_tenant_sequence(default_connection.connection)
                else:
                    tenant = Tenant.objects.select_for_update().get(pk=plan.tenant.pk)
                credential = DatabaseCredential.objects.filter(tenant=tenant).first() or \
                    DatabaseCredential(tenant=tenant)
                credential.server, credential.database, credential.role = server, database, role
                credential.set_password(password)
                credential.save()
                tenant.placement = Placement.DATABASE
                tenant.save()
        else:
            tenant = Tenant.objects.get(pk=plan.tenant.pk)
        return _result(plan, tenant, loaded)
    except BaseException:
        if made:
            provision.drop_database(server, database, role)
        raise
