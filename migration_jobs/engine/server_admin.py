"""What the engine does on a server as its admin, used by provision.py and templates.py (kept
apart so neither imports the other): admin connections, a Django alias for a database while
`migrate` runs on it, the listing catalogs hidden from PUBLIC."""
from __future__ import annotations

from contextlib import contextmanager

import psycopg
from django.core.management import call_command
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import connections
from psycopg import sql

# Catalogs and views that list every database, role or session of the server (tenant names):
# hidden from PUBLIC in tenant databases and in the shared database (superusers only can).
HIDDEN_CATALOGS = (
    "pg_database", "pg_roles", "pg_user", "pg_group", "pg_auth_members", "pg_db_role_setting",
    "pg_shdescription", "pg_stat_activity", "pg_stat_database", "pg_stat_database_conflicts",
    "pg_stat_replication", "pg_replication_slots", "pg_stat_progress_vacuum", "pg_stat_progress_analyze",
    "pg_stat_progress_create_index", "pg_stat_progress_cluster", "pg_stat_progress_copy",
)
# ... and in the shared database, where schema tenants live, the schema names as well.
HIDDEN_SHARED_CATALOGS = HIDDEN_CATALOGS + ("pg_namespace",)
HIDDEN_FUNCTIONS = ("pg_stat_get_activity(integer)",)


@contextmanager
def admin_connection(server, dbname: str | None = None):
    """An autocommit psycopg connection to `server` as its admin user."""
    conn = psycopg.connect(**server.conninfo(dbname), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def django_alias(settings_dict: dict, alias: str):
    """Register a Django connection alias for the block, and remove it after."""
    connections.settings[alias] = settings_dict
    try:
        yield alias
    finally:
        if alias in connections:
            connections[alias].close()
            del connections[alias]
        connections.settings.pop(alias, None)


def admin_alias_settings(server, database: str) -> dict:
    info = server.conninfo(database)
    base = dict(connections.settings["default"])
    base.update({"ENGINE": "django.db.backends.postgresql", "NAME": database, "USER": info["user"],
                 "PASSWORD": info.get("password", ""), "HOST": info["host"], "PORT": str(info["port"]),
                 "OPTIONS": {}, "TEST": {"NAME": database}})
    return base


def hide_catalogs(execute, value, catalogs=HIDDEN_CATALOGS) -> None:
    """REVOKE SELECT on the listing catalogs from PUBLIC in the current database (a superuser's
    connection: `execute` runs one composed statement, `value(query, args)` returns the first
    column of a query's first row). Only what is still granted, found in one query: concurrent
    callers (two moves starting together) rarely update the same catalog row."""
    granted = value(
        "SELECT coalesce(array_agg(name), '{}') FROM ("
        "  SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass('pg_catalog.' || name) IS NOT NULL "
        "     AND has_table_privilege('public', 'pg_catalog.' || name, 'SELECT') "
        "  UNION ALL "  # signatures, told apart by their parenthesis
        "  SELECT sig FROM unnest(%s::text[]) AS sig WHERE has_function_privilege('public', 'pg_catalog.' || sig, "
        "     'EXECUTE')) AS hidden",
        (list(catalogs), list(HIDDEN_FUNCTIONS)))
    for name in granted:
        if name in HIDDEN_FUNCTIONS:
            execute(sql.SQL("REVOKE EXECUTE ON FUNCTION pg_catalog.{} FROM PUBLIC").format(sql.SQL(name)))
        else:
            execute(sql.SQL("REVOKE SELECT ON {} FROM PUBLIC").format(sql.Identifier("pg_catalog", name)))


def migrate_database(server, database: str, verbosity: int = 0) -> None:
    """Apply the project's migrations to a dedicated database (tenant apps only, see the router)."""
    with django_alias(admin_alias_settings(server, database), f"tenant_admin_{database}") as alias:
        call_command(DjangoMigrate(), database=alias, interactive=False, verbosity=verbosity)
