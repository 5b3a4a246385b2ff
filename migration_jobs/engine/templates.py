"""Templates: a move's target tables are made once per migration state, then cloned.

Replaying every Django migration per move cost seconds (10-24 s under load). Instead:

- **Databases**: each server keeps a template database at the current migration state,
  `<TENANT_DATABASE_PREFIX>_template_<key>`, made by the same `migrate` as a tenant database,
  with PUBLIC locked out (no CONNECT, no rights on `public`, the listing catalogs hidden) and
  ALLOW_CONNECTIONS false. A tenant database is `CREATE DATABASE ... TEMPLATE` of it.
- **Schemas**: the shared database keeps a template schema `<TENANT_SCHEMA_PREFIX>_template_<key>`
  made by migrate_schemas (PostgreSQL has no CREATE SCHEMA ... TEMPLATE). A tenant schema is
  cloned from it in one transaction: each table `LIKE ... INCLUDING ALL EXCLUDING INDEXES`
  (columns, defaults, identity with a sequence of its own, checks, comments), its rows
  (django_migrations), its sequences' state, then the primary/unique keys and indexes under
  their own names and the foreign keys, from pg_get_constraintdef/pg_get_indexdef. A template
  holding anything that this does not copy exactly (a view, a trigger, a serial default that
  names the template's sequence, ...) is refused: the caller migrates as before.

`<key>` hashes the migration graph (every migration's name and file), the tenant apps and
Django's version: a new migration makes a new template, and whoever builds it drops the stale
ones (PostgreSQL makes a DROP wait for a CREATE DATABASE copying from it). Builds take a
server-wide advisory lock, build under `<name>_building` (dropped first: a crashed build) and
rename when done, so the final name only ever holds a complete template.

Names start with the tenant prefix and then `_`: a tenant slug starts with a letter, so no
tenant's database or schema can have them, and the tenancy models never list them (capacity
counts tenants and runs, leftovers look at tenants' databases only).
"""
from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import django
import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connection as default_connection
from django.db import transaction
from django.db.migrations.loader import MigrationLoader
from psycopg import sql

from migration_jobs.engine.server_admin import admin_connection, hide_catalogs, migrate_database
from tenancy.routing import tenant_app_labels
from tenancy.shared_db import shared_conninfo

logger = logging.getLogger(__name__)

TEMPLATE_MARK = "_template_"
BUILDING_SUFFIX = "_building"
TEMPLATE_LOCK = 74_214  # pg_advisory_lock(int, int): 0 a server's database template, 1 the schema template
# CREATE DATABASE ... STRATEGY (PostgreSQL 15+). file_copy checkpoints twice per database;
# wal_log writes the small template to the WAL and was faster here (see the README).
CLONE_STRATEGY = "wal_log"


# --- The migration state ---------------------------------------------------------------------

@dataclass(frozen=True)
class MigrationState:
    key: str                        # 12 hex characters
    leaves: tuple[tuple[str, str], ...]  # (app, name) that `migrate` would apply last


@lru_cache(maxsize=1)
def migration_state() -> MigrationState:
    """From the migration files on disk (no database), once per process."""
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    digest = hashlib.sha256(f"django {django.__version__}; tenant apps {sorted(tenant_app_labels())}".encode())
    for app, name in sorted(graph.nodes):
        module = sys.modules.get(type(graph.nodes[app, name]).__module__)
        path = getattr(module, "__file__", None)
        content = Path(path).read_bytes() if path and Path(path).is_file() else b""
        digest.update(f"\n{app}.{name} ".encode() + hashlib.sha256(content).digest())
    return MigrationState(digest.hexdigest()[:12], tuple(sorted(graph.leaf_nodes())))


def template_prefix(tenant_prefix: str) -> str:
    return f"{tenant_prefix}{TEMPLATE_MARK}"


def template_name(tenant_prefix: str) -> str:
    return f"{template_prefix(tenant_prefix)}{migration_state().key}"


_PLACE_TABLES = """
SELECT to_regclass(format('%%I.django_migrations', %(schema)s::text)) IS NOT NULL,
       (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s::text AND c.relkind IN ('r', 'p'))"""


def is_current(execute, schema: str) -> bool:
    """Whether `schema` (of the database `execute(query, args) -> rows` runs in) records every
    leaf migration in its django_migrations, i.e. `migrate` would do nothing there."""
    if not execute(_PLACE_TABLES, {"schema": schema})[0][0]:
        return False
    leaves = migration_state().leaves
    rows = execute(sql.SQL("SELECT count(*) FROM {} WHERE (app, name) IN (SELECT * FROM unnest(%(apps)s::text[], "
                           "%(names)s::text[]))").format(sql.Identifier(schema, "django_migrations")),
                   {"apps": [a for a, _ in leaves], "names": [n for _, n in leaves]})
    return rows[0][0] == len(leaves)


