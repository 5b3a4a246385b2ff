"""Tenant archives: one file holding a tenant's rows and a manifest that describes them.

The file is a plain (uncompressed) tar archive, written as a stream (it can go to a pipe or
an HTTP response as well as to a file):
- `data/<table>.copy.gz`, one per tenant table, in foreign-key order (parents first): the
  table's rows for that tenant in PostgreSQL's binary COPY format, gzip-compressed, streamed
  block by block (never a whole table in memory; each member is spooled to a temporary file
  first because a tar header needs the member's size);
- `manifest.sha256`: the SHA-256 of manifest.json (catches a damaged manifest);
- `manifest.json` (last member): format and format version, tenant, tables in foreign-key
  order with their columns and types, row counts, per-table checksums (verify.fingerprint),
  primary-key sequence positions, source server version and the app's migration state,
  creation time, and the SHA-256 and size of every data member.

Everything is read in one REPEATABLE READ snapshot, so counts, checksums and data agree.
Archive files are written 0600, in folders made 0700 (see "File modes" below).
`validate_archive` checks a file before anything is restored from it: a truncated or
tampered file, a wrong checksum, an unknown format version or a member that expands past the
cap (see "Expanded size" below) gives ArchiveError with a one-line message. The manifest's
digest only catches damage: anyone can recompute it, so restore checks the manifest's values
against the data (engine/restore.py).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zlib
from pathlib import Path

from django.utils import timezone
from psycopg import sql

from migration_jobs.engine.copy import _copied_rows as copied_rows
from migration_jobs.engine.places import Place
from migration_jobs.engine.sequences import sequence_positions
from migration_jobs.engine.tables import TableSpec
from migration_jobs.engine.verify import HASH64, LEGACY_MD5, fingerprint
from migration_jobs.exceptions import ArchiveError

FORMAT = "tenant-archive"
# Version 2: per-table checksums are verify.HASH64; version 1 archives carry LEGACY_MD5 ones.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
CHUNK = 1 << 20
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
# The 11-byte signature every binary COPY stream starts with.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_MEMBER = re.compile(r"^data/[a-z0-9_]{1,63}\.copy\.gz$")


# --- Writing -----------------------------------------------------------------------------

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
    from django.conf import settings

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


# --- Reading -----------------------------------------------------------------------------

def read_manifest(path: Path) -> dict:
    """The manifest, unchecked (the backup step reads back its own export)."""
    with tarfile.open(path, "r") as tar:
        member = tar.extractfile(MANIFEST)
        if member is None:
            raise ValueError("archive has no manifest.json")
        return json.load(member)


_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, gzip.BadGzipFile)


def open_archive(path) -> tarfile.TarFile:
    """The archive opened for reading (uncompressed tar only), or ArchiveError."""
    try:
        return tarfile.open(path, "r:")
    except FileNotFoundError:
        raise ArchiveError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ArchiveError(f"{path} is a directory, not an archive") from None
    except _READ_ERRORS as exc:
        raise ArchiveError(f"not a tenant archive (not a readable tar file: {_why(exc)})") from None


def _why(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    try:
        members = tar.getmembers()
    except _READ_ERRORS as exc:
        raise ArchiveError(f"archive is truncated or damaged ({_why(exc)})") from None
    by_name = {}
    for m in members:
        if m.name in by_name:
            raise ArchiveError(f"archive holds {m.name} twice")
        if not m.isfile():
            raise ArchiveError(f"unexpected member {m.name!r} (not a regular file)")
        by_name[m.name] = m
    return by_name


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int = 16 << 20) -> bytes:
    if info.size > limit:
        raise ArchiveError(f"{info.name} is implausibly large ({info.size} bytes)")
    try:
        data = tar.extractfile(info).read()
    except _READ_ERRORS as exc:
        raise ArchiveError(f"archive is truncated or damaged in {info.name} ({_why(exc)})") from None
    if len(data) != info.size:
        raise ArchiveError(f"archive is truncated: {info.name} has {len(data)} of {info.size} bytes")
    return data


def _require(cond, message: str) -> None:
    if not cond:
        raise ArchiveError(f"manifest is malformed: {message}")


def row_checksum(manifest: dict) -> str:
    """The checksum algorithm of the archive's per-table checksums (verify.HASH64 or LEGACY_MD5)."""
    return LEGACY_MD5 if manifest["format_version"] == 1 else HASH64


