"""Run history, newest first: every tenant's, or one tenant's.

    manage.py migration_status [acme] [--limit 50] [--json]
"""
from migration_jobs import services
from migration_jobs.management.commands._progress import TenantCommand, human_duration, one_line, table
from migration_jobs.models import MigrationRun


def run_row(run: MigrationRun) -> dict:
    percent = run.progress_percent
    return {"run_id": run.pk, "tenant": run.tenant.slug, "kind": run.kind, "source": run.source_placement,
            "target": run.target_placement, "dry_run": run.dry_run, "online": run.online, "status": run.status,
            "current_step": run.current_step or None,
            "progress_percent": round(percent, 1) if percent is not None else None,
            "rows_copied": run.rows_copied, "rows_total": run.rows_total,
            "seconds": round(run.duration.total_seconds(), 3) if run.duration else None,
            "rows_per_second": round(run.rows_per_second, 1) if run.rows_per_second else None,
            "freeze_seconds": run.freeze_seconds, "created_at": run.created_at.isoformat(),
            "error": one_line(run.error) or None}


class Command(TenantCommand):
    help = "List tenant move runs, newest first (all tenants, or one)."

    def add_arguments(self, parser):
        parser.add_argument("tenant", nargs="?", default=None, help="Only this tenant's runs (slug or id).")
        parser.add_argument("--limit", type=int, default=50, help="At most this many runs (default 50).")
        self.add_json_argument(parser)

    def handle(self, *args, tenant, limit, as_json, **options):
        runs = MigrationRun.objects.select_related("tenant").order_by("-created_at", "-pk")
        if tenant:
            runs = runs.filter(tenant=services.get_tenant(tenant))
        rows = [run_row(run) for run in runs[:max(limit, 1)]]
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
              r["rows_copied"], human_duration(r["seconds"]),
              "-" if r["rows_per_second"] is None else f"{r['rows_per_second']:,.0f}",
              (r["error"] or "")[:80]] for r in rows],
            ["id", "tenant", "kind", "move", "status", "step", "progress", "rows", "time", "rows/s", "error"]))
