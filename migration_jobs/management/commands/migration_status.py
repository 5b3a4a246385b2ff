"""Run history, newest first: every tenant's, or one tenant's.

    manage.py migration_status [acme] [--limit 50] [--json]
"""
from migration_jobs import services
from migration_jobs.management.base import TenantCommand
from migration_jobs.management.commands._progress import table


class Command(TenantCommand):
    help = "List tenant move runs, newest first (all tenants, or one)."

    def add_arguments(self, parser):
        parser.add_argument("tenant", nargs="?", default=None, help="Only this tenant's runs (slug or id).")
        parser.add_argument("--limit", type=int, default=50, help="At most this many runs (default 50).")
        self.add_json_argument(parser)

    def handle(self, *args, tenant, limit, as_json, **options):
        rows = services.run_history(services.get_tenant(tenant) if tenant else None, limit)
        if as_json:
            self.print_json(rows)
            return
        if not rows:
            self.stdout.write("no runs")
            return
        self.stdout.write(table(
            [[r["run_id"], r["tenant"], r["kind"] + (" (dry)" if r["dry_run"] else " (online)" if r["online"] else ""),
              f"{r['source']}->{r['target']}", r["status"], r["current_step"] or "",
              "-" if r["progress_percent"] is None else f"{r['progress_percent']:.0f}%",
              r["rows_copied"], services.human_duration(r["seconds"]),
              "-" if r["rows_per_second"] is None else f"{r['rows_per_second']:,.0f}",
              (r["error"] or "")[:80]] for r in rows],
            ["id", "tenant", "kind", "move", "status", "step", "progress", "rows", "time", "rows/s", "error"]))