def check_manifest_shape(manifest) -> None:
    """The manifest has every field restore relies on, with the right types."""
    _require(isinstance(manifest, dict), "not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ArchiveError(f"not a tenant archive (format {manifest.get('format')!r}, expected {FORMAT!r})")
    version = manifest.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise ArchiveError(f"unknown archive format version {version!r} "
                           f"(this installation reads version {', '.join(map(str, SUPPORTED_VERSIONS))})")
    tenant = manifest.get("tenant")
    _require(isinstance(tenant, dict), "tenant missing")
    _require(isinstance(tenant.get("id"), int) and not isinstance(tenant.get("id"), bool), "tenant.id not an integer")
    _require(isinstance(tenant.get("slug"), str) and tenant["slug"], "tenant.slug missing")
    _require(isinstance(tenant.get("name", ""), str), "tenant.name not a string")
    _require(isinstance(tenant.get("settings", {}), dict), "tenant.settings not an object")
    _require(isinstance(manifest.get("migrations"), dict)
             and all(isinstance(k, str) and isinstance(v, str) for k, v in manifest["migrations"].items()),
             "migrations missing")
    _require(isinstance(manifest.get("sequences", {}), dict)
             and all(isinstance(v, int) for v in manifest.get("sequences", {}).values()), "sequences malformed")
    tables = manifest.get("tables")
    _require(isinstance(tables, list), "tables missing")
    seen = set()
    for i, t in enumerate(tables):
        where = f"tables[{i}]"
        _require(isinstance(t, dict), f"{where} not an object")
        _require(isinstance(t.get("name"), str) and re.match(r"^[a-z0-9_]{1,63}$", t["name"]),
                 f"{where}.name invalid")
        _require(t["name"] not in seen, f"table {t['name']} listed twice")
        seen.add(t["name"])
        _require(t.get("member") == f"data/{t['name']}.copy.gz", f"{where}.member invalid")
        _require(isinstance(t.get("sha256"), str) and re.match(r"^[0-9a-f]{64}$", t["sha256"]),
                 f"{where}.sha256 invalid")
        _require(isinstance(t.get("compressed_bytes"), int), f"{where}.compressed_bytes missing")
        _require(isinstance(t.get("rows"), int) and t["rows"] >= 0, f"{where}.rows invalid")
        _require(isinstance(t.get("checksum"), str) and re.match(r"^-?\d+:[0-9a-f]{16}$", t["checksum"]),
                 f"{where}.checksum invalid")
        _require(isinstance(t.get("pk", "id"), str), f"{where}.pk invalid")
        cols = t.get("columns")
        _require(isinstance(cols, list) and cols, f"{where}.columns missing")
        for c in cols:
            _require(isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("type"), str),
                     f"{where}.columns malformed")
        names = [c["name"] for c in cols]
        _require(len(set(names)) == len(names), f"{where}.columns repeated")
        _require("tenant_id" in names, f"{where} has no tenant_id column")
        _require(t.get("pk", "id") in names, f"{where}.pk is not one of its columns")


