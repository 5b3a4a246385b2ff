"""Tenant archives: one file holding a tenant's rows and a manifest that describes them.

The file is a tar archive:
- `data/<table>.copy.gz`: the table's rows for that tenant in PostgreSQL's binary COPY
  format, gzip-compressed, streamed block by block (never a whole table in memory);
- `manifest.json` (last member): format version, tenant, tables in foreign-key order with
  columns and types, row counts, per-table checksums, source server version and the app's
  migration state, creation time, and the SHA-256 of every data member.

Everything is read in one REPEATABLE READ snapshot, so counts, checksums and data agree.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

from django.utils import timezone
from psycopg import sql

from migration_jobs.engine.copy import _copied_rows as copied_rows
from migration_jobs.engine.places import Place
from migration_jobs.engine.tables import TableSpec

FORMAT_VERSION = 1
CHUNK = 1 << 20


def column_types(conn, place: Place, table: TableSpec) -> list[dict]:
    rows = conn.execute("""
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped""",
                        (place.schema, table.name)).fetchall()
    by_name = {name: (kind, nullable) for name, kind, nullable in rows}
    return [{"name": c, "type": by_name[c][0], "nullable": by_name[c][1]} for c in table.columns]


def migration_state(conn, place: Place) -> dict[str, str]:
    """Latest applied migration per tenant app where the tenant lives."""
    from django.conf import settings

    labels = [a.rsplit(".", 1)[-1] for a in settings.TENANT_APPS]
    rows = conn.execute(sql.SQL("SELECT app, max(name) FROM {} WHERE app = ANY(%s) GROUP BY app").format(
        place.table("django_migrations")), (labels,)).fetchall()
    return dict(rows)


def write_archive(place: Place, tenant, tables: list[TableSpec], path: Path, *, on_table=None) -> dict:
    """Export the tenant's rows from `place` into `path` (written atomically). Returns the manifest."""
    from migration_jobs.engine.verify import fingerprint

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".partial")
    manifest = {"format": "tenant-archive", "format_version": FORMAT_VERSION,
                "tenant": {"id": tenant.pk, "slug": tenant.slug, "name": tenant.name},
                "source": {"placement": place.kind, "label": str(place)},
                "created_at": timezone.now().isoformat(), "tables": []}
    with place.connect() as conn, tarfile.open(tmp_path, "w") as tar:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        manifest["source"]["server_version"] = conn.execute("SHOW server_version").fetchone()[0]
        manifest["migrations"] = migration_state(conn, place)
        for table in tables:
            rows, member = _add_table(conn, tar, place, table, tenant.pk)
            fp = fingerprint(conn, place, table, tenant.pk)
            if fp.rows != rows:
                raise RuntimeError(f"{table.name}: exported {rows} rows but counted {fp.rows}")
            manifest["tables"].append({"name": table.name, "columns": column_types(conn, place, table),
                                       "rows": fp.rows, "checksum": fp.checksum, **member})
            if on_table:
                on_table(table.name, fp.rows)
        conn.rollback()
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        info.mtime = int(timezone.now().timestamp())
        tar.addfile(info, io.BytesIO(data))
    os.replace(tmp_path, path)
    return manifest


def _add_table(conn, tar: tarfile.TarFile, place: Place, table: TableSpec, tenant_id: int):
    columns = sql.SQL(", ").join(map(sql.Identifier, table.columns))
    query = sql.SQL("COPY (SELECT {cols} FROM {tbl} WHERE tenant_id = {tid} ORDER BY {pk}) TO STDOUT (FORMAT binary)"
                    ).format(cols=columns, tbl=place.table(table.name), tid=sql.Literal(tenant_id),
                             pk=sql.Identifier(table.pk))
    digest = hashlib.sha256()
    with tempfile.TemporaryFile() as spool:
        with gzip.GzipFile(fileobj=spool, mode="wb", compresslevel=3, mtime=0) as gz:
            with conn.cursor() as cur:
                with cur.copy(query) as copy:
                    for block in copy:
                        gz.write(block)
                rows = copied_rows(cur)
        size = spool.tell()
        spool.seek(0)
        while chunk := spool.read(CHUNK):
            digest.update(chunk)
        spool.seek(0)
        info = tarfile.TarInfo(f"data/{table.name}.copy.gz")
        info.size = size
        info.mtime = int(timezone.now().timestamp())
        tar.addfile(info, spool)
    return rows, {"member": info.name, "sha256": digest.hexdigest(), "compressed_bytes": size}


def read_manifest(path: Path) -> dict:
    with tarfile.open(path, "r") as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise ValueError("archive has no manifest.json")
        return json.load(member)
