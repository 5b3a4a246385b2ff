"""Tenant archives, writing: one plain tar file (streamable to a pipe or an HTTP response)
holding a tenant's rows and a manifest describing them.

Members: `data/<table>.copy.gz` per tenant table in foreign-key order (the tenant's rows in
binary COPY format, in no particular order, gzip level 1, spooled to a temporary file because
a tar header needs the size), then `manifest.sha256` (catches a damaged manifest) and
`manifest.json` (format version, tenant, tables with columns and types, row counts,
verify.fingerprint checksums, sequence positions, server version, migration state, SHA-256
and size of every member). write_archive reads everything in one REPEATABLE READ snapshot, so
counts, checksums and data agree; a move's archive is assembled from its copy's stream
instead (PartWriter, assemble_archive: see below). Files are written 0600 in folders made
0700. Reading and validation: engine/archive_read.py.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import queue
import tarfile
import tempfile
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from psycopg import sql

from migration_jobs.engine.copy import copied_rows
from migration_jobs.engine.places import Place
from migration_jobs.engine.sequences import sequence_positions
from migration_jobs.engine.tables import TableSpec
from migration_jobs.engine.verify import Fingerprint, fingerprint

FORMAT = "tenant-archive"
# Version 2: per-table checksums are verify.HASH64; version 1 archives carry LEGACY_MD5 ones.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
CHUNK = 1 << 20
# gzip level of the data members: 1 compresses a binary COPY stream ~4.8x at ~107 MB/s of one
# core here (level 3: 5.3x at ~88 MB/s; level 6: 6.5x at ~42 MB/s), measured on a 1M-row tenant.
GZIP_LEVEL = 1
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
    with _written_atomically(path) as out:
        return write_archive_to(out, place, tenant, tables, on_table=on_table)


@contextmanager
def _written_atomically(path):
    """The open `<path>.partial`, a new 0600 file (its folder as write_archive says), fsynced
    and renamed to `path` at the end of the block; removed on any error."""
    path = Path(path)
    private_dir(path.parent, tighten=_is_backup_dir(path.parent))
    tmp_path = path.with_name(path.name + ".partial")
    try:
        with open_private(tmp_path) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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

    with place.connect(repeatable_read=True, read_only=True) as conn, \
            tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        manifest = _manifest_head(conn, place, tenant, tables)
        for table in tables:
            rows, member = _add_table(conn, tar, place, table, tenant.pk)
            fp = fingerprint(conn, place, table, tenant.pk)
            if fp.rows != rows:
                raise RuntimeError(f"{table.name}: exported {rows} rows but counted {fp.rows}")
            manifest["tables"].append(_table_entry(conn, place, table, fp, member))
            if on_table:
                on_table(table.name, fp.rows)
        conn.rollback()
        _add_manifest(tar, manifest)
    return manifest


def _manifest_head(conn, place: Place, tenant, tables: list[TableSpec]) -> dict:
    """The manifest's fields but the tables' (read through `conn` from `place`)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "tenant": {"id": tenant.pk, "slug": tenant.slug, "name": tenant.name,
                       "placement": tenant.placement, "status": tenant.status,
                       "settings": tenant.settings or {}},
            "source": {"placement": place.kind, "label": str(place),
                       "server_version": conn.execute("SHOW server_version").fetchone()[0],
                       "server_version_num": int(conn.execute("SHOW server_version_num").fetchone()[0])},
            "created_at": timezone.now().isoformat(),
            "migrations": migration_state(conn, place),
            "sequences": sequence_positions(conn, place, tables),
            "tables": []}


def _table_entry(conn, place: Place, table: TableSpec, fp: Fingerprint, member: dict) -> dict:
    return {"name": table.name, "pk": table.pk, "parents": list(table.parents),
            "columns": column_types(conn, place, table), "rows": fp.rows, "checksum": fp.checksum, **member}


