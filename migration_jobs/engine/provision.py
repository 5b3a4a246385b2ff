"""Create and drop the places a tenant can move to.

- A *schema* in the shared database, with the tenant apps' tables cloned from the template
  schema (engine/templates.py; made by django-tenants' migrate_schemas, whose django_migrations
  rows come along, so later `migrate` runs keep working there), and a NOLOGIN role of its
  own (tenancy.backend.roles.schema_role) with DML on that schema's tables only: the
  tenant's queries run under it (SET ROLE, tenancy.backend), so they cannot read the shared
  tables nor another tenant's schema.
- A *database* on a DatabaseServer, owned by the server's admin user, with a per-tenant
  LOGIN role that can connect to that database only and do DML only (no TEMP, no CREATE,
  the catalogs that list databases, roles and sessions hidden). It is a copy of the
  server's template database (engine/templates.py), whose tables Django's own migrate made;
  default privileges grant the role access to whatever later migrations create.

PUBLIC has no CONNECT and no TEMP on any database the project makes, nor on the shared
database when the app's role owns it (or is a superuser), nor on `postgres`/`template1` of
the embedded cluster: a role reaches only what is granted to it.

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

from django.core.management import call_command
from django.db import connection as default_connection
from django.conf import settings
from psycopg import sql

from migration_jobs.engine import templates
from migration_jobs.engine.server_admin import (HIDDEN_CATALOGS, HIDDEN_FUNCTIONS, HIDDEN_SHARED_CATALOGS,  # noqa: F401
                                                admin_alias_settings, admin_connection, django_alias,
                                                hide_catalogs, migrate_database)
from tenancy.backend.roles import schema_role

TENANT_ROLE_SUFFIX = "_rw"
SHARED_PRIVILEGES_LOCK = 74_213  # first key of pg_advisory_lock(int, int): the shared database's grants



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


# --- Privileges ----------------------------------------------------------------------------

def _is_superuser(cursor) -> bool:
    cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    return bool(cursor.fetchone()[0])


@contextmanager
def _one_at_a_time(cursor):
    """Moves starting together (several workers) check and revoke the same privileges: two
    REVOKEs of one catalog row fail the second with "tuple concurrently updated". Serialized
    by an advisory lock: till the end of the caller's transaction, or else of this block."""
    if default_connection.in_atomic_block:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [SHARED_PRIVILEGES_LOCK])
        yield
        return
    cursor.execute("SELECT pg_advisory_lock(%s, 0)", [SHARED_PRIVILEGES_LOCK])
    try:
        yield
    finally:
        cursor.execute("SELECT pg_advisory_unlock(%s, 0)", [SHARED_PRIVILEGES_LOCK])


def lock_down_shared_database() -> None:
    """No CONNECT/TEMP for PUBLIC on the shared database (and `postgres`/`template1` of the
    embedded cluster), no CREATE in its public schema, the listing catalogs hidden.

    Only when the app's role is a superuser or owns the shared database: the owner keeps
    its own privileges, so the app is never locked out. Idempotent."""
    with default_connection.cursor() as cursor, _one_at_a_time(cursor):
        run = lambda statement: cursor.execute(statement.as_string(default_connection.connection))  # noqa: E731

        def value(query, args):
            cursor.execute(query, list(args))
            return cursor.fetchone()[0]

        granted = lambda query, args: bool(value(query, args))  # noqa: E731

        superuser = _is_superuser(cursor)
        cursor.execute("SELECT current_database(), pg_get_userbyid(datdba) = current_user FROM pg_database "
                       "WHERE datname = current_database()")
        database, owner = cursor.fetchone()
        if not (superuser or owner):
            return
        databases = [database]
        if superuser and getattr(settings, "USING_EMBEDDED_PG", False):
            databases += ["postgres", "template1"]
        for name in databases:
            if granted("SELECT has_database_privilege('public', %s, 'CONNECT') "
                       "OR has_database_privilege('public', %s, 'TEMPORARY')", (name, name)):
                run(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
        if granted("SELECT has_schema_privilege('public', 'public', 'CREATE')", ()):
            run(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        if superuser:
            hide_catalogs(run, value, HIDDEN_SHARED_CATALOGS)


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


def ensure_schema_role(schema: str) -> str:
    """The schema tenant's NOLOGIN role: USAGE on its schema and DML on its tables and
    sequences (those there now and those later migrations make), nothing else. The app's
    role can SET ROLE to it. Idempotent; returns its name."""
    role = schema_role(schema)
    rl, sc = sql.Identifier(role), sql.Identifier(schema)
    with default_connection.cursor() as cursor:
        run = lambda statement: cursor.execute(statement.as_string(default_connection.connection))  # noqa: E731
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is None:
            run(sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                        "NOREPLICATION NOBYPASSRLS").format(rl))
        if not _is_superuser(cursor):
            run(sql.SQL("GRANT {} TO CURRENT_USER").format(rl))  # for SET ROLE
        run(sql.SQL("GRANT USAGE ON SCHEMA {sc} TO {rl}; "  # one round trip
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA {sc} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {rl}; "
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA {sc} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {rl}; "
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {sc} TO {rl}; "
                    "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {sc} TO {rl}").format(sc=sc, rl=rl))
    lock_down_shared_database()
    return role


def ensure_schema_roles(schemas) -> None:
    """The roles of schema tenants made before they had one (for `manage.py migrate`)."""
    default_connection.set_schema_to_public()
    for schema in schemas:
        if schema_exists(schema):
            ensure_schema_role(schema)


def drop_schema_role(schema: str) -> None:
    role = schema_role(schema)
    with default_connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is not None:
            for statement in ("DROP OWNED BY {}", "DROP ROLE {}"):  # its grants, then itself
                cursor.execute(sql.SQL(statement).format(sql.Identifier(role)).as_string(
                    default_connection.connection))


def ensure_schema(schema: str, verbosity: int = 0) -> bool:
    """The schema with every tenant-app table, exactly as the migrations say, and its role:
    a new (empty) schema is cloned from the template schema (engine/templates.py), one made by
    an earlier attempt or version, or that the template cannot be cloned into, is migrated.
    Returns whether migrations ran."""
    create_schema(schema)
    default_connection.set_schema_to_public()
    ensure_schema_role(schema)  # default privileges first: the tables below get the grants

    def execute(query, args):
        with default_connection.cursor() as cursor:
            if isinstance(query, sql.Composable):
                query = query.as_string(default_connection.connection)
            cursor.execute(query, args)
            return cursor.fetchall()

    if templates.is_current(execute, schema):
        migrated = False
    elif not templates.has_tables(execute, schema) and templates.clone_schema(schema):
        return False  # made after the default privileges: granted already
    else:
        call_command("migrate_schemas", tenant=True, schema_name=schema, interactive=False, verbosity=verbosity)
        migrated = True
    default_connection.set_schema_to_public()
    ensure_schema_role(schema)  # tables a crashed earlier attempt made before the defaults
    return migrated


def drop_schema(schema: str) -> None:
    if schema in ("public", "pg_catalog", "information_schema") or schema.startswith("pg_"):
        raise ValueError(f"refusing to drop schema {schema}")
    with default_connection.cursor() as cursor:
        cursor.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)).as_string(
            default_connection.connection))
    drop_schema_role(schema)


