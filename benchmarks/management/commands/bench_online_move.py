"""Freeze time of online moves under a steady write load (see benchmarks/online_move.py)."""
import json

from django.core.management.base import CommandError

from benchmarks.management.base import BenchCommand
from benchmarks.online_move import format_report, run_online_benchmark


class Command(BenchCommand):
    help = "Benchmark online moves: freeze time (median, max) under ~N writes/s, other tenants' throughput."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--runs", type=int, default=3)
        parser.add_argument("--rate", type=float, default=200.0, help="writes per second, per writer")
        parser.add_argument("--target", choices=["database", "schema"], default="database")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        if options["rows"] < 1000 or options["runs"] < 1 or options["rate"] <= 0:
            raise CommandError("--rows must be >= 1000, --runs >= 1 and --rate > 0", returncode=2)
        report = run_online_benchmark(options["rows"], runs=options["runs"], rate=options["rate"],
                                      target=options["target"], say=lambda m: self.stderr.write(m))
        self.stdout.write(format_report(report))
        if options["json"]:
            self.stdout.write(json.dumps(report))