def has_tables(execute, schema: str) -> bool:
    return execute(_PLACE_TABLES, {"schema": schema})[0][1] > 0


# --- Databases -------------------------------------------------------------------------------

def database_template(server, conn) -> str:
    """The server's template database at the current migration state, built if missing
    (`conn`: an admin connection to the server's maintenance database)."""
    name = template_name(settings.TENANT_DATABASE_PREFIX)
    if _database_exists(conn, name):
        return name
    conn.execute("SELECT pg_advisory_lock(%s, 0)", (TEMPLATE_LOCK,))
    try:
        if not _database_exists(conn, name):  # another builder may have finished meanwhile
            _build_database_template(server, conn, name)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, 0)", (TEMPLATE_LOCK,))
    return name


def _database_exists(conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _build_database_template(server, conn, name: str) -> None:
    building = f"{name}{BUILDING_SUFFIX}"
    # Under the lock nobody else builds: any other template or build is stale or crashed.
    for (other,) in conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s",
                                 (template_prefix(settings.TENANT_DATABASE_PREFIX), name)).fetchall():
        force = sql.SQL(" WITH (FORCE)") if other.endswith(BUILDING_SUFFIX) else sql.SQL("")
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(other), force))
    db = sql.Identifier(building)
    conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(db))
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
    migrate_database(server, building)
    with admin_connection(server, building) as inside:  # what every tenant database gets, cloned
        inside.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        if inside.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            hide_catalogs(inside.execute, lambda query, args: inside.execute(query, args).fetchone()[0])
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(db))
    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(db, sql.Identifier(name)))
    logger.info("built template database %s on server %s", name, server.name)


def create_database_from_template(server, conn, database: str) -> bool:
    """CREATE DATABASE `database` as a copy of the server's template (`conn`: an admin
    connection to the server). False (nothing made) when the template cannot be had: the
    caller creates an empty database and migrates it."""
    try:
        template = database_template(server, conn)
        strategy = sql.SQL(f" STRATEGY {CLONE_STRATEGY}") if conn.info.server_version >= 150000 else sql.SQL("")
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
            sql.Identifier(database), sql.Identifier(template), strategy))
        return True
    except Exception as exc:  # noqa: BLE001 - a failed build, a template dropped by a newer version, ...
        # ... the move goes on the way it always did.
        logger.warning("database %s made without a template (%s: %s)", database, type(exc).__name__, exc)
        return False


def drop_database_templates(server) -> list[str]:
    """Drop every template database of the server (the next move builds one again)."""
    with admin_connection(server) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, 0)", (TEMPLATE_LOCK,))
        try:
            names = [n for (n,) in conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                                                (template_prefix(settings.TENANT_DATABASE_PREFIX),)).fetchall()]
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, 0)", (TEMPLATE_LOCK,))
    return names


# --- Schemas ---------------------------------------------------------------------------------

def _schema_lock():
    """The schema template's build lock: for the caller's transaction when it is in one (its
    DDL commits with it), else a session lock on a connection of its own (migrate_schemas
    closes Django's connection)."""
    if default_connection.in_atomic_block:
        with default_connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, 1)", [TEMPLATE_LOCK])
        return None
    conn = psycopg.connect(**shared_conninfo(), autocommit=True, application_name="tenant-template")
    conn.execute("SELECT pg_advisory_lock(%s, 1)", (TEMPLATE_LOCK,))
    return conn  # closing it releases the lock


def _schema_exists(name: str) -> bool:
    with default_connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [name])
        return cursor.fetchone() is not None


def schema_template() -> str:
    """The template schema at the current migration state, built if missing."""
    name = template_name(settings.TENANT_SCHEMA_PREFIX)
    if _schema_exists(name):
        return name
    lock = _schema_lock()
    try:
        if not _schema_exists(name):
            _build_schema_template(name)
    finally:
        if lock is not None:
            lock.close()
    return name


def _build_schema_template(name: str) -> None:
    building = f"{name}{BUILDING_SUFFIX}"
    default_connection.set_schema_to_public()
    with default_connection.cursor() as cursor:
        cursor.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s) AND nspname <> %s",
                       [template_prefix(settings.TENANT_SCHEMA_PREFIX), name])
        for (other,) in cursor.fetchall():  # stale, or a crashed build
            cursor.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other)).as_string(
                cursor.connection))
        cursor.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(building)).as_string(cursor.connection))
    call_command("migrate_schemas", tenant=True, schema_name=building, interactive=False, verbosity=0)
    default_connection.set_schema_to_public()
    with default_connection.cursor() as cursor:
        cursor.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
            sql.Identifier(building), sql.Identifier(name)).as_string(cursor.connection))
    logger.info("built template schema %s", name)


