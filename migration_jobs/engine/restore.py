"""Restore a tenant archive (engine/archive.py) into the shared tables, a fresh schema or a
fresh database, all or nothing.

Order of work (`restore_tenant`):
1. **Check the file** before anything is written: tar structure, manifest digest and shape,
   format version, size and SHA-256 of every member, complete gzip streams
   (archive.validate_archive); the archive's app migrations must all be known to this
   installation (an archive from newer code is refused); every table must be a tenant table
   here.
2. **Plan**: which tenant (the manifest's slug, or `as_slug`), which tenant id (the
   manifest's when it is free, or is that tenant's, and is not beyond this installation's
   tenant sequence + the margin; otherwise a new one and every row's tenant_id is
   rewritten), where (`into`, default: where the tenant lives now, or shared for a new
   tenant). Refused (RestoreConflict): an active migration run; rows already there
   without `replace`; replacing the rows of an *active* tenant (suspend it first: its writes
   would be lost); a tenant that lives in a dedicated place being restored elsewhere, or one
   with rows in the shared tables being restored into a dedicated place (that is a move:
   use a migration run); a schema or database that exists already and is not the tenant's.
3. **Load in ONE transaction per target**: optional DELETE of the tenant's rows (`replace`),
   `COPY ... FROM STDIN (FORMAT binary)` streamed from each gzip member (never a table in
   memory), tables in foreign-key order with FKs deferred. Into the shared tables, or with a
   tenant id rewrite, rows go through a TEMP staging table first: checked against the
   manifest there, tenant_id rewritten there, keys checked against other tenants' rows
   (every unique key without tenant_id; a collision is refused with a report before the
   shared tables are written), then `INSERT ... SELECT`. Then FKs are checked, a row that
   points at another tenant's row (a cross-tenant reference, which no FK catches) is refused
   (engine/references.py), every table is verified (count + checksum, see below), sequences
   are set past the restored keys and past the source's positions as far as the data bears
   them out (the manifest's positions are clamped to the highest restored key +
   TENANT_RESTORE_SEQUENCE_MARGIN; a key past half its sequence's range is refused; a
   sequence never moves backwards), and only then does the transaction commit. Each gzip
   member's expanded size is capped while it streams (archive.ExpansionCap).
4. **The tenant row**: created (with its domain) in the same transaction for shared and
   schema targets (both are in the shared database); for a database target, after the data
   transaction committed, with the encrypted credential of the new database's role. On any
   failure, a schema or database made by this restore is dropped again.

**Checksums with a rewritten tenant_id.** The manifest checksum (verify.fingerprint) covers
tenant_id, so it cannot match rows that carry another tenant id. With a rewrite the proof is
done in two links: the staged rows (original tenant id) must match the manifest's count and
checksum exactly; then tenant_id is rewritten in the staging table and its fingerprint for
the new id is taken; the target's fingerprint for the new id must equal that. Every column
but tenant_id is thus proven equal to the archive, and tenant_id equal to the new id.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from django.db import connection as default_connection
from django.db import DatabaseError as DjangoDatabaseError
from django.db import transaction
from psycopg import sql

from migration_jobs.engine import provision
from migration_jobs.engine.archive import (CHUNK, ArchiveError, ExpansionCap, check_manifest_shape, copied_rows,
                                           open_archive, open_table_stream, row_checksum, validate_archive)
from migration_jobs.engine.places import CANONICAL_SESSION, Place, database_place, place_of, schema_place, shared_place
from migration_jobs.engine.references import find_bad_references
from migration_jobs.engine.sequences import set_sequences
from migration_jobs.engine.tables import TableSpec, tenant_tables
from migration_jobs.engine.verify import HASH64, fingerprint, foreign_rows
from migration_jobs.exceptions import Refused, RestoreConflict, RestoreFailed, RestoreRefused
from tenancy.models import tenant_host

TARGETS = ("shared", "schema", "database")
STAGING = Place("staging", "pg_temp", {}, "staging tables")
# Tenant settings that describe how a tenant was made, not the tenant: not carried to a copy
# restored under another slug.
NOT_COPIED_SETTINGS = ("seed_demo",)


# --- Checks on the archive against this installation -------------------------------------

def check_migrations(manifest: dict) -> None:
    """Refuse an archive whose app migrations this installation does not know (newer code)."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    graph = loader.graph
    for app, name in sorted(manifest["migrations"].items()):
        if app not in loader.migrated_apps:
            raise ArchiveError(f"archive was written by an installation with app {app!r}, which this one lacks")
        if (app, name) not in graph.nodes:
            leaves = ", ".join(f"{a}.{n}" for a, n in graph.leaf_nodes(app)) or "none"
            raise ArchiveError(f"archive was written at migration {app}.{name}, which this installation does not "
                               f"know (latest here: {leaves}); upgrade the code before restoring it")


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
        out.append((TableSpec(spec.name, cols, entry.get("pk", spec.pk), spec.parents), entry))
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
                raise ArchiveError(f"{spec.name}.{col['name']} is in the archive but not in {place}; "
                                   "the archive does not fit this installation's tables")
            if found[0] != col["type"]:
                raise ArchiveError(f"{spec.name}.{col['name']} is {col['type']} in the archive and {found[0]} in "
                                   f"{place}; run `manage.py migrate` or restore with matching code")
        missing = [name for name, (_, nullable, has_default) in here.items()
                   if name not in spec.columns and not nullable and not has_default]
        if missing:
            raise ArchiveError(f"{spec.name}: columns {', '.join(missing)} are required in {place} but absent "
                               "from the archive")


