"""Verification speed on one tenant (see benchmarks/verify_speed.py)."""
import json

from benchmarks.management.base import BenchCommand
from benchmarks.verify_speed import format_report, run_verify_benchmark
from migration_jobs import services


class Command(BenchCommand):
    help = "Benchmark the row checksum of verification (current hash against md5) on one tenant's rows."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="slug or id, e.g. acme_repairs after seed_demo --largest 1000000")
        parser.add_argument("--rounds", type=int, default=2)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        report = run_verify_benchmark(services.get_tenant(options["tenant"]), rounds=max(options["rounds"], 1))
        self.stdout.write(format_report(report))
        if options["json"]:
            self.stdout.write(json.dumps(report))