# One query: every statement of the clone (with search_path = the template, definitions name
# the template's own tables unqualified), and the reasons a clone would not be exact.
_CLONE_PLAN = """
WITH tbl AS (
    SELECT c.oid, c.relname FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(ns)s) AND c.relkind = 'r'
)
SELECT 'refuse', 0, format('%%s %%s of kind %%s', 'relation', c.relname, c.relkind), NULL::text[], NULL::text
  FROM pg_class c
 WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(ns)s) AND c.relkind NOT IN ('r', 'i', 'S')
UNION ALL
SELECT 'refuse', 0, 'sequence ' || s.relname || ' is not an identity column''s', NULL::text[], NULL::text
  FROM pg_class s
 WHERE s.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(ns)s) AND s.relkind = 'S'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = s.oid
                      AND d.deptype = 'i' AND d.refobjid IN (SELECT oid FROM tbl))
UNION ALL
SELECT 'refuse', 0, 'table ' || t.relname || ' has ' || why, NULL::text[], NULL::text
  FROM tbl t JOIN pg_class c ON c.oid = t.oid,
       LATERAL (VALUES
         (CASE WHEN c.relrowsecurity OR c.relforcerowsecurity THEN 'row security' END),
         (CASE WHEN c.reloptions IS NOT NULL THEN 'storage parameters' END),
         (CASE WHEN c.relacl IS NOT NULL THEN 'grants' END),
         (CASE WHEN c.relreplident NOT IN ('d') THEN 'a replica identity' END),
         (CASE WHEN EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = t.oid AND NOT g.tgisinternal) THEN 'triggers' END),
         (CASE WHEN EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = t.oid) THEN 'rules' END),
         (CASE WHEN EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = t.oid) THEN 'policies' END),
         (CASE WHEN EXISTS (SELECT 1 FROM pg_inherits i WHERE t.oid IN (i.inhrelid, i.inhparent)) THEN 'inheritance' END),
         (CASE WHEN EXISTS (SELECT 1 FROM pg_statistic_ext x WHERE x.stxrelid = t.oid) THEN 'extended statistics' END),
         (CASE WHEN EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.oid AND a.attnum > 0
                              AND NOT a.attisdropped AND a.attacl IS NOT NULL) THEN 'column grants' END),
         (CASE WHEN EXISTS (SELECT 1 FROM pg_attrdef ad WHERE ad.adrelid = t.oid
                              AND pg_get_expr(ad.adbin, ad.adrelid) ~ 'nextval') THEN 'a serial default' END),
         (CASE WHEN EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = t.oid AND k.contype IN ('p', 'u', 'x', 'f')
                              AND obj_description(k.oid, 'pg_constraint') IS NOT NULL) THEN 'constraint comments' END)
       ) AS reasons(why)
 WHERE why IS NOT NULL
UNION ALL
SELECT 'refuse', 0, 'function or type ' || name, NULL::text[], NULL::text
  FROM (SELECT p.proname AS name FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(ns)s)
        UNION ALL
        SELECT y.typname FROM pg_type y WHERE y.typnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(ns)s) AND y.typrelid = 0
           AND y.typcategory <> 'A') AS own
UNION ALL
SELECT 'table', 1, t.relname::text,
       -- the columns to copy rows of, for a table that ever had any (django_migrations)
       CASE WHEN pg_relation_size(t.oid) > 0 THEN
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') END,
       obj_description(t.oid, 'pg_class')
  FROM tbl t
UNION ALL
SELECT 'sequence', 2, t.relname, ARRAY[a.attname::text, pg_sequence_last_value(s.oid)::text], NULL::text
  FROM tbl t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attidentity <> ''
  JOIN pg_class s ON s.oid = pg_get_serial_sequence(format('%%I.%%I', %(ns)s, t.relname), a.attname)::regclass
 WHERE pg_sequence_last_value(s.oid) IS NOT NULL  -- used: the clone's goes on from the same value
UNION ALL
SELECT 'key', 3, t.relname, ARRAY[k.conname::text, pg_get_constraintdef(k.oid)], obj_description(k.conindid, 'pg_class')
  FROM tbl t JOIN pg_constraint k ON k.conrelid = t.oid AND k.contype IN ('p', 'u', 'x')
UNION ALL
SELECT 'index', 4, t.relname, ARRAY[i.relname::text, replace(pg_get_indexdef(x.indexrelid), on_template, on_table),
                                     quote_ident(%(ns)s) || '.'], obj_description(x.indexrelid, 'pg_class')
  FROM tbl t JOIN pg_index x ON x.indrelid = t.oid JOIN pg_class i ON i.oid = x.indexrelid,
       -- pg_get_indexdef names the table with its schema, whatever the search_path
       LATERAL (SELECT format(' ON %%I.%%I USING ', %(ns)s, t.relname) AS on_template,
                       format(' ON %%I USING ', t.relname) AS on_table) AS names
 WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid AND k.conrelid = t.oid)
UNION ALL
SELECT 'foreign key', 5, t.relname, ARRAY[k.conname::text, pg_get_constraintdef(k.oid)], NULL::text
  FROM tbl t JOIN pg_constraint k ON k.conrelid = t.oid AND k.contype = 'f'
ORDER BY 2, 3, 4
"""


