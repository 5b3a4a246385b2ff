"""A *place* is where a tenant's tables are: the shared tables (public schema of the shared
database), a dedicated schema in it, or a dedicated database. Engine functions take places
and open their own psycopg connections, so they run the same from a task, a command or a
test. Connections to a dedicated database are made as the server's admin user (the copy
writes tables the tenant role may not own)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import psycopg
from psycopg import sql

from tenancy.shared_db import shared_conninfo

from . import roundtrips

# Session settings that make text output (and so checksums) the same on every server.
CANONICAL_SESSION = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}


@dataclass(frozen=True)
class Place:
    kind: str                 # "shared" | "schema" | "database"
    schema: str               # schema holding the tenant tables
    conninfo: dict = field(repr=False, compare=False)  # psycopg keywords; may hold a password
    label: str = ""           # human-readable, never holds a secret
    session: tuple = ()       # extra (setting, value) pairs for every connection, see gentle()

    def connect(self, *, autocommit: bool = False, application_name: str = "tenant-move",
                repeatable_read: bool = False, read_only: bool = False) -> psycopg.Connection:
        """A new connection. With `repeatable_read` every transaction on it sees one snapshot.
        (Never send BEGIN yourself on a non-autocommit connection: psycopg has already begun
        one, and the server would ignore the isolation level with a mere warning.)"""
        options = " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in (*CANONICAL_SESSION.items(), *self.session))
        conn = roundtrips.connect(**self.conninfo, autocommit=autocommit, application_name=application_name,
                               options=options)
        if repeatable_read:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        if read_only:
            conn.read_only = True
        return conn

    def gentle(self) -> "Place":
        """The same place, for work that shares the server with live traffic (online moves):
        no parallel query or index build workers, so the engine's sessions take one core
        each and leave the rest to the application."""
        return replace(self, session=(("max_parallel_workers_per_gather", "0"),
                                      ("max_parallel_maintenance_workers", "0")))

    def table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    @property
    def same_database_as_shared(self) -> bool:
        return self.kind in ("shared", "schema")

    def __str__(self):
        return self.label or f"{self.kind}:{self.schema}"


def shared_place() -> Place:
    info = shared_conninfo()
    return Place("shared", "public", info, f"shared database {info['dbname']}")


def schema_place(schema: str) -> Place:
    info = shared_conninfo()
    return Place("schema", schema, info, f"schema {schema} of {info['dbname']}")


def database_place(server, database: str) -> Place:
    info = server.conninfo(database)
    return Place("database", "public", info, f"database {database} on server {server.name}")


def place_of(tenant) -> Place:
    """Where the tenant's live rows are, from its placement."""
    if tenant.placement == "schema":
        return schema_place(tenant.schema_name)
    if tenant.placement == "database":
        credential = tenant.credential
        return database_place(credential.server, credential.database)
    return shared_place()
