"""Verification speed on one tenant (see benchmarks/verify_speed.py)."""
import json

from benchmarks.management.base import BenchCommand
from benchmarks.verify_speed import format_report, run_verify_benchmark
from migration_jobs import services


class Command(BenchCommand):
    help = ("Benchmark verification on one shared tenant's rows against a copy of them in a dedicated database, "
            "both sides at once: the verify of before, the current default and other row hashes and shapes.")

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="slug or id, e.g. acme_repairs after seed_demo --largest 1000000")
        parser.add_argument("--rounds", type=int, default=2)
        parser.add_argument("--keep", action="store_true",
                            help="keep the target copy (and reuse a kept one with the same row counts)")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        report = run_verify_benchmark(services.get_tenant(options["tenant"]), rounds=max(options["rounds"], 1),
                                      keep=options["keep"])
        self.stdout.write(format_report(report))
        if options["json"]:
            self.stdout.write(json.dumps(report))
