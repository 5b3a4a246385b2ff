"""Tenant archives: exporting a tenant's rows where it lives now, checking an archive, and
restoring one (engine/archive.py and engine/restore.py do the work). Bad input is
`BadRequest`, a bad file `ArchiveError`, a refused or failed restore a `RestoreError`."""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from django.utils import timezone

from migration_jobs.engine.archive import HashingWriter, write_archive, write_archive_to
from migration_jobs.engine.archive_read import summary, validate_archive
from migration_jobs.engine.places import place_of
from migration_jobs.engine.restore import restore_tenant
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.exceptions import BadRequest
from migration_jobs.services.validation import boolean, known_fields, reachable_server
from tenancy.models import Tenant

CHUNK = 1 << 20
RESTORE_OPTIONS = ("into", "as", "replace", "server", "check")

__all__ = ["archive_filename", "archive_summary", "export_tenant", "export_to_spool", "restore", "restore_options",
           "tenant_table_count", "validate_archive"]


def archive_filename(tenant: Tenant) -> str:
    return f"{tenant.slug}-{timezone.now():%Y%m%dT%H%M%SZ}.tenant.tar"


def tenant_table_count() -> int:
    """How many tables an export writes (a progress bar's total)."""
    return len(tenant_tables())


def _report(tenant: Tenant, manifest: dict, where: str, size: int, digest: str) -> dict:
    return {"tenant": tenant.slug, "tenant_id": tenant.pk, "file": where, "bytes": size, "sha256": digest,
            "rows": sum(t["rows"] for t in manifest["tables"]),
            "tables": {t["name"]: t["rows"] for t in manifest["tables"]}, "source": manifest["source"]["label"]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def export_tenant(tenant: Tenant, output: str | None = None, *, stream=None, on_table=None) -> dict:
    """Write the tenant's archive to `output` (default ./<slug>-<time>.tenant.tar), or to the
    binary `stream` when given. Returns what was written (file, bytes, sha256, rows per table)."""
    tables = tenant_tables()
    if stream is not None:
        out = HashingWriter(stream)
        manifest = write_archive_to(out, place_of(tenant), tenant, tables, on_table=on_table)
        out.flush()
        return _report(tenant, manifest, "stdout", out.size, out.hexdigest())
    path = Path(output or archive_filename(tenant))
    if path.is_dir():
        raise BadRequest(f"{path} is a directory; give a file name")
    if not path.parent.exists():
        raise BadRequest(f"folder {path.parent} does not exist")
    manifest = write_archive(place_of(tenant), tenant, tables, path, on_table=on_table)
    return _report(tenant, manifest, str(path), path.stat().st_size, _sha256(path))


def export_to_spool(tenant: Tenant):
    """The archive in an anonymous temporary file, rewound (for an HTTP response), and its report."""
    spool = tempfile.TemporaryFile(prefix="tenant-export-")
    try:
        report = export_tenant(tenant, stream=spool)
        spool.flush()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool, report


def archive_summary(manifest: dict) -> dict:
    return summary(manifest)


def restore_options(options, *, extra=()) -> dict:
    """The restore options of a request (a form or a query string), or BadRequest for unknown ones."""
    known_fields({k: None for k in options if k not in extra}, RESTORE_OPTIONS, what="options")
    return {"into": options.get("into") or None, "as_slug": options.get("as") or None,
            "replace": boolean(options.get("replace") or "", "replace"),
            "server_name": options.get("server") or None, "check_only": boolean(options.get("check") or "", "check")}


def restore(path, *, into: str | None = None, as_slug: str | None = None, replace: bool = False,
            server_name: str | None = None, check_only: bool = False, on_table=None, manifest: dict | None = None
            ) -> dict:
    """Check the whole archive, then restore it all or nothing (engine/restore.py)."""
    return restore_tenant(path, into=into, as_slug=as_slug, replace=replace, server_name=server_name,
                          check_only=check_only, on_table=on_table, manifest=manifest,
                          resolve_server=reachable_server)