# --- The plan ------------------------------------------------------------------------------

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
    from migration_jobs.engine.verify import tables_in_place

    with place.connect(autocommit=True, application_name="tenant-restore check") as conn:
        present = tables_in_place(conn, place, [t.name for t in tables])
        return sum(conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
            place.table(t.name)), (tenant_id,)).fetchone()[0] for t in tables if t.name in present)


def make_plan(manifest: dict, *, into: str | None = None, as_slug: str | None = None, replace: bool = False,
              server_name: str | None = None, resolve_server=None) -> Plan:
    """`resolve_server(name)`: the DatabaseServer to restore a new database on, checked
    reachable (the services' lookup), raising Refused."""
    from django.core.exceptions import ValidationError

    from migration_jobs.models import ACTIVE_STATUSES
    from tenancy.models import Domain, Placement, Status, Tenant, slug_validator

    if into is not None and into not in TARGETS:
        raise RestoreRefused(f"unknown target {into!r}: use one of {', '.join(TARGETS)}")
    slug = as_slug or manifest["tenant"]["slug"]
    try:
        slug_validator(slug)
    except ValidationError:
        raise RestoreRefused(f"invalid tenant slug {slug!r}: lower-case letters, digits and _, starting with a "
                             "letter, at most 40") from None
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
        ceiling = _tenant_id_ceiling()
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
    return plan


# --- Loading --------------------------------------------------------------------------------

def _canonical(conn) -> None:
    for key, value in CANONICAL_SESSION.items():
        conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(key), sql.Literal(value)))


def _stage_spec(spec: TableSpec) -> TableSpec:
    return TableSpec(f"restore_{spec.name}"[:63], spec.columns, spec.pk)


def _copy_in(conn, tar, entry: dict, relation: sql.Composable, spec: TableSpec, cap: ExpansionCap | None = None
             ) -> int:
    """Stream one member's COPY data into `relation`; the member's SHA-256 is checked again,
    its expanded size is capped while it streams (archive.ExpansionCap)."""
    gz, raw = open_table_stream(tar, entry["member"], cap)
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        relation, sql.SQL(", ").join(map(sql.Identifier, spec.columns)))
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            while True:
                try:
                    chunk = gz.read(CHUNK)
                except (EOFError, OSError) as exc:
                    raise ArchiveError(f"archive is truncated or damaged in {entry['member']} ({exc})") from None
                if not chunk:
                    break
                copy.write(chunk)
        rows = copied_rows(cur)
    raw.drain()
    if raw.hexdigest() != entry["sha256"]:
        raise ArchiveError(f"checksum mismatch in {entry['member']} while loading; the archive changed")
    return rows


