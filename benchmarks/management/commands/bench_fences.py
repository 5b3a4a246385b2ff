"""What fences cost a staying tenant's writes (see benchmarks/fence_cost.py)."""
import json

from benchmarks.fence_cost import format_report, run_fence_benchmark
from benchmarks.management.base import BenchCommand


class Command(BenchCommand):
    help = ("Benchmark a staying tenant's single-row and bulk insert with 0, 100 and 1,000 fenced tenants: "
            "per-tenant fence triggers (the earlier design) against the guard.")

    def add_arguments(self, parser):
        parser.add_argument("--fenced", default="0,100,1000", help="fenced tenant counts, comma-separated")
        parser.add_argument("--inserts", type=int, default=2000, help="single-row inserts per configuration and round")
        parser.add_argument("--bulk-rows", type=int, default=10_000)
        parser.add_argument("--rounds", type=int, default=2)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        counts = sorted({0, *(int(n) for n in options["fenced"].split(",") if n.strip())})  # 0: the reference
        report = run_fence_benchmark(tuple(counts), inserts=max(options["inserts"], 10),
                                     bulk_rows=max(options["bulk_rows"], 1), rounds=max(options["rounds"], 1))
        self.stdout.write(format_report(report))
        if options["json"]:
            self.stdout.write(json.dumps(report))
