"""Restore, planning: check an archive against this installation (known migrations, tenant
tables, column types) and decide which tenant, which tenant id and where.

The tenant id is the archive's when it is free (or already that tenant's) and not beyond the
tenant sequence + TENANT_RESTORE_SEQUENCE_MARGIN; otherwise a new one, and every row's
tenant_id is rewritten. Refused (RestoreConflict): an active migration run; rows already there
without `replace`; replacing an *active* tenant's rows (suspend it first); a dedicated tenant
restored elsewhere, or one with shared rows restored into a dedicated place (that is a move);
a schema or database that exists already and is not the tenant's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.migrations.loader import MigrationLoader

from migration_jobs.engine import provision
from migration_jobs.engine.archive_read import shown
from migration_jobs.engine.places import Place, place_of, shared_place
from migration_jobs.engine.restore_ids import tenant_id_ceiling
from migration_jobs.engine.tables import TableSpec, row_counts, tenant_tables
from migration_jobs.exceptions import ArchiveError, Refused, RestoreConflict, RestoreRefused
from migration_jobs.models import ACTIVE_STATUSES
from tenancy.models import Domain, Placement, Status, Tenant, slug_validator, tenant_host
from tenancy.settings_check import settings_problem

TARGETS = ("shared", "schema", "database")


def check_migrations(manifest: dict) -> None:
    """Refuse an archive whose app migrations this installation does not know (newer code)."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    graph = loader.graph
    for app, name in sorted(manifest["migrations"].items()):
        if app not in loader.migrated_apps:
            raise ArchiveError(f"archive was written by an installation with app {shown(app, quoted=True)}, "
                               "which this one lacks")
        if (app, name) not in graph.nodes:
            leaves = ", ".join(f"{a}.{n}" for a, n in graph.leaf_nodes(app)) or "none"
            raise ArchiveError(f"archive was written at migration {shown(app)}.{shown(name)}, which this "
                               f"installation does not know (latest here: {leaves}); "
                               "upgrade the code before restoring it")


def archive_tables(manifest: dict) -> list[tuple[TableSpec, dict]]:
    """(spec of the archive's columns, manifest entry) per table, in this installation's FK order."""
    here = {t.name: t for t in tenant_tables()}
    entries = {t["name"]: t for t in manifest["tables"]}
    unknown = sorted(set(entries) - set(here))
    if unknown:
        raise ArchiveError(f"archive holds tables that are not tenant tables here: {', '.join(unknown)}")
    out = []
    for spec in here.values():
        entry = entries.get(spec.name)
        if entry is None:
            continue
        cols = tuple(c["name"] for c in entry["columns"])
        # The primary key is this installation's, never the manifest's: the restored keys are
        # checked and the sequences set past them by it (a manifest naming another column
        # would leave a shared sequence behind keys it then hands out again).
        out.append((TableSpec(spec.name, cols, spec.pk, spec.parents), entry))
    return out


def target_columns(conn, place: Place, table: str) -> dict[str, tuple[str, bool, bool]]:
    """column -> (type, nullable, has default) of a table of the place."""
    rows = conn.execute("""
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, a.atthasdef OR a.attidentity <> ''
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped""",
                        (place.schema, table)).fetchall()
    return {name: (kind, nullable, has_default) for name, kind, nullable, has_default in rows}


def check_columns(conn, place: Place, tables: list[tuple[TableSpec, dict]]) -> None:
    """Every archive column exists in the target with the same type; target columns the
    archive lacks (added by later migrations) must be nullable or have a default."""
    for spec, entry in tables:
        here = target_columns(conn, place, spec.name)
        if not here:
            raise ArchiveError(f"table {spec.name} does not exist in {place}")
        for col in entry["columns"]:
            found = here.get(col["name"])
            if found is None:
                raise ArchiveError(f"{spec.name}.{shown(col['name'])} is in the archive but not in {place}; "
                                   "the archive does not fit this installation's tables")
            if found[0] != col["type"]:
                raise ArchiveError(f"{spec.name}.{col['name']} is {shown(col['type'])} in the archive and "
                                   f"{found[0]} in {place}; run `manage.py migrate` or restore with matching code")
        missing = [name for name, (_, nullable, has_default) in here.items()
                   if name not in spec.columns and not nullable and not has_default]
        if missing:
            raise ArchiveError(f"{spec.name}: columns {', '.join(missing)} are required in {place} but absent "
                               "from the archive")


@dataclass
class Plan:
    manifest: dict
    slug: str
    into: str
    tenant: object | None           # the existing Tenant, or None (one is created)
    tenant_id: int | None           # None: a new id is allocated when the restore runs
    replace: bool
    switch_placement: bool = False  # an existing (empty, shared) tenant gets the new placement
    schema: str = ""
    server: object | None = None
    database: str = ""
    existing_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def archive_tenant_id(self) -> int:
        return self.manifest["tenant"]["id"]

    @property
    def creates_tenant(self) -> bool:
        return self.tenant is None

    def as_dict(self) -> dict:
        return {"tenant": self.slug, "tenant_id": self.tenant_id, "into": self.into,
                "creates_tenant": self.creates_tenant, "replace": self.replace,
                "existing_rows": self.existing_rows, "schema": self.schema or None,
                "server": self.server.name if self.server is not None else None,
                "database": self.database or None,
                "archive_tenant": self.manifest["tenant"]["slug"], "archive_tenant_id": self.archive_tenant_id,
                "rewrites_tenant_id": self.tenant_id is None or self.tenant_id != self.archive_tenant_id}


