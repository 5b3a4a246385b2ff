"""Tenant archives, writing: one plain tar file (streamable to a pipe or an HTTP response)
holding a tenant's rows and a manifest describing them.

Members: `data/<table>.copy.gz` per tenant table in foreign-key order (the tenant's rows in
binary COPY format, gzip level 3, spooled to a temporary file because a tar header needs the
size), then `manifest.sha256` (catches a damaged manifest) and `manifest.json` (format
version, tenant, tables with columns and types, row counts, verify.fingerprint checksums,
sequence positions, server version, migration state, SHA-256 and size of every member).
Everything is read in one REPEATABLE READ snapshot, so counts, checksums and data agree.
Files are written 0600 in folders made 0700. Reading and validation: engine/archive_read.py.
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

from django.conf import settings
from django.utils import timezone
from psycopg import sql

from migration_jobs.engine.copy import copied_rows
from migration_jobs.engine.places import Place
from migration_jobs.engine.sequences import sequence_positions
from migration_jobs.engine.tables import TableSpec
from migration_jobs.engine.verify import fingerprint

FORMAT = "tenant-archive"
# Version 2: per-table checksums are verify.HASH64; version 1 archives carry LEGACY_MD5 ones.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
CHUNK = 1 << 20
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
# The 11-byte signature every binary COPY stream starts with.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


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
    labels = [a.rsplit(".", 1)[-1] for a in settings.TENANT_APPS]
    rows = conn.execute(sql.SQL("SELECT app, max(name) FROM {} WHERE app = ANY(%s) GROUP BY app").format(
        place.table("django_migrations")), (labels,)).fetchall()
    return dict(rows)


class HashingWriter:
    """A write-only file object that forwards to `raw` and keeps the SHA-256 and size."""

    def __init__(self, raw):
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        self.raw.write(data)
        return len(data)

    def flush(self) -> None:
        if hasattr(self.raw, "flush"):
            self.raw.flush()

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def write_archive(place: Place, tenant, tables: list[TableSpec], path: Path, *, on_table=None) -> dict:
    """Export the tenant's rows from `place` into `path` (written atomically, mode 0600; a
    folder made for it, and the backup folder, are 0700). Returns the manifest."""
    path = Path(path)
    private_dir(path.parent, tighten=_is_backup_dir(path.parent))
    tmp_path = path.with_name(path.name + ".partial")
    try:
        with open_private(tmp_path) as out:
            manifest = write_archive_to(out, place, tenant, tables, on_table=on_table)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return manifest


# --- File modes ----------------------------------------------------------------------------
# An archive holds every row of a tenant: readable by its owner only. Files are created 0600
# (never widened by the umask, an existing file of the same name is replaced, not reused);
# folders the project makes for archives are 0700, and the backup folder (settings.BACKUP_DIR,
# the project's own) is tightened to 0700 when it exists. A folder the operator chose for
# `export_tenant -o` is left as it is: the 0600 file is unreadable to others in any folder.

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def _is_backup_dir(folder: Path) -> bool:
    backup = getattr(settings, "BACKUP_DIR", None)
    return backup is not None and Path(folder).absolute() == Path(backup).absolute()


def private_dir(path, *, tighten: bool = True) -> Path:
    """`path` as a folder: made 0700 with any missing parents (each 0700); an existing one is
    set to 0700 when `tighten` (only for the project's own folders). Returns the path."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            pass
        else:
            os.chmod(folder, PRIVATE_DIR_MODE)  # the umask can only narrow mkdir's mode; be exact
    if tighten and not missing and path.is_dir():
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def open_private(path, mode: str = "wb"):
    """`path` opened for writing, as a new file of mode 0600 (a file or symlink of that name is
    removed first, so neither an old file's mode nor a link's target is ever written)."""
    if mode not in ("wb", "w"):
        raise ValueError("open_private writes new files only ('wb' or 'w')")
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def write_archive_to(fileobj, place: Place, tenant, tables: list[TableSpec], *, on_table=None) -> dict:
    """Stream the archive into `fileobj` (anything with write(); need not be seekable).
    `on_table(name, rows)` is called after each table. Returns the manifest."""

    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "tenant": {"id": tenant.pk, "slug": tenant.slug, "name": tenant.name,
                           "placement": tenant.placement, "status": tenant.status,
                           "settings": tenant.settings or {}},
                "source": {"placement": place.kind, "label": str(place)},
                "created_at": timezone.now().isoformat(), "tables": []}
    with place.connect(repeatable_read=True, read_only=True) as conn, \
            tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        manifest["source"]["server_version"] = conn.execute("SHOW server_version").fetchone()[0]
        manifest["source"]["server_version_num"] = int(conn.execute("SHOW server_version_num").fetchone()[0])
        manifest["migrations"] = migration_state(conn, place)
        manifest["sequences"] = sequence_positions(conn, place, tables)
        for table in tables:
            rows, member = _add_table(conn, tar, place, table, tenant.pk)
            fp = fingerprint(conn, place, table, tenant.pk)
            if fp.rows != rows:
                raise RuntimeError(f"{table.name}: exported {rows} rows but counted {fp.rows}")
            manifest["tables"].append({"name": table.name, "pk": table.pk, "parents": list(table.parents),
                                       "columns": column_types(conn, place, table),
                                       "rows": fp.rows, "checksum": fp.checksum, **member})
            if on_table:
                on_table(table.name, fp.rows)
        conn.rollback()
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        mtime = int(timezone.now().timestamp())
        _add_bytes(tar, MANIFEST_DIGEST, f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}\n".encode(), mtime)
        _add_bytes(tar, MANIFEST, data, mtime)
    return manifest


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


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
