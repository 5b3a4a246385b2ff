"""What reusing the legacy rows saves a move back (see benchmarks/move_back.py)."""
import json

from django.core.management.base import CommandError

from benchmarks.management.base import BenchCommand
from benchmarks.move_back import format_report, run_move_back_benchmark


class Command(BenchCommand):
    help = "Benchmark moves back: legacy rows reused against everything copied (after retirement)."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--changes", type=int, default=100, help="customers changed in the dedicated place")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        if options["rows"] < 1000 or options["changes"] < 0:
            raise CommandError("--rows must be >= 1000 and --changes >= 0", returncode=2)
        report = run_move_back_benchmark(options["rows"], changes=options["changes"],
                                         say=lambda m: self.stderr.write(m))
        self.stdout.write(format_report(report))
        if options["json"]:
            self.stdout.write(json.dumps(report))
