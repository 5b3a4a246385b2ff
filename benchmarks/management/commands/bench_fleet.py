"""Fleet moves under load (see benchmarks/fleet.py): a plan moving the biggest of N skewed
tenants to dedicated databases, online, 1, 2, 4 at once, on a real django-q2 cluster, while a
staying tenant writes; then the staying tenant's insert latency with 0 and 1,000 fenced tenants.

    manage.py bench_fleet                       # 40 tenants, largest ~60k rows, 20 moved, 1,2,4 at once
    manage.py bench_fleet --tenants 100 --largest 500000 --move 40 --parallel 2,4,8

Exit status 1 if any run failed or any moved tenant did not verify."""
import json
import logging

from django.core.management.base import CommandError

from benchmarks.fleet import format_report, run_fleet_benchmark
from benchmarks.management.base import BenchCommand


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CommandError(f"--parallel takes whole numbers separated by commas, got {text!r}", returncode=2) from None
    if not values or min(values) < 1:
        raise CommandError(f"--parallel takes whole numbers of at least 1, got {text!r}", returncode=2)
    return tuple(dict.fromkeys(values))


class Command(BenchCommand):
    help = ("Benchmark a fleet plan: the biggest tenants moved online to dedicated databases 1, 2, 4 at once on a "
            "django-q2 cluster while a staying tenant writes; and its insert latency with 0 and 1,000 fenced tenants.")

    def add_arguments(self, parser):
        parser.add_argument("--tenants", type=int, default=40, help="Tenants in the shared database (default 40).")
        parser.add_argument("--largest", type=int, default=60_000, help="Rows of the largest one (Zipf sizes).")
        parser.add_argument("--move", type=int, default=20, help="How many of the biggest the plan moves (default 20).")
        parser.add_argument("--parallel", default="1,2,4", help="Moves at once, one setting each (default 1,2,4).")
        # A pace the writer keeps with room to spare (one write at a time: ~20 ms each on a busy
        # 2-core machine would cap it near 50/s), so a lower rate means writes held back, not a
        # writer out of CPU.
        parser.add_argument("--rate", type=float, default=20.0, help="The staying tenant's writes per second.")
        parser.add_argument("--baseline", type=float, default=15.0,
                            help="Seconds of the staying tenant's writes measured before each plan (default 15).")
        parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds a plan may take before it is "
                                                                          "cancelled (default 1800).")
        parser.add_argument("--fenced", type=int, default=1000, help="Fenced tenants of the insert latency line.")
        parser.add_argument("--fence-inserts", type=int, default=2000, help="Single-row inserts per configuration "
                                                                            "and round of that line.")
        parser.add_argument("--keep", action="store_true", help="Keep the tenants, plans and the last setting's moves.")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        def say(text):
            self.stderr.write(text)
            self.stderr.flush()

        # Per-table and per-task INFO lines would break up the progress.
        quiet = [logging.getLogger(name) for name in ("migration_jobs", "django-q")]
        levels = [log.level for log in quiet]
        if options["verbosity"] < 2:
            for log in quiet:
                log.setLevel(logging.WARNING)
        try:
            report = run_fleet_benchmark(
                tenants=options["tenants"], largest=options["largest"], move=options["move"],
                parallel=_counts(options["parallel"]), rate=options["rate"], baseline=options["baseline"],
                timeout=options["timeout"], fenced=options["fenced"], fence_inserts=max(options["fence_inserts"], 10),
                keep=options["keep"], say=say)
        finally:
            for log, level in zip(quiet, levels):
                log.setLevel(level)
        self.stdout.write(format_report(report))
        if options["json"]:
            self.stdout.write(json.dumps(report))
        if not report["ok"]:
            raise CommandError("a run failed or a moved tenant did not verify (see the table)", returncode=1)