# --- Database placement --------------------------------------------------------------------

def database_exists(server, database: str) -> bool:
    with admin_connection(server) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


def _ensure_role(conn, role: str, password: str) -> None:
    verifier = sql.Literal(scram_verifier(password))
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    statement = "ALTER ROLE {} WITH LOGIN PASSWORD {}" if exists else \
        "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}"
    conn.execute(sql.SQL(statement).format(sql.Identifier(role), verifier))


def ensure_role(server, role: str, password: str) -> None:
    """A LOGIN role with this password (created, or its password reset when it exists)."""
    with admin_connection(server) as conn:
        _ensure_role(conn, role, password)


def _lock_down_on_server(conn, database: str, role: str) -> None:
    """The database's own privileges (on a connection to any database of its server)."""
    db, rl = sql.Identifier(database), sql.Identifier(role)
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {db} FROM PUBLIC; REVOKE ALL ON DATABASE {db} FROM {rl}; "
                         "GRANT CONNECT ON DATABASE {db} TO {rl}").format(db=db, rl=rl))


def _lock_down_inside(conn, role: str) -> None:
    """Inside the database (a connection to it): its public schema and catalogs."""
    conn.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO {}").format(
        sql.Identifier(role)))
    if conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
        hide_catalogs(conn.execute, lambda query, args: conn.execute(query, args).fetchone()[0])


def lock_down_database(server, database: str, role: str) -> None:
    """`role` may connect to `database` (no TEMP, no CREATE) and use its public schema;
    PUBLIC nothing; the listing catalogs hidden when the admin is a superuser. Idempotent,
    also for databases made before (see grant_existing)."""
    with admin_connection(server) as conn:
        _lock_down_on_server(conn, database, role)
    with admin_connection(server, database) as conn:
        _lock_down_inside(conn, role)


def ensure_database(server, database: str, role: str, password: str | None = None) -> bool:
    """The database, reachable by `role` only (besides the admin): a copy of the server's
    template (engine/templates.py: the tenant tables at the current migration), or, when no
    template can be had, empty (migrate_tables makes its tables). With `password`, the role
    is made (or its password reset) too. Two connections in all. Returns whether the database
    was made now."""
    with admin_connection(server) as conn:
        if password is not None:
            _ensure_role(conn, role, password)
        made = not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if made:
            if not templates.create_database_from_template(server, conn, database):
                conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(
                    sql.Identifier(database)))
        _lock_down_on_server(conn, database, role)
    if server.is_default:
        lock_down_shared_database()  # tenant roles log in to this server: no way into the shared DB
    with admin_connection(server, database) as conn:
        _lock_down_inside(conn, role)
        # Whatever the admin creates later (migrations) is usable by the tenant role too.
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public "
                             "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {rl}; "
                             "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public "
                             "GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {rl}").format(
            admin=sql.Identifier(server.conninfo()["user"]), rl=sql.Identifier(role)))
    return made


def _grant_tables(conn, role: str) -> None:
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {rl}; "
                         "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {rl}").format(
        rl=sql.Identifier(role)))


def grant_existing(server, database: str, role: str) -> None:
    """Grant DML on tables that exist already (made before the default privileges were set),
    and lock the database down as ensure_database does (databases made by older versions
    gave their role TEMP and PUBLIC CONNECT)."""
    lock_down_database(server, database, role)
    with admin_connection(server, database) as conn:
        _grant_tables(conn, role)


def migrate_tables(server, database: str, role: str) -> bool:
    """The tenant tables of a database made by ensure_database, at the current migration, with
    DML granted to `role`. A copy of the template is current already (one connection, a few
    statements); an empty database (made without a template, or by an earlier version) is
    migrated. Returns whether migrations ran."""
    with admin_connection(server, database) as conn:
        current = templates.is_current(lambda query, args: conn.execute(query, args).fetchall(), "public")
        if current:
            _grant_tables(conn, role)
            return False
    migrate_database(server, database)
    grant_existing(server, database, role)
    return True


def provision_database(server, database: str, role: str, password: str) -> None:
    ensure_database(server, database, role, password)
    migrate_tables(server, database, role)


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