def unique_keys(conn, place: Place, table: str) -> list[tuple[str, ...]]:
    """Column tuples of the table's unique indexes that do not include tenant_id."""
    rows = conn.execute("""
        SELECT array_agg(a.attname::text ORDER BY k.ord)
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
         WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indpred IS NULL
           AND i.indexprs IS NULL
         GROUP BY i.indexrelid""", (place.schema, table)).fetchall()
    return sorted({tuple(cols) for (cols,) in rows if "tenant_id" not in cols})


def find_collisions(conn, place: Place, tables: list[tuple[TableSpec, dict]], tenant_id: int) -> dict[str, int]:
    """{"table.col[+col]": rows of OTHER tenants in the place holding a key of a staged row}."""
    found = {}
    for spec, _ in tables:
        stage = _stage_spec(spec)
        for cols in unique_keys(conn, place, spec.name):
            if not set(cols) <= set(spec.columns):
                continue
            on = sql.SQL(" AND ").join(sql.SQL("s.{c} = k.{c}").format(c=sql.Identifier(c)) for c in cols)
            n = conn.execute(sql.SQL("SELECT count(*) FROM {k} k JOIN {t} s ON {on} "
                                     "WHERE s.tenant_id IS DISTINCT FROM %s").format(
                k=STAGING.table(stage.name), t=place.table(spec.name), on=on), (tenant_id,)).fetchone()[0]
            if n:
                found[f"{spec.name}.{'+'.join(cols)}"] = int(n)
    return found