def validate_archive(path) -> dict:
    """Check the whole file before anything is written: tar structure, manifest digest,
    manifest shape and format version, every data member's size and SHA-256, the binary
    COPY signature of each table and that the gzip streams are complete. Returns the manifest.
    Reads the file once, member by member (never a member whole in memory)."""
    with open_archive(path) as tar:
        members = _members(tar)
        if MANIFEST not in members:
            raise ArchiveError("archive has no manifest.json (truncated, or not a tenant archive)")
        data = _read_member(tar, members[MANIFEST])
        if MANIFEST_DIGEST in members:
            expected = _read_member(tar, members[MANIFEST_DIGEST], 1024).decode("ascii", "replace").split()[:1]
            if expected != [hashlib.sha256(data).hexdigest()]:
                raise ArchiveError("manifest.json does not match its checksum (manifest.sha256): "
                                   "the manifest was changed or damaged")
        else:
            raise ArchiveError("archive has no manifest.sha256 (truncated, or not a tenant archive)")
        try:
            manifest = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArchiveError(f"manifest.json is not valid JSON ({_why(exc)})") from None
        check_manifest_shape(manifest)
        expected_members = {MANIFEST, MANIFEST_DIGEST} | {t["member"] for t in manifest["tables"]}
        extra = sorted(set(members) - expected_members)
        if extra:
            raise ArchiveError(f"archive holds members the manifest does not list: {', '.join(extra[:5])}")
        cap = ExpansionCap()
        for table in manifest["tables"]:
            info = members.get(table["member"])
            if info is None:
                raise ArchiveError(f"archive has no {table['member']} (truncated?)")
            if info.size != table["compressed_bytes"]:
                raise ArchiveError(f"{table['member']} is {info.size} bytes, the manifest says "
                                   f"{table['compressed_bytes']}")
            digest, head, damage = _scan_member(tar, info, cap)
            if digest != table["sha256"]:
                raise ArchiveError(f"checksum mismatch in {table['member']}: SHA-256 {digest[:12]}..., "
                                   f"the manifest says {table['sha256'][:12]}...; the archive was changed or damaged")
            if damage:
                raise ArchiveError(f"{table['member']} is damaged ({damage})")
            if head != COPY_SIGNATURE:
                raise ArchiveError(f"{table['member']} is not a binary COPY stream")
    return manifest


def _scan_member(tar: tarfile.TarFile, info: tarfile.TarInfo, cap: ExpansionCap | None = None
                 ) -> tuple[str, bytes, str | None]:
    """(SHA-256 of the member's bytes, first 11 bytes of its decompressed content, what is
    wrong with its gzip stream or None). The whole gzip stream is decompressed (its CRC
    checked) chunk by chunk, never past the expansion cap (ArchiveError as soon as it would
    be); the digest covers every byte even when decompression fails."""
    try:
        raw = HashingReader(tar.extractfile(info))
    except _READ_ERRORS as exc:
        raise ArchiveError(f"archive is truncated or damaged in {info.name} ({_why(exc)})") from None
    head, damage = b"", None
    try:
        with (cap or ExpansionCap()).reader(gzip.GzipFile(fileobj=raw, mode="rb"), info.name, info.size) as gz:
            head = gz.read(len(COPY_SIGNATURE))
            while gz.read(CHUNK):
                pass
    except _READ_ERRORS as exc:
        damage = _why(exc)
    try:
        raw.drain()
    except _READ_ERRORS as exc:
        raise ArchiveError(f"archive is truncated or damaged in {info.name} ({_why(exc)})") from None
    if raw.size != info.size:
        raise ArchiveError(f"archive is truncated: {info.name} has {raw.size} of {info.size} bytes")
    return raw.hexdigest(), head, damage