def _add_manifest(tar: tarfile.TarFile, manifest: dict) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    mtime = int(timezone.now().timestamp())
    _add_bytes(tar, MANIFEST_DIGEST, f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}\n".encode(), mtime)
    _add_bytes(tar, MANIFEST, data, mtime)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def _add_table(conn, tar: tarfile.TarFile, place: Place, table: TableSpec, tenant_id: int):
    columns = sql.SQL(", ").join(map(sql.Identifier, table.columns))
    # No ORDER BY: restore loads a member with COPY whatever the order of its rows (and the
    # archive made from a move's copy has them in the copy's order).
    query = sql.SQL("COPY (SELECT {cols} FROM {tbl} WHERE tenant_id = {tid}) TO STDOUT (FORMAT binary)"
                    ).format(cols=columns, tbl=place.table(table.name), tid=sql.Literal(tenant_id))
    digest = hashlib.sha256()
    with tempfile.TemporaryFile() as spool:
        with gzip.GzipFile(fileobj=spool, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
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


# --- An archive made from a move's copy ------------------------------------------------------
# A move reads each table's rows once: the copy's binary COPY stream goes to the target and,
# block by block, to a *part* (the table's future data member) compressed by a thread of its
# own (zlib and hashlib let go of the GIL: the compression runs on the other core). The queue
# between them is bounded, so memory stays flat (a slow disk slows the copy down). A part is
# `<table>.copy.gz` in a private folder beside the archive; it counts only once its table's
# target transaction committed and the caller recorded its SHA-256 and size. The archive is
# then assembled from the parts and a manifest (assemble_archive), without reading the source.

PART_QUEUE_BLOCKS = 4      # blocks (copy.BLOCK_SIZE, 1 MiB) waiting for compression, per table
_DONE = object()


def parts_dir(archive_path) -> Path:
    """The folder of an archive's parts (made 0700 by PartWriter)."""
    path = Path(archive_path)
    return path.with_name(path.name + ".parts")


def part_path(folder, table_name: str) -> Path:
    return Path(folder) / f"{table_name}.copy.gz"


class PartWriter:
    """One table's part, fed block by block with `write` (from the copying thread); `finish`
    completes it and returns {"sha256", "compressed_bytes"}; `abort` removes it. A sink for
    copy.copy_table."""

    def __init__(self, folder, table_name: str, level: int = GZIP_LEVEL, on_finish=None):
        folder = private_dir(folder)
        self._on_finish = on_finish
        self.path = part_path(folder, table_name)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._level = level
        self._queue: queue.Queue = queue.Queue(maxsize=PART_QUEUE_BLOCKS)
        self._error: BaseException | None = None
        self._aborted = False
        self._result: dict | None = None
        self._file = open_private(self._partial)
        self._thread = threading.Thread(target=self._compress, name=f"archive-part {table_name}", daemon=True)
        self._thread.start()

    def write(self, block) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing the archive part {self.path.name} failed: {self._error}") from self._error
        self._queue.put(block)  # waits while PART_QUEUE_BLOCKS blocks are queued

    def _compress(self) -> None:
        out = HashingWriter(self._file)
        deflate = zlib.compressobj(self._level, zlib.DEFLATED, 31)  # 31: a gzip stream
        try:
            while (block := self._queue.get()) is not _DONE:
                if not self._aborted:
                    out.write(deflate.compress(block))
            if not self._aborted:
                out.write(deflate.flush())
                self._file.flush()
                os.fsync(self._file.fileno())
                self._result = {"sha256": out.hexdigest(), "compressed_bytes": out.size}
        except BaseException as exc:  # noqa: BLE001 - reported by write/finish
            self._error = exc
            while self._queue.get() is not _DONE:  # keep the producer from blocking
                pass
        finally:
            self._file.close()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()

    def finish(self) -> dict:
        """Wait for the compression, fsync, and give the part its final name."""
        self._stop()
        if self._error is not None:
            raise RuntimeError(f"writing the archive part {self.path.name} failed: {self._error}") from self._error
        os.replace(self._partial, self.path)
        result = {**self._result, "path": str(self.path)}
        if self._on_finish is not None:
            self._on_finish(result)
        return result

    def abort(self) -> None:
        self._aborted = True
        self._stop()
        self._partial.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


class ArchiveParts:
    """A tee for copy.copy_tenant (TableSpec -> PartWriter) into `folder`; `take(name)` gives
    the record of a table's finished part ({"path", "sha256", "compressed_bytes"}) once."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self._finished: dict[str, dict] = {}
        self._lock = threading.Lock()

    def __call__(self, table: TableSpec) -> PartWriter:
        def store(result):
            with self._lock:
                self._finished[table.name] = result
        return PartWriter(self.folder, table.name, on_finish=store)

    def take(self, name: str) -> dict | None:
        with self._lock:
            return self._finished.pop(name, None)


class PartError(Exception):
    """A recorded part is missing or is not what was recorded (the caller exports afresh)."""


class _PartReader:
    """Reads a part file for tarfile, checking its size and SHA-256 against the record."""

    def __init__(self, raw):
        self.raw = raw
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        return data


def assemble_archive(path, place: Place, tenant, tables: list[TableSpec], parts: dict[str, dict],
                     fingerprints: dict[str, Fingerprint]) -> dict:
    """Write the archive `path` (atomically, 0600) from recorded parts: `parts[table]` =
    {"path", "sha256", "compressed_bytes", "rows"}; `fingerprints[table]`: the count and
    checksum of exactly the part's rows. The manifest's other fields are read from `place`.
    PartError when a part is missing, changed, or its rows disagree with the fingerprint."""
    path = Path(path)
    for table in tables:
        part, fp = parts.get(table.name), fingerprints.get(table.name)
        if part is None or fp is None:
            raise PartError(f"{table.name}: no part or no fingerprint")
        if fp.rows != part["rows"]:
            raise PartError(f"{table.name}: the part holds {part['rows']} rows, the fingerprint counts {fp.rows}")
        size = Path(part["path"]).stat().st_size if Path(part["path"]).exists() else None
        if size != part["compressed_bytes"]:
            raise PartError(f"{table.name}: the part is {size} bytes, recorded {part['compressed_bytes']}")
    with _written_atomically(path) as out:
        with place.connect(read_only=True) as conn, \
                tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            manifest = _manifest_head(conn, place, tenant, tables)
            mtime = int(timezone.now().timestamp())
            for table in tables:
                part = parts[table.name]
                info = tarfile.TarInfo(f"data/{table.name}.copy.gz")
                info.size, info.mtime = part["compressed_bytes"], mtime
                with open(part["path"], "rb") as raw:
                    reader = _PartReader(raw)
                    tar.addfile(info, reader)
                if reader.digest.hexdigest() != part["sha256"]:
                    raise PartError(f"{table.name}: the part's SHA-256 differs from the recorded one")
                member = {"member": info.name, "sha256": part["sha256"], "compressed_bytes": info.size}
                manifest["tables"].append(_table_entry(conn, place, table, fingerprints[table.name], member))
            _add_manifest(tar, manifest)
    return manifest
