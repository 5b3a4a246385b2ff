"""Checks made before a move changes anything. Each check says what it found and, when it
fails, what to fix. A failed check stops the run with nothing changed."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from django.conf import settings
from psycopg import sql

from migration_jobs.engine.places import Place
from migration_jobs.engine.references import find_bad_references
from migration_jobs.engine.server_load import connection_load
from migration_jobs.engine.tables import TableSpec, row_counts

MIN_SERVER_VERSION = 140000


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class PreflightReport:
    checks: list[Check] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    estimated_bytes: int = 0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def total_rows(self) -> int:
        return sum(self.row_counts.values())

    def add(self, name, ok, detail, fix=""):
        self.checks.append(Check(name, bool(ok), detail, "" if ok else fix))

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        if self.ok:
            return f"{len(self.checks)} checks passed; {self.total_rows} rows, ~{self.estimated_bytes // 1024} KiB"
        return "; ".join(f"{c.name}: {c.detail} -> {c.fix}" for c in self.failures())

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks], "row_counts": self.row_counts,
                "total_rows": self.total_rows, "estimated_bytes": self.estimated_bytes}


def _tenant_ids_missing(conn, place: Place, table: TableSpec) -> list[int]:
    # Loose index scan over the tenant_id index: one probe per distinct tenant, not a full scan.
    query = sql.SQL("""
        WITH RECURSIVE ids AS (
            SELECT min(tenant_id) AS v FROM {t}
            UNION ALL
            SELECT (SELECT min(tenant_id) FROM {t} WHERE tenant_id > ids.v) FROM ids WHERE ids.v IS NOT NULL)
        SELECT v FROM ids WHERE v IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM public.tenancy_tenant WHERE id = ids.v)""").format(t=place.table(table.name))
    return [r[0] for r in conn.execute(query).fetchall()]


def check_source(conn, place: Place, tenant_id: int, tables: list[TableSpec], report: PreflightReport) -> None:
    """Integrity of the tenant's rows where they are now, and their size."""
    names = {t.name for t in tables}
    null_tenant, missing_tenants, cross, dangling = {}, {}, {}, {}
    report.row_counts.update(row_counts(conn, place, tables, tenant_id))
    for table in tables:
        nulls = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id IS NULL").format(
            place.table(table.name))).fetchone()[0]
        if nulls:
            null_tenant[table.name] = nulls
        if place.kind == "shared":
            missing = _tenant_ids_missing(conn, place, table)
            if missing:
                missing_tenants[table.name] = missing[:10]
    for bad in find_bad_references(conn, place, tenant_id, tables):
        (cross if bad.kind == "cross-tenant" else dangling)[f"{bad.table}.{bad.column}"] = bad.rows
    report.add("tenant rows", True, f"{sum(report.row_counts.values())} rows in {len(tables)} tables")
    report.add("rows without tenant", not null_tenant, f"{null_tenant or 'none'}",
               "give every row a tenant_id (or delete it) before moving any tenant")
    report.add("rows of deleted tenants", not missing_tenants,
               f"tenant ids with rows but no tenant: {missing_tenants or 'none'}",
               "delete the rows of tenants that no longer exist, or restore those tenants")
    report.add("cross-tenant references", not cross, f"{cross or 'none'}",
               "rows of this tenant point at another tenant's rows; fix those references first")
    report.add("dangling references", not dangling, f"{dangling or 'none'}",
               "rows of this tenant point at rows that do not exist; fix or delete them first")
    sizes = conn.execute(sql.SQL(
        "SELECT c.relname, CASE WHEN c.reltuples > 0 THEN pg_relation_size(c.oid) / c.reltuples ELSE 0 END "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s)"), (place.schema, list(names))).fetchall()
    width = {name: float(w) for name, w in sizes}
    report.estimated_bytes = int(sum(report.row_counts[t] * width.get(t, 100.0) for t in report.row_counts))


def server_version(conn) -> int:
    return int(conn.execute("SHOW server_version_num").fetchone()[0])


def check_server(conn, label: str, report: PreflightReport, *, need_create_db: bool, connections_needed: int):
    version = server_version(conn)
    report.add(f"{label}: PostgreSQL version", version >= MIN_SERVER_VERSION, f"{version // 10000}.{version % 100}",
               "PostgreSQL 14 or newer is required")
    role = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
                        ).fetchone()
    if need_create_db:
        report.add(f"{label}: privileges", role[0] or (role[1] and role[2]),
                   f"superuser={role[0]} createdb={role[1]} createrole={role[2]}",
                   "the server's admin user needs CREATEDB and CREATEROLE (or superuser)")
    else:
        can_create = conn.execute("SELECT has_database_privilege(current_user, current_database(), 'CREATE')"
                                  ).fetchone()[0]
        report.add(f"{label}: privileges", can_create, f"CREATE on database: {can_create}",
                   "the app's database user needs CREATE on its database to make tenant schemas")
    load = connection_load(conn)
    # A server that receives a tenant database keeps TENANT_SERVER_MIN_FREE_CONNECTIONS spare besides.
    spare = settings.TENANT_SERVER_MIN_FREE_CONNECTIONS if need_create_db else 0
    report.add(f"{label}: connection capacity", load.free >= connections_needed + spare,
               f"{load.used} of {load.max_connections} connections in use ({load.reserved} reserved), this move "
               f"needs {connections_needed}" + (f" and {spare} must stay free" if spare else ""),
               "raise max_connections on that server or free connections (each dedicated tenant also needs "
               "its own pool per app process), or choose another server")


def check_tenant_databases(report: PreflightReport, label: str, *, placed: int, moving: int,
                           limit: int | None) -> None:
    """The server takes one more tenant database: under its max_tenant_databases (None: no
    limit), counting the tenants placed there and the other moves on their way there."""
    held = placed + moving
    report.add(f"{label}: tenant databases", limit is None or held < limit,
               f"{held} tenant databases ({placed} placed, {moving} other moves on the way), limit "
               f"{'none' if limit is None else limit}",
               "raise the server's max_tenant_databases or choose another server")
