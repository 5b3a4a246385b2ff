"""Benchmark moving one tenant: a row-by-row script (batches of 1000, one INSERT per row), a bare binary COPY pipe, the
engine's copy step and the engine's full run, on the same generated tenant, in one process.

    manage.py bench_migration --rows 200000 --rows 1000000 --target database
    manage.py bench_migration --rows 200000 --target schema --repeat 3
    manage.py bench_migration --compare            # 50k, 200k and 1M rows, as issue 13 asks
    manage.py bench_migration --compare --rows 50000

`--compare`: the bare binary pipe into a database, a bare INSERT ... SELECT into a schema, and
the engine's full runs to a database and to a schema with every step's seconds and round
trips, the verify step's rows/s, and the ratios of the issue's goals (benchmarks.move_compare).

Prints one table per size (seconds, rows/s, ratios, peak RSS) and, for several sizes, how
the engine's memory grows with the tenant. Benchmark tenants (`bench_<rows>`) and their
targets are removed at the end unless --keep. Exit status 1 if any copy was wrong.
"""
import logging

from django.core.management.base import CommandError

from benchmarks import move_compare, move_out
from benchmarks.management.base import BenchCommand


class Command(BenchCommand):
    help = "Benchmark tenant moves: row-by-row vs bare COPY vs the engine's copy step vs a full run."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, action="append", metavar="N",
                            help="Rows of a benchmark tenant (repeatable; default 200000).")
        parser.add_argument("--target", choices=["database", "schema"], default="database")
        parser.add_argument("--baseline-limit", type=int, default=50_000, metavar="N",
                            help="Rows the row-by-row baseline (a) copies at most (0: no cap). Default 50000.")
        parser.add_argument("--repeat", type=int, default=1, help="Runs per method; the median is reported.")
        parser.add_argument("--keep", action="store_true",
                            help="Keep the benchmark tenants and the last targets (for inspection).")
        parser.add_argument("--compare", action="store_true",
                            help="Whole moves vs bare pipe / INSERT ... SELECT, step by step (default sizes 50000 "
                                 "and 1000000); --target, --baseline-limit, --repeat, --keep do not apply.")

    def handle(self, *args, rows, target, baseline_limit, repeat, keep, compare, **options):
        def say(text):
            self.stdout.write(text)
            self.stdout.flush()

        engine_log = logging.getLogger("migration_jobs")
        level = engine_log.level
        if options["verbosity"] < 2:
            engine_log.setLevel(logging.WARNING)  # per-table INFO lines would break up the tables
        try:
            if compare:
                results = move_compare.run_compare(rows or [50_000, 200_000, 1_000_000], say=say)
            else:
                results = move_out.run_benchmark(rows or [200_000], kind=target,
                                                 baseline_limit=baseline_limit or None, repeat=repeat, keep=keep,
                                                 say=say)
        finally:
            engine_log.setLevel(level)
        if compare:
            failed = [r.slug for r in results if not r.ok]
        else:
            failed = [f"{r.slug} {m}" for r in results for m, runs in r.runs.items() if not all(x.ok for x in runs)]
        if failed:
            raise CommandError(f"copies that did not match the source: {', '.join(failed)}", returncode=1)
