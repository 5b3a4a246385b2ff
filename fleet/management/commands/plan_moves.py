"""Plan moves of many tenants (a fleet plan), print its estimate, start it.

    manage.py plan_moves --tenants acme,globex --to database --dry-run
    manage.py plan_moves --all-candidates --to database --server pg2 --server pg3 --max-parallel 2 --start
    manage.py plan_moves --all-shared --to schema --offline --window-start 2026-12-05T22:00Z \\
        --window-end 2026-12-06T04:00Z --on-failure skip --start

Exit status: 0 when the plan was made (or printed with --dry-run), 2 when it was refused (one
`error:` line, nothing created). Follow and control it with `manage.py plan_control`.
"""
from fleet import services
from fleet.management.commands._plans import print_draft, print_plan
from migration_jobs.management.base import TenantCommand


class Command(TenantCommand):
    help = "Plan the moves of many tenants (bounded parallelism, a window, a failure policy); --dry-run estimates."

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--tenants", default="", metavar="A,B,C", help="Tenant slugs (or ids), comma-separated.")
        which.add_argument("--all-candidates", action="store_true",
                           help="Every shared tenant that should move (size over TENANT_DEDICATED_THRESHOLD_ROWS "
                                "or a dedicated reason).")
        which.add_argument("--all-shared", action="store_true", help="Every tenant in shared placement.")
        # No argparse `choices` or `type`: a bad value is refused by the service, as one line, exit 2.
        parser.add_argument("--to", required=True, metavar="schema|database", help="Target placement.")
        parser.add_argument("--server", action="append", default=[], metavar="NAME",
                            help="DatabaseServer for --to database; repeat it to spread the tenants (least loaded "
                                 "first). Default: the default server.")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--online", dest="online", action="store_true", default=True,
                          help="Keep every tenant writable during its copy (the default).")
        mode.add_argument("--offline", dest="online", action="store_false",
                          help="Refuse each tenant's writes for its whole move.")
        parser.add_argument("--max-parallel", default="1", metavar="N", help="At most N moves at once (default 1).")
        parser.add_argument("--order", default="biggest_first", metavar="biggest_first|smallest_first|as_listed")
        parser.add_argument("--window-start", default=None, metavar="ISO",
                            help="No move starts before (UTC if no zone).")
        parser.add_argument("--window-end", default=None, metavar="ISO",
                            help="No move starts that would not finish by then (estimated).")
        parser.add_argument("--on-failure", default="stop", metavar="stop|skip",
                            help="stop the plan (default) or skip the tenant and go on.")
        parser.add_argument("--name", default="", help="A name for the plan.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Print the plan with its estimate per tenant and in total; create nothing.")
        parser.add_argument("--start", action="store_true", help="Start the plan at once (else it stays a draft).")

    def handle(self, *args, **o):
        selection = "candidates" if o["all_candidates"] else "shared" if o["all_shared"] else "chosen"
        options = dict(tenants=o["tenants"], selection=selection, target=o["to"], servers=o["server"],
                       online=o["online"], max_parallel=o["max_parallel"], order=o["order"],
                       window_start=o["window_start"], window_end=o["window_end"], on_failure=o["on_failure"],
                       name=o["name"])
        if o["dry_run"]:
            print_draft(self, services.check_plan(**options))
            return
        plan = services.create_plan(**options, start=o["start"])
        plan.refresh_from_db()
        print_plan(self, plan)
        if plan.status == "draft":
            self.stdout.write(f"plan {plan.pk} is a draft: start it with `manage.py plan_control start {plan.pk}`")
        else:
            self.stdout.write(f"plan {plan.pk} started; follow it with `manage.py plan_control show {plan.pk}`")
