"""Move one pooled tenant to a dedicated schema or database.

    manage.py migrate_tenant acme --to schema
    manage.py migrate_tenant acme --to database --server pg2 --json
    manage.py migrate_tenant acme --to database --dry-run      # preflight only, nothing changes
    manage.py migrate_tenant acme --to schema --async          # hand it to the django-q2 cluster
    manage.py migrate_tenant acme --to schema --online         # stays writable until a short cutover

Exit status: 0 when the run succeeded (or was queued with --async), 1 when it failed or was
rolled back, 2 when the request was refused (nothing changed, no run created).
"""
from migration_jobs import services
from migration_jobs.management.base import TenantCommand


class Command(TenantCommand):
    help = "Move a tenant from the shared database to a dedicated schema or database (verified, resumable)."
    dry_run_only = False

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Tenant slug (or id).")
        # No argparse `choices`: a bad value is refused by the service, as one line, exit 2.
        parser.add_argument("--to", required=True, metavar="schema|database", help="Target placement.")
        parser.add_argument("--server", default=None,
                            help="DatabaseServer name for --to database (default: the default server).")
        parser.add_argument("--online", action="store_true",
                            help="Keep the tenant writable during the copy (change capture, catch-up, "
                                 "brief measured freeze at the cutover).")
        parser.add_argument("--hold-cutover", action="store_true",
                            help="With --online: keep the target in sync until released from the admin "
                                 "(for the gradual read switch).")
        if not self.dry_run_only:
            parser.add_argument("--dry-run", action="store_true",
                                help="Run the preflight checks only and print their report; change nothing.")
            parser.add_argument("--async", action="store_true", dest="background",
                                help="Enqueue the run for the django-q2 cluster and print its id.")
        self.add_json_argument(parser)

    def handle(self, *args, tenant, to, server, online, as_json, **options):
        dry_run = self.dry_run_only or options.get("dry_run", False)
        target = services.get_tenant(tenant)
        run = services.request_move(target, to, server_name=server, online=online, dry_run=dry_run,
                                    hold_cutover=options.get("hold_cutover", False), via="command")
        self.conclude(run, as_json=as_json, background=options.get("background", False))