def load(conn, place: Place, tar, tables: list[tuple[TableSpec, dict]], *, archive_tenant_id: int,
         tenant_id: int, replace: bool, staged: bool, check_collisions: bool, dedicated: bool,
         sequences_floor: dict | None = None, on_table=None, algorithm: str = HASH64) -> dict:
    """Write the archive's rows for `tenant_id` into `place` through `conn`, which is in a
    transaction this function never commits. Raises on any problem (the caller rolls back)."""
    _canonical(conn)
    conn.execute("SET CONSTRAINTS ALL DEFERRED")
    check_columns(conn, place, tables)
    everything = tenant_tables()
    present = {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p')", (place.schema,)).fetchall()}
    replaced = 0
    for spec in reversed(everything):  # children first
        if spec.name not in present:
            continue
        if replace:
            replaced += conn.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = %s").format(
                place.table(spec.name)), (tenant_id,)).rowcount
        elif conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE tenant_id = %s)").format(
                place.table(spec.name)), (tenant_id,)).fetchone()[0]:
            raise RestoreConflict(f"{spec.name} already holds rows of tenant id {tenant_id} in {place}; "
                                  "restore with replace (--replace, API: replace=true) to replace them")

    expected: dict[str, tuple[int, str]] = {}
    per_table: dict[str, dict] = {}
    cap = ExpansionCap()
    for spec, entry in tables:
        if staged:
            stage = _stage_spec(spec)
            conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                sql.Identifier(stage.name), place.table(spec.name)))
            rows = _copy_in(conn, tar, entry, STAGING.table(stage.name), spec, cap)
            fp = fingerprint(conn, STAGING, stage, archive_tenant_id, algorithm=algorithm)
            if (fp.rows, fp.checksum) != (entry["rows"], entry["checksum"]):
                raise ArchiveError(f"{spec.name}: the archive's rows do not match its manifest "
                                   f"({fp.rows} rows, checksum {fp.checksum}; the manifest says {entry['rows']} "
                                   f"rows, {entry['checksum']}); nothing was restored")
            if tenant_id != archive_tenant_id:
                conn.execute(sql.SQL("UPDATE {} SET tenant_id = %s").format(STAGING.table(stage.name)), (tenant_id,))
                fp = fingerprint(conn, STAGING, stage, tenant_id, algorithm=algorithm)
            expected[spec.name] = (fp.rows, fp.checksum)
        else:
            if tenant_id != archive_tenant_id:
                raise ValueError("a tenant id rewrite needs staging")
            rows = _copy_in(conn, tar, entry, place.table(spec.name), spec, cap)
            expected[spec.name] = (entry["rows"], entry["checksum"])
        if rows != entry["rows"]:
            raise ArchiveError(f"{spec.name}: {rows} rows in the archive, the manifest says {entry['rows']}")
        per_table[spec.name] = {"rows": rows}
        if on_table and not staged:
            on_table(spec.name, rows)

    if staged:
        if check_collisions:
            collisions = find_collisions(conn, place, tables, tenant_id)
            if collisions:
                listed = ", ".join(f"{k} ({v} rows)" for k, v in collisions.items())
                raise RestoreConflict(f"keys of the archive collide with other tenants' rows in {place}: {listed}; "
                                      "nothing was restored", {"collisions": collisions})
        for spec, entry in tables:
            cols = sql.SQL(", ").join(map(sql.Identifier, spec.columns))
            conn.execute(sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {s}").format(
                t=place.table(spec.name), c=cols, s=STAGING.table(_stage_spec(spec).name)))
            if on_table:
                on_table(spec.name, per_table[spec.name]["rows"])

    try:
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # foreign keys checked before we verify
    except psycopg.errors.IntegrityError as exc:
        raise RestoreFailed(f"restored rows break a constraint: {exc.diag.message_primary}; nothing was restored"
                            ) from None
    refuse_bad_references(conn, place, tenant_id, [spec for spec, _ in tables])
    mismatches = []
    for spec, entry in tables:
        fp = fingerprint(conn, place, spec, tenant_id, algorithm=algorithm)
        ok = (fp.rows, fp.checksum) == expected[spec.name]
        per_table[spec.name].update(checksum=fp.checksum, ok=ok)
        if dedicated:
            foreign = foreign_rows(conn, place, spec, tenant_id)
            per_table[spec.name]["foreign_rows"] = foreign
            ok = ok and not foreign
        if not ok:
            mismatches.append(spec.name)
    if mismatches:
        raise ArchiveError(f"rows restored into {', '.join(mismatches)} do not match the archive's checksums "
                           "(the manifest was changed, or the archive is damaged); nothing was restored")
    floor = checked_sequence_floor(conn, place, [spec for spec, _ in tables], tenant_id, sequences_floor or {})
    sequences = set_sequences(conn, place, [spec for spec, _ in tables], floor)
    return {"tables": per_table, "replaced_rows": replaced, "sequences": sequences,
            "rows": sum(t["rows"] for t in per_table.values())}


def refuse_bad_references(conn, place: Place, tenant_id: int, tables: list[TableSpec]) -> None:
    """ArchiveError (before commit) when a restored row points at another tenant's row (or at
    a row that does not exist, where no constraint caught it): one line, the first one found."""
    bad = find_bad_references(conn, place, tenant_id, tables)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ArchiveError(f"restored rows of tenant id {tenant_id}: {bad[0].describe()}{more}; "
                           "nothing was restored")


# --- Sequences -------------------------------------------------------------------------------
# The manifest's sequence positions are a hint (its digest is trivial to recompute), checked
# against the data: a position is used up to the highest key actually restored plus
# TENANT_RESTORE_SEQUENCE_MARGIN (default 1000: ids the source handed out to rows deleted
# since; a gap that size costs nothing). set_sequences never moves a sequence backwards. A
# restored key in the upper half of its sequence's range is refused: a sequence set there
# (in the shared tables: every tenant's) would soon run out, and no real table gets there.

def sequence_margin() -> int:
    return max(0, int(getattr(settings, "TENANT_RESTORE_SEQUENCE_MARGIN", 1000)))


