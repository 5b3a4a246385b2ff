"""Restore a tenant archive made by export_tenant (or by a move's backup step).

    manage.py restore_tenant acme.tenant.tar                       # where acme lives (shared if new)
    manage.py restore_tenant acme.tenant.tar --into schema         # a fresh schema
    manage.py restore_tenant acme.tenant.tar --into database [--server pg2]
    manage.py restore_tenant acme.tenant.tar --as acme_copy --into schema   # a new tenant, same rows
    manage.py restore_tenant acme.tenant.tar --replace             # replace a (suspended) tenant's rows
    manage.py restore_tenant acme.tenant.tar --check               # validate and plan only

The archive is checked completely (manifest, format version, SHA-256 of every member, app
migrations not ahead of this code) before anything is written; the rows are loaded in one
transaction per target, verified (counts and checksums) before commit. Exit status 0 on
success, 2 when the archive or the request is refused (one line on stderr, nothing changed).
"""
from tqdm import tqdm

from migration_jobs import services
from migration_jobs.management.base import TenantCommand


class Command(TenantCommand):
    help = "Restore a tenant archive into the shared tables, a fresh schema or a fresh database (all or nothing)."

    def add_arguments(self, parser):
        parser.add_argument("file", help="Archive file written by export_tenant.")
        parser.add_argument("--into", default=None, metavar="shared|schema|database",
                            help="Target placement (default: where the tenant lives now; shared for a new tenant).")
        parser.add_argument("--as", dest="as_slug", default=None, metavar="SLUG",
                            help="Restore as this tenant (a new one is created when it does not exist).")
        parser.add_argument("--replace", action="store_true",
                            help="Replace the tenant's existing rows in the target (the tenant must be suspended).")
        parser.add_argument("--server", default=None, help="DatabaseServer for --into database (default: default).")
        parser.add_argument("--check", action="store_true",
                            help="Validate the archive and show what would be done; write nothing.")
        self.add_json_argument(parser)

    def handle(self, *args, file, into, as_slug, replace, server, check, as_json, **options):
        self.archive_path = file
        manifest = services.validate_archive(file)
        stream = getattr(self.stderr, "_out", self.stderr)
        bar = None
        if not check and getattr(stream, "isatty", lambda: False)():
            bar = tqdm(total=sum(t["rows"] for t in manifest["tables"]), unit="rows", unit_scale=True, file=stream,
                       desc=f"restore {as_slug or manifest['tenant']['slug']}")

        def on_table(name, rows):
            if bar is not None:
                bar.set_postfix_str(name, refresh=False)
                bar.update(rows)

        try:
            report = services.restore(file, into=into, as_slug=as_slug, replace=replace, server_name=server,
                                      check_only=check, on_table=on_table, manifest=manifest)
        finally:
            if bar is not None:
                bar.close()
        if as_json:
            self.print_json(report)
            return
        if check:
            info, plan = services.archive_summary(manifest), report["plan"]
            self.stdout.write(f"archive OK: tenant {info['tenant']} (id {info['tenant_id']}), {info['rows']} rows in "
                              f"{len(info['tables'])} tables, made {info['created_at']} from {info['source']}")
            action = "create tenant" if plan["creates_tenant"] else "restore existing tenant"
            self.stdout.write(f"would {action} {plan['tenant']} into {plan['into']}"
                              f"{' replacing ' + str(plan['existing_rows']) + ' rows' if plan['existing_rows'] else ''}"
                              f"{' with a new tenant id' if plan['rewrites_tenant_id'] else ''}")
            return
        what = "created" if report["created"] else "restored"
        replaced = f", {report['replaced_rows']} rows replaced" if report["replaced_rows"] else ""
        self.stdout.write(f"{what} tenant {report['tenant']} (id {report['tenant_id']}) in {report['placement']} "
                          f"placement: {report['rows']} rows in {len(report['tables'])} tables, every table "
                          f"verified{replaced} ({report['seconds']}s)")