class NotClonable(Exception):
    pass


def clone_statements(cursor, template: str, schema: str) -> list[sql.Composable]:
    """The statements that make `schema`'s tables a copy of `template`'s (run them with
    search_path = `schema`). NotClonable when the copy would not be exact."""
    cursor.execute(sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(template)).as_string(cursor.connection))
    cursor.execute(_CLONE_PLAN, {"ns": template})
    plan = cursor.fetchall()
    refused = [detail for kind, _, detail, _, _ in plan if kind == "refuse"]
    if refused:
        raise NotClonable("; ".join(refused))
    statements: list[sql.Composable] = []
    for kind, _, table, items, comment in plan:
        new = sql.Identifier(schema, table)
        if kind == "table":
            statements.append(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)").format(
                new, sql.Identifier(template, table)))
            if items:
                columns = sql.SQL(", ").join(map(sql.Identifier, items))
                statements.append(sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
                    new, columns, columns, sql.Identifier(template, table)))
            if comment is not None:
                statements.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(new, sql.Literal(comment)))
        elif kind == "sequence":
            column, last_value = items
            statements.append(sql.SQL("SELECT setval(pg_get_serial_sequence(format('%I.%I', {}, {}), {}), {})").format(
                sql.Literal(schema), sql.Literal(table), sql.Literal(column), sql.Literal(int(last_value))))
        elif kind == "key":
            name, definition = items
            statements.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                new, sql.Identifier(name), sql.SQL(definition)))
        elif kind == "index":
            name, definition, template_qualifier = items
            if template_qualifier in definition:
                raise NotClonable(f"index {name}: {definition}")
            statements.append(sql.SQL(definition))  # "CREATE INDEX name ON table USING ...": made in `schema`
        elif kind == "foreign key":
            name, definition = items
            statements.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                new, sql.Identifier(name), sql.SQL(definition)))
        if kind in ("key", "index") and comment is not None:
            statements.append(sql.SQL("COMMENT ON INDEX {} IS {}").format(
                sql.Identifier(schema, items[0]), sql.Literal(comment)))
    return statements


def clone_schema(schema: str) -> bool:
    """Make `schema`'s tables (it exists, empty) a copy of the template schema's, in one
    transaction. False (nothing made) when no template can be had or it cannot be copied
    exactly: the caller migrates the schema instead."""
    try:
        template = schema_template()
        with transaction.atomic(), default_connection.cursor() as cursor:
            # SET LOCAL outlives a released savepoint: the caller's search_path is put back.
            cursor.execute("SELECT current_setting('search_path')")
            search_path = cursor.fetchone()[0]
            statements = clone_statements(cursor, template, schema)
            script = sql.SQL("; ").join([sql.SQL("SET LOCAL search_path = {}").format(sql.Identifier(schema)),
                                         *statements,
                                         sql.SQL("SELECT set_config('search_path', {}, true)").format(
                                             sql.Literal(search_path))])
            cursor.execute(script.as_string(cursor.connection))  # one round trip
        return True
    except Exception as exc:  # noqa: BLE001 - a failed build, a template it cannot copy: migrations instead
        logger.warning("schema %s made by migrations, not from the template (%s: %s)", schema,
                       type(exc).__name__, exc)
        return False


def drop_schema_templates() -> list[str]:
    """Drop every template schema (the next move builds one again)."""
    lock = _schema_lock()
    try:
        with default_connection.cursor() as cursor:
            cursor.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
                           [template_prefix(settings.TENANT_SCHEMA_PREFIX)])
            names = [n for (n,) in cursor.fetchall()]
            for name in names:
                cursor.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)).as_string(
                    cursor.connection))
    finally:
        if lock is not None:
            lock.close()
    return names
