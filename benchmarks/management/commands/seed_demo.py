"""`manage.py seed_demo`: demo tenants of skewed sizes in the shared database (see benchmarks.seeding)."""
import sys

from tqdm import tqdm

from benchmarks import seeding
from benchmarks.management.base import BenchCommand


class Command(BenchCommand):
    help = ("Create demo tenants in the shared database with generated shop rows: a few large, many small, "
            "the same rows for the same --seed. Refuses when demo tenants exist, unless --reset.")

    def add_arguments(self, parser):
        parser.add_argument("--tenants", type=int, default=20, help="number of tenants (default 20)")
        parser.add_argument("--largest", type=int, default=200_000,
                            help="minimum rows of the largest tenant, summed over the shop tables (default 200000)")
        parser.add_argument("--seed", type=int, default=42, help="seed of the generated data (default 42)")
        parser.add_argument("--reset", action="store_true",
                            help="first delete the existing demo tenants and their rows (all must still be shared)")
        parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
        parser.add_argument("--if-empty", action="store_true",
                            help="do nothing (exit 0) when demo tenants exist already, as `make demo` run twice")

    def handle(self, *args, tenants, largest, seed, reset, quiet, if_empty, **options):
        quiet = quiet or options["verbosity"] == 0
        if if_empty and not reset:
            existing = seeding.demo_tenants().count()
            if existing:
                self.stdout.write(f"{existing} demo tenants exist already: kept as they are "
                                  "(seed_demo --reset rebuilds them)")
                return
        planned = seeding.plan(tenants, largest)
        bar = None
        if not quiet and sys.stderr.isatty():
            bar = tqdm(total=sum(target for _, _, target in planned), unit="row", unit_scale=True,
                       file=sys.stderr, desc="seed_demo", dynamic_ncols=True)

        def progress(slug, table, rows):
            if bar.n + rows > bar.total:  # row counts are planned, not exact
                bar.total = bar.n + rows
            bar.set_postfix_str(f"{slug} {table}".strip(), refresh=not rows)
            if rows:
                bar.update(rows)

        try:
            result = seeding.seed(tenants=tenants, largest=largest, seed=seed, reset=reset,
                                  progress=progress if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        if quiet:
            return
        if result.reset_tenants:
            self.stdout.write(f"Deleted {len(result.reset_tenants)} existing demo tenant(s).")
        if options["verbosity"] >= 2:
            for tenant in result.tenants:
                self.stdout.write(f"  {tenant.slug:<24} {tenant.total_rows:>10,} rows")
            mode = "indexes rebuilt" if result.bulk_load else "indexes maintained row by row"
            self.stdout.write(f"  seconds by phase ({mode}): "
                              + ", ".join(f"{name} {seconds:.1f}" for name, seconds in result.phases.items()))
        largest_tenant = result.largest
        self.stdout.write(self.style.SUCCESS(
            f"Seeded {len(result.tenants)} tenants, {result.total_rows:,} rows "
            f"(largest {largest_tenant.slug}: {largest_tenant.total_rows:,}) in {result.seconds:.1f} s, "
            f"{result.rows_per_second:,.0f} rows/s (seed {result.seed})."))
