"""Export one tenant's rows into a tenant archive (see engine/archive.py and the README).

    manage.py export_tenant acme                       # ./acme-<UTC time>.tenant.tar
    manage.py export_tenant acme -o /backups/acme.tar
    manage.py export_tenant acme -o - | ssh host 'cat > acme.tar'   # streamed to stdout

The rows are read where the tenant lives now (shared tables, its schema or its database),
from one consistent snapshot. Exit status 0 on success, 2 for bad input (one line on stderr).
"""
import sys

from tqdm import tqdm

from migration_jobs import services
from migration_jobs.management.base import TenantCommand


class Command(TenantCommand):
    help = "Export a tenant's rows (every tenant table, binary COPY, compressed) with a manifest into one file."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Tenant slug (or id).")
        parser.add_argument("-o", "--output", default=None,
                            help="Archive file to write ('-' for stdout). Default: ./<slug>-<time>.tenant.tar")
        self.add_json_argument(parser)

    def handle(self, *args, tenant, output, as_json, **options):
        tenant = services.get_tenant(tenant)
        to_stdout = output == "-"
        stream = getattr(self.stderr, "_out", self.stderr)
        bar = None
        if getattr(stream, "isatty", lambda: False)():
            bar = tqdm(total=services.tenant_table_count(), unit="table", file=stream, desc=f"export {tenant.slug}")

        def on_table(name, rows):
            if bar is not None:
                bar.set_postfix_str(f"{name}: {rows} rows", refresh=False)
                bar.update(1)

        try:
            report = services.export_tenant(tenant, None if to_stdout else output,
                                            stream=sys.stdout.buffer if to_stdout else None, on_table=on_table)
        finally:
            if bar is not None:
                bar.close()
        rows, size, digest, tables = report["rows"], report["bytes"], report["sha256"], len(report["tables"])
        if to_stdout:  # stdout is the archive: the summary goes to stderr
            self.stderr.write(f"exported {rows} rows of tenant {tenant.slug} ({tables} tables, {size} bytes, "
                              f"sha256 {digest})")
        elif as_json:
            self.print_json(report)
        else:
            self.stdout.write(f"exported {rows} rows of tenant {tenant.slug} from {report['source']} to "
                              f"{report['file']} ({tables} tables, {size // 1024} KiB, sha256 {digest})")
