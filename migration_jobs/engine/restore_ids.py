"""Restore, sequences and tenant ids: what a restore may set the tables' sequences to, and
the tenant id it may keep or allocate.

The manifest's sequence positions are a hint (its digest is trivial to recompute), checked
against the data: a position is used up to the highest restored key plus
TENANT_RESTORE_SEQUENCE_MARGIN (default 1000: ids handed out to rows deleted since).
set_sequences never moves a sequence backwards. A restored key in the upper half of its
sequence's range is refused (a sequence set there would soon run out).
"""
from __future__ import annotations

from django.conf import settings
from django.db import connection as default_connection
from psycopg import sql

from migration_jobs.engine.places import Place, shared_place
from migration_jobs.engine.sequences import set_sequences
from migration_jobs.engine.tables import TableSpec
from migration_jobs.exceptions import ArchiveError
from tenancy.models import Tenant


def sequence_margin() -> int:
    return max(0, int(getattr(settings, "TENANT_RESTORE_SEQUENCE_MARGIN", 1000)))


def checked_sequence_floor(conn, place: Place, tables: list[TableSpec], tenant_id: int,
                           positions: dict) -> dict[str, int]:
    """table -> the floor set_sequences may use: the manifest's position, at most the highest
    restored key + the margin. ArchiveError for a restored key past half its sequence's range."""
    margin = sequence_margin()
    floor = {}
    for spec in tables:
        row = conn.execute(sql.SQL(
            "SELECT (SELECT max({pk}) FROM {t} WHERE tenant_id = %s), "
            "(SELECT p.seqmax FROM pg_sequence p WHERE p.seqrelid = "
            "pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), %s)::regclass)").format(
            pk=sql.Identifier(spec.pk), t=place.table(spec.name)),
            (tenant_id, place.schema, spec.name, spec.pk)).fetchone()
        if row[1] is None:
            continue  # no sequence: nothing to set
        loaded, seq_max = int(row[0] or 0), int(row[1])
        if loaded > seq_max // 2:
            raise ArchiveError(f"{spec.name}.{spec.pk}: restored key {loaded} is past half the range of its "
                               f"sequence (max {seq_max}); refusing to set the sequence there (every insert "
                               "would soon fail); nothing was restored")
        hint = positions.get(spec.name)
        if isinstance(hint, int) and not isinstance(hint, bool):
            floor[spec.name] = max(0, min(hint, loaded + margin))
    return floor


def tenant_id_ceiling() -> int:
    """The highest tenant id a restore may keep: the tenant sequence's position (or the
    highest id) plus TENANT_RESTORE_SEQUENCE_MARGIN."""
    default_connection.ensure_connection()
    highest, position = default_connection.connection.execute(sql.SQL(
        "SELECT (SELECT coalesce(max(id), 0) FROM {t}), "
        "pg_sequence_last_value(pg_get_serial_sequence(%s, 'id')::regclass)").format(
        t=sql.Identifier("public", Tenant._meta.db_table)), (f"public.{Tenant._meta.db_table}",)).fetchone()
    highest, position = int(highest), int(position or 0)
    return max(highest, position) + sequence_margin()


def allocate_tenant_id() -> int:
    with default_connection.cursor() as cur:
        cur.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [f"public.{Tenant._meta.db_table}"])
        return int(cur.fetchone()[0])


def set_tenant_sequence(conn) -> None:
    set_sequences(conn, shared_place(), [TableSpec(Tenant._meta.db_table, ("id",), "id")])
