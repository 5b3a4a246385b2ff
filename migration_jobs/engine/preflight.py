"""Checks made before a move changes anything. Each check says what it found and, when it
fails, what to fix. A failed check stops the run with nothing changed.

Only checks that decide something, each costing milliseconds: a tenant's rows are never
scanned here (its row counts and size are the planner's estimates; the copy counts exactly)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from django.conf import settings
from psycopg import sql

from migration_jobs.engine.places import Place
from migration_jobs.engine.references import find_bad_references
from migration_jobs.engine.server_load import connection_load
from migration_jobs.engine.sizes import table_stats, tenant_columns
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
    rows_estimated: bool = False  # row_counts come (partly) from statistics

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
            return (f"{len(self.checks)} checks passed; {'~' if self.rows_estimated else ''}{self.total_rows} rows, "
                    f"~{self.estimated_bytes // 1024} KiB")
        return "; ".join(f"{c.name}: {c.detail} -> {c.fix}" for c in self.failures())

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks], "row_counts": self.row_counts,
                "total_rows": self.total_rows, "rows_estimated": self.rows_estimated,
                "estimated_bytes": self.estimated_bytes}


def _tenant_ids_missing(conn, place: Place, tables: list[TableSpec]) -> dict[str, list[int]]:
    """{table: tenant ids with rows but no tenant} (at most 10 each), in one query: a loose
    index scan over each tenant_id index, one probe per distinct tenant, never a full scan."""
    if not tables:
        return {}
    query = sql.SQL(" UNION ALL ").join(sql.SQL("""
        (WITH RECURSIVE ids AS (
            SELECT min(tenant_id) AS v FROM {t}
            UNION ALL
            SELECT (SELECT min(tenant_id) FROM {t} WHERE tenant_id > ids.v) FROM ids WHERE ids.v IS NOT NULL)
        SELECT {n}::text, v FROM ids WHERE v IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM public.tenancy_tenant WHERE id = ids.v))""").format(
        t=place.table(table.name), n=sql.Literal(table.name)) for table in tables)
    missing: dict[str, list[int]] = {}
    for name, tenant_id in conn.execute(query).fetchall():
        if len(missing.setdefault(name, [])) < 10:
            missing[name].append(tenant_id)
    return missing


def _rows_without_tenant(conn, place: Place, tables: list[TableSpec]) -> dict[str, int]:
    """{table: rows whose tenant_id is NULL}, asked only of tables where the column may be NULL
    (a NOT NULL column cannot hold one: the catalog says so in one query)."""
    nullable = [name for (name,) in conn.execute(
        """SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.attname = 'tenant_id' AND NOT a.attnotnull""",
        (place.schema, [t.name for t in tables])).fetchall()]
    if not nullable:
        return {}
    counts = conn.execute(sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {n}::text, count(*) FROM {t} WHERE tenant_id IS NULL").format(
            n=sql.Literal(name), t=place.table(name)) for name in nullable)).fetchall()
    return {name: int(n) for name, n in counts if n}


def estimate_rows(conn, place: Place, tables: list[TableSpec], tenant_id: int) -> tuple[dict[str, int], int, bool]:
    """(rows per table, bytes on disk, estimated?) of the tenant in the place, from the
    planner's statistics (engine/sizes.py: the table's live rows, the tenant's share of them
    from pg_stats of tenant_id in the shared tables). A table without statistics is counted
    exactly. Enough for a progress bar and a size; the copy counts every row exactly."""
    names = [t.name for t in tables]
    stats = table_stats(conn, place.schema, names)
    shared = place.kind == "shared"
    columns = tenant_columns(conn, place.schema, names) if shared else {}
    exact = [n for n in names if n not in stats or stats[n].rows is None or (shared and n not in columns)]
    counted = row_counts(conn, place, exact, tenant_id) if exact else {}
    known = [r[0] for r in conn.execute("SELECT id FROM public.tenancy_tenant").fetchall()] \
        if shared and len(counted) < len(names) else []
    rows, size = {}, 0.0
    for name in names:
        if name in counted:
            rows[name] = counted[name]
        else:
            share = columns[name].fractions(known)[tenant_id] if shared else 1.0
            rows[name] = round(share * stats[name].rows)
        if name in stats:  # heap, TOAST and indexes per row (none known without statistics)
            size += rows[name] * stats[name].bytes_per_row
    return rows, int(size), len(counted) < len(names)


def check_source(conn, place: Place, tenant_id: int, tables: list[TableSpec], report: PreflightReport, *,
                 references: bool = True) -> None:
    """Integrity of the tenant's rows where they are now, and their size (estimated: see
    estimate_rows). `references=False`: cross-tenant and dangling references are not looked
    for here (a scan of every row of the tenant, seconds for a million rows) because the
    copy proves their absence: a move out copies only the tenant's rows and validates the
    target's foreign keys after the load, so a row pointing at another tenant's row, or at
    none, fails the copy (and the run rolls back, nothing changed)."""
    counts, size, estimated = estimate_rows(conn, place, tables, tenant_id)
    report.row_counts.update(counts)
    report.estimated_bytes = size
    report.rows_estimated = estimated
    null_tenant = _rows_without_tenant(conn, place, tables)
    missing_tenants = _tenant_ids_missing(conn, place, tables) if place.kind == "shared" else {}
    cross, dangling = {}, {}
    if references:
        for bad in find_bad_references(conn, place, tenant_id, tables):
            (cross if bad.kind == "cross-tenant" else dangling)[f"{bad.table}.{bad.column}"] = bad.rows
    approx = "~" if estimated else ""
    report.add("tenant rows", True, f"{approx}{sum(counts.values())} rows in {len(tables)} tables"
               + (" (estimated from the planner's statistics; the copy counts them exactly)" if estimated else ""))
    report.add("rows without tenant", not null_tenant, f"{null_tenant or 'none'}",
               "give every row a tenant_id (or delete it) before moving any tenant")
    report.add("rows of deleted tenants", not missing_tenants,
               f"tenant ids with rows but no tenant: {missing_tenants or 'none'}",
               "delete the rows of tenants that no longer exist, or restore those tenants")
    if references:
        report.add("cross-tenant references", not cross, f"{cross or 'none'}",
                   "rows of this tenant point at another tenant's rows; fix those references first")
        report.add("dangling references", not dangling, f"{dangling or 'none'}",
                   "rows of this tenant point at rows that do not exist; fix or delete them first")
    else:
        report.add("references", True, "checked by the copy: the target's foreign keys are validated after "
                   "the load, and the target holds only this tenant's rows")


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
