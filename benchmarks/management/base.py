"""The base of the benchmark and demo commands: the project's command contract (one `error:`
line, exit 0 / 1 / 2, see migration_jobs.management.base) with the benchmarks' own errors
added: a benchmark that cannot run (BenchError) is refused with 2, a seeding that fails
(SeedError) exits 1."""
from benchmarks.bench_tenants import BenchError
from benchmarks.seeding import SeedError
from migration_jobs.management.base import EXIT_STATUSES, TenantCommand


class BenchCommand(TenantCommand):
    exit_statuses = {**EXIT_STATUSES, BenchError: 2, SeedError: 1}