def count_rows(place: Place, tenant_id: int, tables: list[TableSpec]) -> int:
    """The tenant's rows in the place, over the tables that exist there."""
    with place.connect(autocommit=True, application_name="tenant-restore check") as conn:
        return sum(row_counts(conn, place, tables, tenant_id, missing_ok=True).values())


def make_plan(manifest: dict, *, into: str | None = None, as_slug: str | None = None, replace: bool = False,
              server_name: str | None = None, resolve_server=None) -> Plan:
    """`resolve_server(name)`: the DatabaseServer to restore a new database on, checked
    reachable (the services' lookup), raising Refused."""
    if into is not None and into not in TARGETS:
        raise RestoreRefused(f"unknown target {into!r}: use one of {', '.join(TARGETS)}")
    slug = as_slug or manifest["tenant"]["slug"]
    try:
        slug_validator(slug)
    except ValidationError:
        raise RestoreRefused(f"invalid tenant slug {shown(slug, quoted=True)}: lower-case letters, digits and _, "
                             "starting with a letter, at most 40") from None
    if server_name and into not in (None, "database"):
        raise RestoreRefused("--server applies to database targets only")
    tables = [t for t in tenant_tables()]
    tenant = Tenant.objects.filter(slug=slug).first()
    archive_id = manifest["tenant"]["id"]

    if tenant is not None:
        into = into or tenant.placement
        run = tenant.migration_runs.filter(status__in=ACTIVE_STATUSES).first()
        if run is not None:
            raise RestoreConflict(f"tenant {slug} is being moved by run {run.pk}; wait for it to finish")
        if tenant.status == Status.MIGRATING:
            raise RestoreConflict(f"tenant {slug} is migrating (an interrupted run?); resume or roll it back first")
        plan = Plan(manifest, slug, into, tenant, tenant.pk, replace)
        if into != tenant.placement:
            if tenant.placement != Placement.SHARED:
                raise RestoreConflict(
                    f"tenant {slug} lives in a dedicated {tenant.placement}; restore into it (--into "
                    f"{tenant.placement}, API: into={tenant.placement}) or move it back to shared with a "
                    "migration run first")
            rows = count_rows(shared_place(), tenant.pk, tables)
            if rows:
                raise RestoreConflict(
                    f"tenant {slug} has {rows} rows in the shared tables; restore into shared with replace "
                    f"or move it with a migration run (migrate_tenant) instead", {"existing_rows": rows})
            plan.switch_placement = True
        else:
            plan.existing_rows = count_rows(place_of(tenant), tenant.pk, tables)
    else:
        into = into or Placement.SHARED
        if Tenant.objects.filter(schema_name=f"{settings.TENANT_SCHEMA_PREFIX}{slug}").exists():
            raise RestoreConflict(f"another tenant already uses schema name {settings.TENANT_SCHEMA_PREFIX}{slug}")
        domain = tenant_host(slug)
        if Domain.objects.filter(domain=domain).exists():
            raise RestoreConflict(f"domain {domain} already belongs to another tenant")
        free = not Tenant.objects.filter(pk=archive_id).exists()
        ceiling = tenant_id_ceiling()
        if free and not 1 <= archive_id <= ceiling:
            # Kept, the id would push the tenant sequence there (see checked_sequence_floor).
            free = False
        plan = Plan(manifest, slug, into, None, archive_id if free else None, replace)
        if into == Placement.SHARED and free:
            # Rows of a deleted tenant may still carry this id.
            plan.existing_rows = count_rows(shared_place(), archive_id, tables)

    if into == Placement.SCHEMA:
        plan.schema = tenant.schema_name if tenant is not None else f"{settings.TENANT_SCHEMA_PREFIX}{slug}"
        if (tenant is None or plan.switch_placement) and provision.schema_exists(plan.schema):
            raise RestoreConflict(f"schema {plan.schema} already exists and is not this tenant's; drop it or "
                                  "restore under another slug (--as, API: as=SLUG)")
    elif into == Placement.DATABASE:
        if tenant is not None and not plan.switch_placement:
            credential = tenant.credential
            if server_name and credential.server.name != server_name:
                raise RestoreConflict(f"tenant {slug} lives on server {credential.server.name}, not {server_name}")
            plan.server, plan.database = credential.server, credential.database
        else:
            try:
                plan.server = resolve_server(server_name)
            except Refused as exc:
                raise RestoreRefused(str(exc)) from None
            plan.database = f"{settings.TENANT_DATABASE_PREFIX}{slug}"
            if provision.database_exists(plan.server, plan.database):
                raise RestoreConflict(f"database {plan.database} already exists on server {plan.server.name}; "
                                      "drop it or restore under another slug (--as, API: as=SLUG)")

    if plan.existing_rows and not replace:
        raise RestoreConflict(f"tenant {slug} already has {plan.existing_rows} rows in its {into} placement; "
                              "restore with replace (--replace, API: replace=true) to replace them",
                              {"existing_rows": plan.existing_rows})
    if plan.existing_rows and tenant is not None and tenant.status == Status.ACTIVE:
        raise RestoreConflict(f"tenant {slug} is active: suspend it before replacing its rows "
                              "(writes made during the restore would be lost)")
    problem = settings_problem(manifest["tenant"].get("settings") or {}, "the archive's tenant.settings")
    if plan.creates_tenant and problem:  # a new tenant would get them
        raise RestoreRefused(problem)
    return plan
