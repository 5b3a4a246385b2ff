"""The tenants that should move out of the shared database, biggest first.

    manage.py tenant_candidates [--json] [--exact] [--all]
"""
from migration_jobs.management.base import TenantCommand
from migration_jobs.management.commands._progress import table
from migration_jobs.services import candidates as found


class Command(TenantCommand):
    help = ("List the tenants that should move: shared tenants over TENANT_DEDICATED_THRESHOLD_ROWS rows and "
            "tenants whose dedicated reason (infrastructure, compliance) asks for a database of their own.")

    def add_arguments(self, parser):
        parser.add_argument("--exact", action="store_true", help="Count rows exactly (slower) instead of "
                                                                 "reading PostgreSQL's statistics.")
        parser.add_argument("--all", action="store_true", dest="include_all",
                            help="Every tenant, with its figures; those that should move first.")
        self.add_json_argument(parser)

    def handle(self, *args, exact, include_all, as_json, **options):
        items = found.candidates(exact=exact, include_all=include_all)
        if as_json:
            self.print_json({"threshold_rows": found.threshold_rows(), "exact": exact,
                             "tenants": [c.as_dict() for c in items]})
            return
        if not items:
            self.stdout.write(f"no tenant should move (threshold {found.threshold_rows():,} rows, no dedicated "
                              f"reason pending){'' if exact else '; ' + found.FOOTNOTE}")
            return

        def approx(c, text):
            return f"≈{text}" if c.estimated else text

        self.stdout.write(table(
            [[c.tenant.slug, c.placement,
              approx(c, f"{c.rows:,}") if c.rows is not None else c.problem,
              approx(c, found.human_bytes(c.size_bytes)) if c.size_bytes is not None else "-",
              found.human_growth(c), c.reason or "-"] for c in items],
            ["tenant", "placement", "rows", "size", "growth", "reason"]))
        if any(c.estimated for c in items):
            self.stdout.write(found.FOOTNOTE)
        self.stdout.write(f"{sum(c.should_move for c in items)} should move (threshold "
                          f"{found.threshold_rows():,} rows).")
