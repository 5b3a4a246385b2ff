"""The load: demo tenants and their rows in one transaction, with the shop tables locked and
their foreign keys (and, on a fresh or demo-only database, their indexes) deferred to the end.

The deferral is the engine's (engine.deferral): `table_objects` lists what a table can do
without, `restore_secondary` re-creates it (indexes, UNIQUE constraints, then foreign keys);
PostgreSQL still checks every foreign key and unique constraint when they are re-added.
Sequences are set past the new ids by engine.sequences.set_sequences. Primary keys stay.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from django.db import connections, transaction
from django.db.models import JSONField, Q
from psycopg import sql

from migration_jobs.engine.deferral import restore_secondary, table_objects
from migration_jobs.engine.places import shared_place
from migration_jobs.engine.sequences import set_sequences
from migration_jobs.engine.tables import TableSpec
from tenancy.models import Domain, Tenant, tenant_host

from .rows import Progress, seed_tenant
from .tables import raw_connection, shop_models, shop_specs, shop_tables
from .tenants import DEMO_MARKER, SeedError, TenantSeed, check_resettable, demo_tenants, plan
from .tenants import reset as reset_tenants


@dataclass
class SeedResult:
    seed: int
    tenants: list[TenantSeed]
    seconds: float
    reset_tenants: list[str] = field(default_factory=list)  # slugs deleted by reset
    bulk_load: bool = False  # secondary indexes and foreign keys were rebuilt after the load
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase

    @property
    def total_rows(self) -> int:
        return sum(t.total_rows for t in self.tenants)

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else float("inf")

    @property
    def largest(self) -> TenantSeed:
        return max(self.tenants, key=lambda t: t.total_rows)


def deferred_objects(conn: psycopg.Connection, indexes: bool) -> list[dict]:
    """What a load defers (engine.deferral's objects of the shop tables): their foreign keys,
    and if `indexes` also their secondary indexes and UNIQUE constraints."""
    objects = table_objects(conn, shared_place(), shop_tables())
    return [obj for obj in objects if indexes or obj.get("contype") == "f"]


def drop_deferred(conn: psycopg.Connection, objects: list[dict]) -> None:
    """Drop the objects, foreign keys first. engine.deferral.drop_secondary refuses the shared
    tables on purpose (they are live for every tenant); here they are locked ACCESS EXCLUSIVE
    by this transaction, which re-creates every object before it ends."""
    place = shared_place()

    def order(obj):  # foreign keys, then UNIQUE constraints (their indexes go with them), indexes
        return {"f": 0, None: 2}.get(obj.get("contype"), 1)

    for obj in sorted(objects, key=order):
        if obj["kind"] == "index":
            statement = sql.SQL("DROP INDEX {}").format(sql.Identifier(place.schema, obj["name"]))
        else:
            statement = sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                place.table(obj["table"]), sql.Identifier(obj["name"]))
        conn.execute(statement)


def set_shop_sequences(conn: psycopg.Connection, *extra_tables: str) -> None:
    """Every shop table's id sequence (and those of `extra_tables`) past its max id."""
    specs = [TableSpec(name, ("id",), "id") for name in extra_tables] + shop_specs()
    set_sequences(conn, shared_place(), specs)


def analyze_statement() -> sql.Composable:
    """A quick ANALYZE of the shop tables so that the first queries after the seed plan well: run
    with a small statistics target (set by seed(), about 3,000 sampled rows a table instead of
    30,000) and without the JSON columns (statistics of jsonb sort every sampled value).

    Every table is named with an explicit column list on purpose: PostgreSQL then keeps the
    tables' change counters, so autovacuum still runs a full ANALYZE of them soon after."""
    targets = [sql.SQL("{} ({})").format(
        sql.Identifier(model._meta.db_table),
        sql.SQL(", ").join(sql.Identifier(f.column) for f in model._meta.concrete_fields
                           if not isinstance(f, JSONField)))
        for model in shop_models()]
    return sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(targets))