class HashingReader:
    """Reads from `raw`, keeping the SHA-256 and the number of bytes read."""

    def __init__(self, raw):
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read whatever the consumer left (gzip may stop before trailing bytes)."""
        while self.read(CHUNK):
            pass

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def open_table_stream(tar: tarfile.TarFile, member: str, cap: ExpansionCap | None = None):
    """(gzip reader of the member's COPY stream, capped: see ExpansionCap; the HashingReader
    under it)."""
    try:
        info = tar.getmember(member)
        raw = HashingReader(tar.extractfile(info))
    except (KeyError, *_READ_ERRORS) as exc:
        raise ArchiveError(f"cannot read {member} ({_why(exc)})") from None
    return (cap or ExpansionCap()).reader(gzip.GzipFile(fileobj=raw, mode="rb"), member, info.size), raw


# --- Expanded size ---------------------------------------------------------------------------
# A gzip member can expand ~1000 times (a few MB that inflate to GBs: a "zip bomb"); what an
# archive expands to is what a restore writes into the database. Two limits, both checked
# while the stream is read (a member is never expanded whole, in memory or on disk):
# - per member, at most TENANT_ARCHIVE_MAX_EXPANSION_RATIO (default 300) times its compressed
#   size, or 64 MiB, whichever is more. export_tenant compresses at gzip level 3, whose fast
#   deflate cannot go past ~230:1 even on input of identical bytes (measured: 229:1 for
#   zeros; real COPY data 2-8:1, rows repeating one 8 KB text ~200:1); only a stream made by
#   other means (level 4 and up) reaches gzip's ~1030:1 ceiling. So 300 never refuses an archive
#   this code wrote, and a crafted member expands at most 300 times before it is refused.
# - per archive, at most TENANT_ARCHIVE_MAX_EXPANDED_BYTES in all (default 64 GiB): what a DBA
#   is prepared to see written by one restore; raise it for bigger tenants.

MIN_EXPANSION_ALLOWANCE = 64 << 20


def expansion_limits() -> tuple[int, int]:
    """(TENANT_ARCHIVE_MAX_EXPANDED_BYTES, TENANT_ARCHIVE_MAX_EXPANSION_RATIO) from settings."""
    from django.conf import settings

    return (int(getattr(settings, "TENANT_ARCHIVE_MAX_EXPANDED_BYTES", 64 << 30)),
            int(getattr(settings, "TENANT_ARCHIVE_MAX_EXPANSION_RATIO", 300)))


class ExpansionCap:
    """The expanded-size budget of one archive read (validate_archive, or one restore)."""

    def __init__(self):
        self.total_limit, self.ratio = expansion_limits()
        self.total = 0

    def reader(self, gz, name: str, compressed_bytes: int) -> "CappedReader":
        return CappedReader(gz, self, name, max(self.ratio * int(compressed_bytes), MIN_EXPANSION_ALLOWANCE))


class CappedReader:
    """Reads a gzip stream, refusing (ArchiveError) as soon as the member expands past its own
    limit or the archive past its total limit."""

    def __init__(self, gz, cap: ExpansionCap, name: str, limit: int):
        self.gz, self.cap, self.name, self.limit, self.size = gz, cap, name, limit, 0

    def read(self, n: int = CHUNK) -> bytes:
        if n is None or n < 0:
            n = CHUNK  # never "all of it"
        # Never ask for more than one byte past what is allowed: a bomb is never expanded
        # further than the limit, whatever the caller asked for.
        allowed = min(self.limit - self.size, self.cap.total_limit - self.cap.total) + 1
        data = self.gz.read(max(1, min(n, allowed)))
        self.size += len(data)
        self.cap.total += len(data)
        if self.size > self.limit:
            raise ArchiveError(f"{self.name} expands past {self.limit} bytes ({self.cap.ratio} times its compressed "
                               f"size; TENANT_ARCHIVE_MAX_EXPANSION_RATIO): refused as a decompression bomb")
        if self.cap.total > self.cap.total_limit:
            raise ArchiveError(f"the archive expands past {self.cap.total_limit} bytes "
                               f"(TENANT_ARCHIVE_MAX_EXPANDED_BYTES) at {self.name}: refused")
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.gz.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def summary(manifest: dict) -> dict:
    """What a person wants to know about an archive (never a secret: archives hold none)."""
    return {"format_version": manifest["format_version"], "tenant": manifest["tenant"]["slug"],
            "tenant_id": manifest["tenant"]["id"], "created_at": manifest.get("created_at"),
            "source": (manifest.get("source") or {}).get("label"),
            "server_version": (manifest.get("source") or {}).get("server_version"),
            "migrations": manifest["migrations"],
            "rows": sum(t["rows"] for t in manifest["tables"]),
            "tables": {t["name"]: t["rows"] for t in manifest["tables"]}}
