"""Primary-key sequences of a place: read their position, set them past the copied rows.

Sequences are never carried by COPY (nor by logical replication). After a copy the target's
sequences are set past max(pk) in the target AND past the source sequence's position
(`floor`), so ids handed out in the new place never collide with ids the old place has
handed out (or will hand out soon), and a later move back finds no collisions. A sequence is
never moved backwards. Works for serial and identity columns (pg_get_serial_sequence).
"""
from __future__ import annotations

import psycopg
from psycopg import sql

from .places import Place
from .tables import TableSpec


def _sequence_of(conn: psycopg.Connection, place: Place, table: TableSpec):
    """(schema, name, oid) of the sequence owned by the table's pk column, or None."""
    return conn.execute(
        """SELECT n.nspname, c.relname, c.oid
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), %s)::regclass""",
        (place.schema, table.name, table.pk)).fetchone()


def _position(conn: psycopg.Connection, seq) -> int:
    """The last value the sequence handed out (0 when it has handed out none)."""
    schema, name, oid = seq
    last_value, is_called, increment = conn.execute(
        sql.SQL("SELECT s.last_value, s.is_called, p.seqincrement FROM {} s, pg_sequence p "
                "WHERE p.seqrelid = %s").format(sql.Identifier(schema, name)), (oid,)).fetchone()
    return int(last_value if is_called else last_value - increment)


def sequence_positions(conn: psycopg.Connection, place: Place, tables: list[TableSpec]) -> dict[str, int]:
    """table -> last value handed out by its pk sequence (tables without one are left out)."""
    positions = {}
    for table in tables:
        seq = _sequence_of(conn, place, table)
        if seq is not None:
            positions[table.name] = _position(conn, seq)
    return positions


def set_sequences(conn: psycopg.Connection, place: Place, tables: list[TableSpec],
                  floor: dict[str, int] | None = None) -> dict[str, int]:
    """Set every pk sequence so that its next value is past max(pk) of the place's table,
    past floor[table] and past its own position. Returns table -> the value set (the
    sequence's last value: the next id is that + 1). Each table is handled in a transaction
    (a savepoint when `conn` is in one) holding a SHARE lock on the table."""
    floor = floor or {}
    result = {}
    for table in tables:
        seq = _sequence_of(conn, place, table)
        if seq is None:
            continue
        with conn.transaction():
            # Writers of the table (the only users of its pk sequence) wait for the few
            # milliseconds this takes, so a live place (the shared tables, on a move back)
            # never sees its sequence moved under ids being handed out.
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(place.table(table.name)))
            max_pk = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(
                sql.Identifier(table.pk), place.table(table.name))).fetchone()[0] or 0
            value = max(int(max_pk), int(floor.get(table.name) or 0), _position(conn, seq))
            if value >= 1:
                conn.execute("SELECT setval(%s::oid::regclass, %s, true)", (seq[2], value))
            else:
                value = 0  # nothing copied, nothing handed out: the next id is the start
        result[table.name] = value
    return result


def all_positions(conn: psycopg.Connection, place: Place, tables: list[TableSpec]) -> dict[str, int]:
    """The same as sequence_positions, in one query (for the cutover's freeze). Only the tables'
    own sequences are opened: the pg_sequences view reads every sequence of the database, and
    one dropped meanwhile (another move's change log, dropped at its cleanup) failed the
    freeze with "could not open relation with OID"."""
    rows = conn.execute(
        """SELECT name, coalesce(pg_sequence_last_value(seq), 0)
             FROM (SELECT t.name, pg_get_serial_sequence(format('%%I.%%I', %s::text, t.name), t.pk)::regclass AS seq
                     FROM unnest(%s::text[], %s::text[]) AS t(name, pk)) AS found
            WHERE seq IS NOT NULL""",
        (place.schema, [t.name for t in tables], [t.pk for t in tables])).fetchall()
    return {name: int(value) for name, value in rows}