def use_bulk_load(cur, tables: list[str], planned_rows: int, replaced_tenants: list[int]) -> bool:
    """Rebuilding indexes (instead of maintaining them row by row) pays while the rows that stay
    (those of tenants other than the ones replaced) are fewer than about twice the rows added."""
    regs = [sql.Identifier(t).as_string(cur.connection) for t in tables]
    cur.execute("SELECT coalesce(sum(greatest(reltuples, 0)), 0) FROM pg_class "
                "WHERE oid = ANY(%s::text[]::regclass[])", [regs])
    if cur.fetchone()[0] <= 2 * planned_rows:  # statistics, cheap: a fresh or demo-only database
        return True
    others = sql.SQL(" + ").join(
        sql.SQL("(SELECT count(*) FROM {} WHERE tenant_id <> ALL(%(ids)s))").format(sql.Identifier(t))
        for t in tables)
    cur.execute(sql.SQL("SELECT {}").format(others), {"ids": replaced_tenants})
    return cur.fetchone()[0] <= 2 * planned_rows




@contextmanager
def _load_transaction(using: str):
    """A transaction on `using`, in the public schema, with the load's session settings:
    yields (the psycopg connection, a cursor)."""
    connection = connections[using]
    with transaction.atomic(using=using):
        connection.set_schema_to_public()
        with connection.cursor():  # makes django-tenants set the search_path
            pass
        pg = raw_connection(connection)
        with pg.cursor() as cur:
            for setting in ("synchronous_commit = off", "work_mem = '64MB'", "maintenance_work_mem = '256MB'",
                            "jit = off"):
                cur.execute(sql.SQL("SET LOCAL ") + sql.SQL(setting))
            yield pg, cur


def _next_ids(cur, tables: list[str]) -> dict[str, int]:
    """table -> the first id after its max id (ids are assigned from there, in blocks)."""
    next_id = {}
    for table in tables:
        cur.execute(sql.SQL("SELECT coalesce(max(id), 0) + 1 FROM {}").format(sql.Identifier(table)))
        next_id[table] = cur.fetchone()[0]
    return next_id


def _refuse_clashes(existing, planned) -> None:
    """SeedError when a planned slug, schema name or domain belongs to a tenant not made here."""
    existing_slugs = {t.slug for t in existing}
    clash = Tenant.objects.filter(
        Q(slug__in=[slug for slug, _, _ in planned])
        | Q(schema_name__in=[f"{settings.TENANT_SCHEMA_PREFIX}{slug}" for slug, _, _ in planned])) \
        .exclude(slug__in=existing_slugs).first()
    if clash is not None:
        raise SeedError(f"tenant {clash.slug} (schema name {clash.schema_name}) already exists and was "
                        "not made by seed_demo; delete or rename it first")
    taken = Domain.objects.filter(domain__in=[tenant_host(slug) for slug, _, _ in planned]) \
        .exclude(tenant__in=existing).select_related("tenant").first()
    if taken is not None:
        raise SeedError(f"domain {taken.domain} already belongs to tenant {taken.tenant.slug}, "
                        "which was not made by seed_demo; delete or change it first")


def fill_tenant(tenant, rows: int, seed: int, *, using: str = "default") -> dict[str, int]:
    """About `rows` generated shop rows for an existing tenant, in one transaction (a savepoint
    inside the caller's), indexes and foreign keys kept. Returns rows by table."""
    tables = shop_tables()
    with _load_transaction(using) as (pg, cur):
        # Ids are assigned after each table's max id: no one may take ids meanwhile.
        cur.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in tables)))
        result = TenantSeed(slug=tenant.slug, name=tenant.name, tenant_id=tenant.pk, target_rows=rows)
        seed_tenant(cur, 0, result, seed, _next_ids(cur, tables), None)
        set_shop_sequences(pg)
    return dict(result.rows)


