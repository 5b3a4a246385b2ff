"""Loading a tenant into a fresh target the fast way: secondary indexes and constraints off
during the copy, back on after it, then statistics.

0. `check_same_columns`: both sides at the same migration, or nothing is copied.
1. `objects_to_defer`: the target's secondary indexes and constraints, as DDL (none for a
   small tenant: MIGRATION_DEFER_INDEXES_FROM_ROWS). The caller records them before anything
   is dropped, so a crash in between can be repaired.
2. `load`: drop them (idempotent), copy every table not done yet in parallel (inside the
   server with copy_in_server.copy_tenant_in_server when source and target are schemas of
   one database, through this process with copy.copy_tenant otherwise), rebuild them in
   parallel with generous maintenance memory, ANALYZE (fresh tables have no statistics: the
   tenant's first queries there would plan blind)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from psycopg import sql

from migration_jobs.engine import deferral
from migration_jobs.engine.archive import column_types
from migration_jobs.engine.copy import copy_tenant
from migration_jobs.engine.copy_in_server import copy_tenant_in_server, same_database
from migration_jobs.engine.places import Place
from migration_jobs.engine.tables import TableSpec
from migration_jobs.exceptions import StepFailed


def check_same_columns(source: Place, target: Place, tables: list[TableSpec]) -> None:
    with source.connect() as s, target.connect() as t:
        for table in tables:
            if column_types(s, source, table) != column_types(t, target, table):
                raise StepFailed(f"{table.name}: columns differ between {source} and {target}; "
                                 "run `manage.py migrate` so both are at the same migration")


def objects_to_defer(source: Place, target: Place, tenant_id: int, tables: list[TableSpec]) -> list:
    """What `load` should drop during the copy: the target's secondary objects, or nothing for a
    tenant with fewer rows than MIGRATION_DEFER_INDEXES_FROM_ROWS (it is then copied in foreign-key
    order, one table after another, its foreign keys checking every row as it is written)."""
    if _fewer_rows_than(source, tenant_id, tables, settings.MIGRATION_DEFER_INDEXES_FROM_ROWS):
        return []
    return secondary_objects(target, tables)


def _fewer_rows_than(place: Place, tenant_id: int, tables: list[TableSpec], limit: int) -> bool:
    """Whether the tenant has fewer than `limit` rows in the place's tables, counted exactly but
    never past `limit` per table (statistics can miss a tenant loaded since the last ANALYZE)."""
    if limit <= 0 or not tables:
        return False
    query = sql.SQL("SELECT {} ").format(sql.SQL(" + ").join(
        sql.SQL("(SELECT count(*) FROM (SELECT FROM {} WHERE {} = %s LIMIT {}) AS s)").format(
            place.table(t.name), sql.Identifier("tenant_id"), sql.Literal(limit)) for t in tables))
    with place.connect() as conn:
        return conn.execute(query, [tenant_id] * len(tables)).fetchone()[0] < limit


def secondary_objects(target: Place, tables: list[TableSpec]) -> list:
    with target.connect() as conn:
        return [obj for table in tables for obj in deferral.secondary_objects(conn, target, table.name)]


def load(source: Place, target: Place, tenant_id: int, tables: list[TableSpec], deferred: list, *,
         skip: frozenset = frozenset(), workers: int = 1, maintenance_work_mem: str | None = None,
         on_table_done=None, checkpoint=lambda name: None, in_server: bool | None = None,
         on_worker_end=None) -> None:
    """`on_table_done(name, result)` after each table (from the copying thread), `on_worker_end()`
    in each copying thread as it ends;
    `checkpoint(name)` is a fault-injection hook (tests). `in_server`: copy with INSERT ...
    SELECT inside the server (only possible within one database); None: whenever possible,
    unless the setting MIGRATION_COPY_IN_SERVER is False (to compare with the pipe)."""
    with target.connect(autocommit=True) as conn, conn.transaction():
        deferral.drop_secondary(conn, target, deferred)  # one commit (one WAL flush) for all of them
    if uses_in_server_copy(source, target, in_server):
        copy_tenant_in_server(source, target, tenant_id, tables, skip=skip, workers=workers,
                              on_table_done=on_table_done, on_worker_end=on_worker_end)
    else:
        copy_tenant(source, target, tenant_id, tables, skip=skip, workers=workers, on_table_done=on_table_done,
                    on_worker_end=on_worker_end)
    checkpoint("copy:before-indexes")
    with target.connect(autocommit=True) as conn:
        deferral.restore_secondary(conn, target, deferred, workers=workers, maintenance_work_mem=maintenance_work_mem)
    analyze(target, tables, workers=workers)


def analyze(place: Place, tables: list[TableSpec], *, workers: int = 1) -> None:
    """ANALYZE the tables, spread over `workers` sessions (one ANALYZE of many tables does
    them one after the other, on one core)."""
    names = [t.name for t in tables]
    workers = max(1, min(workers, len(names)))

    def run(group):
        if group:
            with place.connect(autocommit=True, application_name="tenant-move analyze") as conn:
                conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(place.table(n) for n in group)))

    groups = [names[i::workers] for i in range(workers)]
    if workers == 1:
        run(groups[0])
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tenant-analyze") as pool:
        for future in [pool.submit(run, g) for g in groups]:
            future.result()


def uses_in_server_copy(source: Place, target: Place, in_server: bool | None = None) -> bool:
    """Whether load copies inside the server: wanted (`in_server`, by default the setting
    MIGRATION_COPY_IN_SERVER, True) and possible (both places in one database)."""
    if in_server is None:
        in_server = settings.MIGRATION_COPY_IN_SERVER
    return bool(in_server) and same_database(source, target)
