"""List capture objects that no running move owns: triggers, change logs, functions,
replication slots (a forgotten slot holds WAL forever) and publications, in the shared
database and in every dedicated tenant database."""
import json

import psycopg
from django.core.management.base import BaseCommand

from migration_jobs.engine.capture import leftovers
from migration_jobs.engine.places import database_place, shared_place
from migration_jobs.models import MigrationRun
from migration_jobs.runs.executor import lock_is_free
from tenancy.models import DatabaseCredential


class Command(BaseCommand):
    help = "List change-capture objects left behind by moves (exit status 1 when there are any)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        places = [shared_place()] + [database_place(c.server, c.database)
                                     for c in DatabaseCredential.objects.select_related("server")]
        running = set(MigrationRun.objects.filter(status__in=["queued", "running"]).values_list("pk", flat=True))
        found = []
        for place in places:
            try:
                with place.connect() as conn:
                    items = leftovers(conn)
            except psycopg.OperationalError as exc:
                found.append({"place": str(place), "kind": "unreachable", "name": type(exc).__name__})
                continue
            for item in items:
                owner = _run_id(item["name"])
                # A run marked running whose worker died holds nothing: its objects count too.
                live = owner in running and not lock_is_free(owner)
                item.update(place=str(place), run=owner, orphaned=not live)
                found.append(item)
        orphans = [f for f in found if f.get("orphaned", True)]
        if options["json"]:
            self.stdout.write(json.dumps(found))
        elif not found:
            self.stdout.write("No capture objects anywhere.")
        else:
            for item in found:
                state = f"in use by run {item['run']}" if not item.get("orphaned", True) else (
                    f"LEFT BY run {item['run']} (its worker is gone: resume or roll it back)"
                    if item.get("run") in running else "ORPHANED")
                self.stdout.write(f"{item['place']}: {item['kind']} {item['name']} - {state}")
        if orphans:
            raise SystemExit(1)


def _run_id(name: str):
    import re

    match = re.search(r"tenant_move_(?:capture|log)_(\d+)", name)
    return int(match.group(1)) if match else None