def seed(tenants: int = 20, largest: int = 200_000, seed: int = 42, *, reset: bool = False,
         progress: Progress | None = None, using: str = "default") -> SeedResult:
    """Create `tenants` demo tenants in shared placement with their shop rows, in one transaction.

    Refuses (SeedError) when demo tenants exist, unless `reset`, which first deletes them and
    their rows (only when all are still in shared placement). Returns per-tenant row counts.

    The shop tables are locked meanwhile (ACCESS EXCLUSIVE). Their foreign keys are dropped and
    re-added at the end, in the same transaction, and when the tables hold few other rows (a
    fresh or demo-only database) so are their secondary indexes and unique constraints.
    """
    planned = plan(tenants, largest)
    tables = shop_tables()
    tenant_table = Tenant._meta.db_table
    started = time.monotonic()
    phases = {}
    clock = [started]

    def lap(name):
        now = time.monotonic()
        phases[name] = phases.get(name, 0.0) + now - clock[0]
        clock[0] = now

    with _load_transaction(using) as (pg, cur):
        existing = list(demo_tenants().select_for_update())
        if existing and not reset:
            names = ", ".join(t.slug for t in existing[:5]) + (" ..." if len(existing) > 5 else "")
            raise SeedError(f"{len(existing)} demo tenant(s) already exist ({names}); "
                            "run with --reset to delete them and seed again")
        check_resettable(existing)
        _refuse_clashes(existing, planned)

        # No one may take ids from the sequences while ids are assigned here, and foreign keys
        # (maybe indexes) are dropped until the end: the shop tables are locked meanwhile.
        try:
            cur.execute("SET LOCAL lock_timeout = '60s'")
            cur.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(tenant_table)))
            cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in tables)))
            cur.execute("SET LOCAL lock_timeout = 0")
        except psycopg.errors.LockNotAvailable as exc:
            raise SeedError("the shop tables stayed in use by other sessions for 60 s; try again later") from exc
        lap("lock wait")
        bulk = use_bulk_load(cur, tables, sum(target for _, _, target in planned), [t.id for t in existing])
        deferred = deferred_objects(pg, indexes=bulk)
        drop_deferred(pg, deferred)
        lap("prepare")
        reset_slugs = reset_tenants(cur, existing) if existing else []
        lap("reset")

        cur.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(sql.Identifier(tenant_table)))
        next_tenant_id = cur.fetchone()[0] + 1
        next_id = _next_ids(cur, tables)

        results = []
        for rank, (slug, name, target) in enumerate(planned):
            tenant = Tenant(id=next_tenant_id + rank, slug=slug, name=name, placement="shared",
                            status="active", settings={DEMO_MARKER: {"seed": seed, "rank": rank}})
            tenant.save(force_insert=True)
            Domain.objects.create(domain=tenant_host(slug), tenant=tenant, is_primary=True)
            results.append(TenantSeed(slug=slug, name=name, tenant_id=tenant.id, target_rows=target))
        lap("tenants")
        for rank, result in enumerate(results):
            seed_tenant(cur, rank, result, seed, next_id, progress)
        lap("rows")
        if progress is not None:
            progress("", "rebuilding indexes and foreign keys" if bulk else "checking foreign keys", 0)
        foreign_keys = [obj for obj in deferred if obj.get("contype") == "f"]
        for objects, phase in (([o for o in deferred if o not in foreign_keys], "indexes"),
                               (foreign_keys, "foreign keys")):
            if objects:
                restore_secondary(pg, shared_place(), objects)
                lap(phase)
        set_shop_sequences(pg, tenant_table)
        if progress is not None:
            progress("", "analyzing", 0)
        cur.execute("SET LOCAL default_statistics_target = 10")
        cur.execute(analyze_statement())
        cur.execute("RESET default_statistics_target")
        lap("analyze")
    # Deferred foreign keys (if any) are checked at commit, which is part of the time.
    lap("commit")
    return SeedResult(seed=seed, tenants=results, seconds=time.monotonic() - started, reset_tenants=reset_slugs,
                      bulk_load=bulk, phases=phases)
