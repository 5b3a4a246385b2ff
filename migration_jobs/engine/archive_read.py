"""Tenant archives, reading: `validate_archive` checks a whole file before anything is
restored from it (tar structure, manifest digest and shape, format version, each member's
size, SHA-256, COPY signature and complete gzip stream, expansion capped: engine/expansion.py);
a truncated, tampered or unknown file gives ArchiveError with a one-line message. The
manifest's digest only catches damage (anyone can recompute it): restore checks the
manifest's values against the data.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
import zlib
from pathlib import Path

from migration_jobs.engine.archive import CHUNK, COPY_SIGNATURE, FORMAT, MANIFEST, MANIFEST_DIGEST, SUPPORTED_VERSIONS
from migration_jobs.engine.expansion import ExpansionCap
from migration_jobs.engine.verify import HASH64, LEGACY_MD5
from migration_jobs.exceptions import ArchiveError

# What reading an archive's tar headers may cost, whatever the file says: tarfile reads every
# header of the archive (and keeps it) before a member is looked at, an extended header (pax
# records, a GNU long name) whole into memory, and expands a sparse member's holes. An archive
# has one member per tenant table plus two, and needs no extended header beyond a few names.
MAX_MEMBERS = 1000
MAX_HEADER_BYTES = 1 << 20  # all extended headers of one archive together
_EXTENDED_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                     tarfile.SOLARIS_XHDTYPE)


def shown(value, *, quoted: bool = False, limit: int = 80) -> str:
    """A value from the archive as an error message quotes it: control characters escaped (no
    terminal escape sequence reaches a terminal), at most `limit` characters; `quoted`: as
    repr() shows it."""
    text = repr(value) if quoted or not isinstance(value, str) else value
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


class _ArchiveInfo(tarfile.TarInfo):
    """A tar header read with bounded memory: extended headers count against the archive's
    MAX_HEADER_BYTES before they are read; sparse members (a few bytes whose holes expand to
    any size) are refused (ReadError: the readers below make it an ArchiveError)."""

    def _proc_member(self, tar):
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise tarfile.ReadError(f"sparse member {shown(self.name, quoted=True)}: not a tenant archive member")
        if self.type in _EXTENDED_HEADERS:
            tar.header_bytes += self.size
            if tar.header_bytes > MAX_HEADER_BYTES:
                raise tarfile.ReadError(f"extended tar headers larger than {MAX_HEADER_BYTES} bytes")
        return super()._proc_member(tar)

    def _proc_gnusparse_10(self, next, pax_headers, tar):  # noqa: A002 - tarfile's signature
        raise tarfile.ReadError(f"sparse member {shown(next.name, quoted=True)}: not a tenant archive member")

    def _apply_pax_info(self, pax_headers, encoding, errors):
        if any(key.startswith("GNU.sparse.") for key in pax_headers):
            raise tarfile.ReadError(f"sparse member {shown(self.name, quoted=True)}: not a tenant archive member")
        super()._apply_pax_info(pax_headers, encoding, errors)


class _ArchiveTar(tarfile.TarFile):
    """A tar file read with _ArchiveInfo headers and at most MAX_MEMBERS members."""

    tarinfo = _ArchiveInfo
    header_bytes = 0

    def next(self):
        info = super().next()
        if info is not None and len(self.members) > MAX_MEMBERS:
            raise tarfile.ReadError(f"more than {MAX_MEMBERS} members")
        return info


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
        return _ArchiveTar.open(path, "r:")
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
            raise ArchiveError(f"archive holds {shown(m.name)} twice")
        if not m.isfile() or m.issparse():
            raise ArchiveError(f"unexpected member {shown(m.name, quoted=True)} (not a regular file)")
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
        raise ArchiveError(f"not a tenant archive (format {shown(manifest.get('format'), quoted=True)}, "
                           f"expected {FORMAT!r})")
    version = manifest.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise ArchiveError(f"unknown archive format version {shown(version, quoted=True)} "
                           f"(this installation reads version {', '.join(map(str, SUPPORTED_VERSIONS))})")
    _require(isinstance(manifest.get("source", {}), dict), "source not an object")
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
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a number of too many digits
            raise ArchiveError(f"manifest.json is not valid JSON ({_why(exc)})") from None
        except RecursionError:
            raise ArchiveError("manifest.json is not a tenant manifest (nested too deeply)") from None
        check_manifest_shape(manifest)
        expected_members = {MANIFEST, MANIFEST_DIGEST} | {t["member"] for t in manifest["tables"]}
        extra = sorted(set(members) - expected_members)
        if extra:
            raise ArchiveError(f"archive holds members the manifest does not list: {', '.join(map(shown, extra[:5]))}")
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
        with (cap or ExpansionCap()).reader(GzipStream(raw), info.name, info.size) as gz:
            while len(head) < len(COPY_SIGNATURE) and (part := gz.read(len(COPY_SIGNATURE) - len(head))):
                head += part  # a read may stop at the end of a gzip member
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


GZIP_MAGIC = b"\x1f\x8b"


class GzipStream:
    """The content of a gzip stream (one member or more, each checked by zlib against its CRC
    and length) read from `raw`, strictly: only another member may follow a member. (Python's
    gzip module skips zero bytes after a member one read(1) at a time, ~0.3 s per MB: minutes
    of CPU for a padded upload, twice, for a stream that decompresses to a few bytes.)"""

    def __init__(self, raw):
        self.raw = raw
        self._z = zlib.decompressobj(31)  # 31: gzip header and trailer
        self._input = b""

    def _more(self) -> bytes:
        return self.raw.read(CHUNK)

    def read(self, n: int = CHUNK) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        while True:
            if self._z.eof:
                rest = self._z.unused_data
                while len(rest) < len(GZIP_MAGIC) and (more := self._more()):
                    rest += more
                if not rest:
                    return b""
                if not rest.startswith(GZIP_MAGIC):
                    raise gzip.BadGzipFile("data after the end of the gzip stream")
                self._z, self._input = zlib.decompressobj(31), rest
            if not self._input:
                self._input = self._more()
                if not self._input:
                    raise EOFError("compressed stream ended before the end-of-stream marker was reached")
            data = self._z.decompress(self._input, n)
            self._input = self._z.unconsumed_tail
            if data:
                return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._input = b""


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
    return (cap or ExpansionCap()).reader(GzipStream(raw), member, info.size), raw


def summary(manifest: dict) -> dict:
    """What a person wants to know about an archive (never a secret: archives hold none)."""
    return {"format_version": manifest["format_version"], "tenant": manifest["tenant"]["slug"],
            "tenant_id": manifest["tenant"]["id"], "created_at": manifest.get("created_at"),
            "source": (manifest.get("source") or {}).get("label"),
            "server_version": (manifest.get("source") or {}).get("server_version"),
            "migrations": manifest["migrations"],
            "rows": sum(t["rows"] for t in manifest["tables"]),
            "tables": {t["name"]: t["rows"] for t in manifest["tables"]}}
