"""Preflight checks of a move, without moving: the same as `migrate_tenant --dry-run`.

    manage.py tenant_preflight acme --to database [--server NAME] [--json]

Records a dry-run MigrationRun (its preflight step only); changes nothing else. Exit status
0 when every check passed, 1 when one failed, 2 when the request was refused.
"""
from migration_jobs.management.commands.migrate_tenant import Command as MigrateTenant


class Command(MigrateTenant):
    help = "Check whether a tenant can be moved to a dedicated schema or database (changes nothing)."
    dry_run_only = True