def checked_sequence_floor(conn, place: Place, tables: list[TableSpec], tenant_id: int,
                           positions: dict) -> dict[str, int]:
    """table -> the floor set_sequences may use: the manifest's position, at most the highest
    restored key + the margin. ArchiveError for a restored key past half its sequence's range."""
    margin = sequence_margin()
    floor = {}
    for spec in tables:
        row = conn.execute(sql.SQL(
            "SELECT (SELECT max({pk}) FROM {t} WHERE tenant_id = %s), "
            "(SELECT p.seqmax FROM pg_sequence p WHERE p.seqrelid = "
            "pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), %s)::regclass)").format(
            pk=sql.Identifier(spec.pk), t=place.table(spec.name)),
            (tenant_id, place.schema, spec.name, spec.pk)).fetchone()
        if row[1] is None:
            continue  # no sequence: nothing to set
        loaded, seq_max = int(row[0] or 0), int(row[1])
        if loaded > seq_max // 2:
            raise ArchiveError(f"{spec.name}.{spec.pk}: restored key {loaded} is past half the range of its "
                               f"sequence (max {seq_max}); refusing to set the sequence there (every insert "
                               "would soon fail); nothing was restored")
        hint = positions.get(spec.name)
        if isinstance(hint, int) and not isinstance(hint, bool):
            floor[spec.name] = max(0, min(hint, loaded + margin))
    return floor


# --- The whole restore ----------------------------------------------------------------------

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


def _tenant_id_ceiling() -> int:
    """The highest tenant id a restore may keep: the tenant sequence's position (or the
    highest id) plus TENANT_RESTORE_SEQUENCE_MARGIN."""
    from tenancy.models import Tenant

    default_connection.ensure_connection()
    highest, position = default_connection.connection.execute(sql.SQL(
        "SELECT (SELECT coalesce(max(id), 0) FROM {t}), "
        "pg_sequence_last_value(pg_get_serial_sequence(%s, 'id')::regclass)").format(
        t=sql.Identifier("public", Tenant._meta.db_table)), (f"public.{Tenant._meta.db_table}",)).fetchone()
    highest, position = int(highest), int(position or 0)
    return max(highest, position) + sequence_margin()


def _allocate_tenant_id() -> int:
    from tenancy.models import Tenant

    with default_connection.cursor() as cur:
        cur.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [f"public.{Tenant._meta.db_table}"])
        return int(cur.fetchone()[0])


def _create_tenant(plan: Plan, placement: str):
    from tenancy.models import Domain, Status, Tenant

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


def _tenant_sequence(conn) -> None:
    from tenancy.models import Tenant

    set_sequences(conn, shared_place(), [TableSpec(Tenant._meta.db_table, ("id",), "id")])


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
        except (psycopg.Error, DjangoDatabaseError) as exc:
            cause = exc.__cause__ if isinstance(exc, DjangoDatabaseError) else exc
            message = getattr(getattr(cause, "diag", None), "message_primary", None) or type(exc).__name__
            raise RestoreFailed(f"restore failed and was rolled back: {message}") from None
    return wrapper


@_wrap_db_errors
def _restore_default(plan: Plan, path, tables, on_table) -> dict:
    """Shared tables or a schema of the shared database: data and tenant row in ONE transaction."""
    from tenancy.models import Placement, Tenant

    created_schema = False
    place = shared_place() if plan.into == Placement.SHARED else schema_place(plan.schema)
    try:
        if plan.into == Placement.SCHEMA and not provision.schema_exists(plan.schema):
            created_schema = True
            provision.ensure_schema(plan.schema)
        if plan.tenant_id is None:
            plan.tenant_id = _allocate_tenant_id()
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
                _tenant_sequence(conn)
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
    from tenancy.models import DatabaseCredential, Placement, Tenant

    server, database = plan.server, plan.database
    role = provision.role_name(database)
    fresh = plan.tenant is None or plan.switch_placement
    password = None
    try:
        if plan.tenant_id is None:
            plan.tenant_id = _allocate_tenant_id()
        if fresh:
            password = provision.new_password()
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
                    _tenant_sequence(default_connection.connection)
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
        if fresh:
            provision.drop_database(server, database, role)
        raise
