"""List capture objects that no running move owns: triggers, change logs, functions,
replication slots (a forgotten slot holds WAL forever) and publications, in the shared
database and in every dedicated tenant database.

Exit status 1 when there are any (SystemExit, also through call_command), 0 otherwise.
"""
import json

from migration_jobs import services
from migration_jobs.management.base import TenantCommand


class Command(TenantCommand):
    help = "List change-capture objects left behind by moves (exit status 1 when there are any)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        found = services.leftovers()
        orphans = [f for f in found if f.get("orphaned", True)]
        if options["json"]:
            self.stdout.write(json.dumps(found))
        elif not found:
            self.stdout.write("No capture objects anywhere.")
        else:
            for item in found:
                state = f"in use by run {item['run']}" if not item.get("orphaned", True) else (
                    f"LEFT BY run {item['run']} (its worker is gone: resume or roll it back)"
                    if item.get("active") else "ORPHANED")
                self.stdout.write(f"{item['place']}: {item['kind']} {item['name']} - {state}")
        if orphans:
            raise SystemExit(1)
