"""What recording per-tenant request health costs a request (see benchmarks/request_health.py)."""
import json

from benchmarks.management.base import BenchCommand
from benchmarks.request_health import format_report, run_request_health_benchmark


class Command(BenchCommand):
    help = "Benchmark the per-tenant request health middleware against no middleware and a write per request."

    def add_arguments(self, parser):
        parser.add_argument("--requests", type=int, default=1000)
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        report = run_request_health_benchmark(max(options["requests"], 1), max(options["rounds"], 1))
        self.stdout.write(format_report(report))
        if options["json"]:
            self.stdout.write(json.dumps(report))
