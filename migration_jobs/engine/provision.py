"""Create and drop the places a tenant can move to.

- A *schema* in the shared database, with the tenant apps' tables made by django-tenants'
  migrate_schemas (so later `migrate` runs keep working there).
- A *database* on a DatabaseServer, owned by the server's admin user, with a per-tenant
  LOGIN role that can connect to that database only and do DML only. Tables are made by
  Django's own migrate on that database; default privileges grant the role access to
  whatever later migrations create.

Every function is idempotent: a step retried after a crash finds its own work and goes on.
Identifiers are always composed with psycopg.sql; a password is sent to the server only as
a SCRAM verifier, never as plain text (it cannot end up in a server log).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from contextlib import contextmanager

import psycopg
from django.core.management import call_command
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import connection as default_connection
from django.db import connections
from psycopg import sql

TENANT_ROLE_SUFFIX = "_rw"


# --- Secrets -----------------------------------------------------------------------------

def new_password() -> str:
    return secrets.token_urlsafe(32)


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / 7677)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def role_name(database: str) -> str:
    return f"{database[:63 - len(TENANT_ROLE_SUFFIX)]}{TENANT_ROLE_SUFFIX}"


# --- Connections ---------------------------------------------------------------------------

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


# --- Schema placement ----------------------------------------------------------------------

def schema_exists(schema: str) -> bool:
    with default_connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        return cursor.fetchone() is not None


def create_schema(schema: str) -> None:
    """The schema, empty (its tables come with `ensure_schema`)."""
    with default_connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)).as_string(
            default_connection.connection))


def ensure_schema(schema: str, verbosity: int = 0) -> None:
    """The schema with every tenant-app table, exactly as the migrations say."""
    create_schema(schema)
    call_command("migrate_schemas", tenant=True, schema_name=schema, interactive=False, verbosity=verbosity)
    default_connection.set_schema_to_public()


def drop_schema(schema: str) -> None:
    if schema in ("public", "pg_catalog", "information_schema") or schema.startswith("pg_"):
        raise ValueError(f"refusing to drop schema {schema}")
    with default_connection.cursor() as cursor:
        cursor.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)).as_string(
            default_connection.connection))


# --- Database placement --------------------------------------------------------------------

def database_exists(server, database: str) -> bool:
    with admin_connection(server) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


def ensure_role(server, role: str, password: str) -> None:
    """A LOGIN role with this password (created, or its password reset when it exists)."""
    verifier = sql.Literal(scram_verifier(password))
    with admin_connection(server) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        statement = "ALTER ROLE {} WITH LOGIN PASSWORD {}" if exists else \
            "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}"
        conn.execute(sql.SQL(statement).format(sql.Identifier(role), verifier))


def ensure_database(server, database: str, role: str) -> None:
    """The database, reachable by `role` only (besides the admin), with no tables yet."""
    with admin_connection(server) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(
                sql.Identifier(database)))
        db, rl = sql.Identifier(database), sql.Identifier(role)
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db, rl))
    with admin_connection(server, database) as conn:
        admin = sql.Identifier(server.conninfo()["user"])
        rl = sql.Identifier(role)
        conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(rl))
        # Whatever the admin creates later (migrations) is usable by the tenant role too.
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                             "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}").format(admin, rl))
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                             "GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {}").format(admin, rl))


def grant_existing(server, database: str, role: str) -> None:
    """Grant DML on tables that exist already (made before the default privileges were set)."""
    with admin_connection(server, database) as conn:
        rl = sql.Identifier(role)
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(rl))
        conn.execute(sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {}").format(rl))


def migrate_database(server, database: str, verbosity: int = 0) -> None:
    """Apply the project's migrations to a dedicated database (tenant apps only, see the router)."""
    with django_alias(admin_alias_settings(server, database), f"tenant_admin_{database}") as alias:
        call_command(DjangoMigrate(), database=alias, interactive=False, verbosity=verbosity)


def provision_database(server, database: str, role: str, password: str) -> None:
    ensure_role(server, role, password)
    ensure_database(server, database, role)
    migrate_database(server, database)
    grant_existing(server, database, role)


def drop_database(server, database: str, role: str | None = None) -> None:
    """Drop the database (closing its sessions) and the tenant role. Idempotent."""
    with admin_connection(server) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        if role:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def drop_place(placement: str, *, schema: str = "", server=None, database: str = "") -> str:
    """Drop a dedicated schema, or a dedicated database with its tenant role; says what went.
    (The tenant's stored credential for that database is the caller's to delete.)"""
    if placement == "schema":
        drop_schema(schema)
        return f"schema {schema} dropped"
    drop_database(server, database, role_name(database))
    return f"database {database} and its role dropped"
