"""Verify a tenant where it lives now (no move involved): what `verify_tenant`, the admin's
"Verify" action and the verify task report. Per tenant table, from one REPEATABLE READ
snapshot of the place (shared by the connections that read its tables in parallel,
engine.verify.measure_places): the table exists in the place's own schema; the tenant's row
count and checksum (the same as engine.verify.fingerprint); other tenants' rows (must be 0
in a dedicated place); the pk sequence at or past max(pk). A dedicated tenant's legacy rows in the shared tables are
counted for information. The result is plain JSON data: no connection detail, and of an
error only its class.
"""
from __future__ import annotations

import psycopg
from psycopg import sql

from migration_jobs.engine.places import Place, place_of, shared_place
from migration_jobs.engine.references import reference_problems
from migration_jobs.engine.sequences import sequence_positions
from migration_jobs.engine.tables import TableSpec, row_counts, tables_in_place, tenant_tables
from migration_jobs.engine.verify import measure_places


def _snapshot(place: Place, name: str):
    conn = place.connect(autocommit=True, application_name=f"tenant-move {name}")
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    return conn


def _max_pk(conn, place: Place, table: TableSpec) -> int:
    value = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(
        sql.Identifier(table.pk), place.table(table.name))).fetchone()[0]
    return int(value or 0)


def _pk_and_sequences(place: Place, tables: list[TableSpec]):
    """max(pk) and the pk sequence's position of every present table, read on a connection
    of the snapshot the fingerprints came from."""
    def read(snapshots):
        conn = snapshots[0].first
        present = tables_in_place(conn, place, [t.name for t in tables])
        mine = [t for t in tables if t.name in present]
        return {t.name: _max_pk(conn, place, t) for t in mine}, sequence_positions(conn, place, mine)
    return read


def _measure_place(place: Place, tenant_id: int, tables: list[TableSpec], dedicated: bool) -> dict:
    (measured,), (max_ids, positions) = measure_places([(place, dedicated)], tenant_id, tables,
                                                      after=_pk_and_sequences(place, tables),
                                                      application_name="tenant-move verify-in-place")
    out = {}
    for table in tables:
        entry = {"exists": measured[table.name] is not None, "rows": None, "checksum": None, "foreign_rows": None,
                 "max_id": None, "sequence": None, "sequence_ok": None, "problems": []}
        out[table.name] = entry
        if not entry["exists"]:
            entry["problems"].append(f"table missing in {place}")
            continue
        fp, foreign = measured[table.name]
        entry["rows"], entry["checksum"] = fp.rows, fp.checksum
        if dedicated:
            entry["foreign_rows"] = foreign
            if foreign:
                entry["problems"].append(f"{foreign} rows of other tenants")
        # In the shared tables the sequence serves every tenant: compare with the max of all.
        entry["max_id"] = max_ids[table.name]
        position = positions.get(table.name)
        if position is not None:
            entry["sequence"] = position
            entry["sequence_ok"] = position >= entry["max_id"]
            if not entry["sequence_ok"]:
                entry["problems"].append(f"sequence at {position}, behind max id {entry['max_id']}")
    return out


def _legacy_rows(tenant_id: int, tables: list[TableSpec]) -> dict[str, int]:
    """The tenant's rows still in the shared tables (informational for dedicated tenants)."""
    shared = shared_place()
    conn = _snapshot(shared, "verify-legacy")
    try:
        return row_counts(conn, shared, tables, tenant_id, missing_ok=True)
    finally:
        if not conn.closed:
            conn.execute("ROLLBACK")
            conn.close()


def verify_in_place(tenant) -> dict:
    """A report of the tenant's rows where it lives now; `ok` is False when anything is wrong."""
    tables = tenant_tables()
    dedicated = tenant.placement != "shared"
    report = {"tenant": tenant.slug, "tenant_id": tenant.pk, "placement": tenant.placement,
              "status": tenant.status, "place": None, "ok": False, "tables": {}, "problems": [],
              "total_rows": 0}
    try:
        place = place_of(tenant)
    except Exception as exc:  # noqa: BLE001 - e.g. a database tenant without a credential
        report["problems"].append(f"cannot locate the tenant's place: {type(exc).__name__}")
        return report
    report["place"] = str(place)
    try:
        measured = _measure_place(place, tenant.pk, tables, dedicated)
    except psycopg.Error as exc:
        # The class only: a driver message may quote connection details.
        report["problems"].append(f"cannot read {place}: {type(exc).__name__}")
        return report
    for name, entry in measured.items():
        entry["ok"] = not entry["problems"]
        report["problems"].extend(f"{name}: {p}" for p in entry["problems"])
        report["total_rows"] += entry["rows"] or 0
    report["tables"] = measured
    try:
        report["problems"].extend(reference_problems(place, tenant.pk, tables))
    except psycopg.Error as exc:
        report["problems"].append(f"cannot check references in {place}: {type(exc).__name__}")
    if dedicated:
        try:
            legacy = _legacy_rows(tenant.pk, tables)
        except psycopg.Error as exc:
            legacy = None
            report["legacy_error"] = type(exc).__name__
        report["legacy_shared_rows"] = legacy
        report["legacy_shared_total"] = sum(legacy.values()) if legacy else 0
    report["ok"] = bool(measured) and not report["problems"]
    return report


__all__ = ["verify_in_place"]
