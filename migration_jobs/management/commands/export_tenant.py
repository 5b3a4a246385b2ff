"""Export one tenant's rows into a tenant archive (see engine/archive.py and the README).

    manage.py export_tenant acme                       # ./acme-<UTC time>.tenant.tar
    manage.py export_tenant acme -o /backups/acme.tar
    manage.py export_tenant acme -o - | ssh host 'cat > acme.tar'   # streamed to stdout

The rows are read where the tenant lives now (shared tables, its schema or its database),
from one consistent snapshot. Exit status 0 on success, 2 for bad input (one line on stderr).
"""
import sys
from pathlib import Path

from django.core.management.base import CommandError
from django.utils import timezone

from migration_jobs import services
from migration_jobs.engine.archive import HashingWriter, write_archive, write_archive_to
from migration_jobs.engine.places import place_of
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.management.commands._progress import TenantCommand


class Command(TenantCommand):
    help = "Export a tenant's rows (every tenant table, binary COPY, compressed) with a manifest into one file."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Tenant slug (or id).")
        parser.add_argument("-o", "--output", default=None,
                            help="Archive file to write ('-' for stdout). Default: ./<slug>-<time>.tenant.tar")
        self.add_json_argument(parser)

    def handle(self, *args, tenant, output, as_json, **options):
        tenant = services.get_tenant(tenant)
        tables = tenant_tables()
        to_stdout = output == "-"
        path = None if to_stdout else Path(output or f"{tenant.slug}-{timezone.now():%Y%m%dT%H%M%SZ}.tenant.tar")
        if path is not None and path.is_dir():
            raise CommandError(f"{path} is a directory; give a file name", returncode=2)
        if path is not None and not path.parent.exists():
            raise CommandError(f"folder {path.parent} does not exist", returncode=2)
        stream = getattr(self.stderr, "_out", self.stderr)
        bar = None
        if getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm

            bar = tqdm(total=len(tables), unit="table", file=stream, desc=f"export {tenant.slug}")

        def on_table(name, rows):
            if bar is not None:
                bar.set_postfix_str(f"{name}: {rows} rows", refresh=False)
                bar.update(1)

        place = place_of(tenant)
        try:
            if to_stdout:
                out = HashingWriter(sys.stdout.buffer)
                manifest = write_archive_to(out, place, tenant, tables, on_table=on_table)
                out.flush()
                size, digest = out.size, out.hexdigest()
            else:
                manifest = write_archive(place, tenant, tables, path, on_table=on_table)
                size, digest = path.stat().st_size, _sha256(path)
        finally:
            if bar is not None:
                bar.close()
        rows = sum(t["rows"] for t in manifest["tables"])
        where = "stdout" if to_stdout else str(path)
        report = {"tenant": tenant.slug, "tenant_id": tenant.pk, "file": where, "bytes": size, "sha256": digest,
                  "rows": rows, "tables": {t["name"]: t["rows"] for t in manifest["tables"]},
                  "source": manifest["source"]["label"]}
        if to_stdout:  # stdout is the archive: the summary goes to stderr
            self.stderr.write(f"exported {rows} rows of tenant {tenant.slug} ({len(tables)} tables, {size} bytes, "
                              f"sha256 {digest})")
        elif as_json:
            self.print_json(report)
        else:
            self.stdout.write(f"exported {rows} rows of tenant {tenant.slug} from {report['source']} to {where} "
                              f"({len(tables)} tables, {size // 1024} KiB, sha256 {digest})")


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
