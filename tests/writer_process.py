"""One tenant's writer in a process of its own, like another app server, for
tests/test_killed_worker.py.

    python tests/writer_process.py <tenant id> <log file> <seed> <pause seconds>

Inserts, updates and deletes the tenant's customers through the ORM and the product's
routing (it follows a move the way an app server does), and appends one JSON line to the log
file per write the database acknowledged (committed), flushed at once:

    ["set", <customer id>, <loyalty points>, <time>]     inserted or updated
    ["del", <customer id>, null, <time>]                 deleted
    ["refused", null, null, <time>]                      refused (frozen tenant): not written
    ["error", "<repr>", null, <time>]                    anything else: the test fails on it
    ["stopped", <acknowledged>, <refused>, <time>]       last line, after SIGTERM

It only ever touches rows it created itself. The environment points it at the database
(DJANGO_SETTINGS_MODULE, APP_DATABASE_NAME, ...): the test passes the same as to the worker.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    tenant_id, log_path, seed, pause = int(argv[1]), Path(argv[2]), int(argv[3]), float(argv[4])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.db import close_old_connections, transaction
    from django.utils import timezone

    from shop.models import Customer
    from tenancy.context import tenant_context
    from tenancy.exceptions import TenantWriteRefused

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    rand = random.Random(seed)
    mine: dict[int, int] = {}  # customer id -> loyalty points, as acknowledged
    acknowledged = refused = 0

    def write():
        choice = rand.random()
        with tenant_context(tenant_id), transaction.atomic():
            if choice < 0.5 or len(mine) < 5:
                c = Customer.objects.create(first_name="w", last_name="writer", created_at=timezone.now(),
                                            loyalty_points=rand.randint(0, 10 ** 6))
                return "set", c.pk, c.loyalty_points
            pk = rand.choice(list(mine))
            if choice < 0.85:
                points = rand.randint(0, 10 ** 6)
                if Customer.objects.filter(pk=pk).update(loyalty_points=points) != 1:
                    raise LookupError(f"acknowledged customer {pk} is gone")
                return "set", pk, points
            if Customer.objects.filter(pk=pk).delete()[0] != 1:
                raise LookupError(f"acknowledged customer {pk} is gone")
            return "del", pk, None

    with log_path.open("a", buffering=1) as out:
        def record(*item):
            out.write(json.dumps([*item, time.time()]) + "\n")
            out.flush()

        while not stopping:
            try:
                kind, pk, points = write()
            except TenantWriteRefused:
                refused += 1
                record("refused", None, None)
            except Exception as exc:  # noqa: BLE001 - the database's fence refusing is expected
                text = str(exc)
                if "refuses writes" in text or "is migrating" in text:
                    refused += 1
                    record("refused", None, None)
                else:
                    record("error", repr(exc)[:500], None)
                close_old_connections()
            else:
                acknowledged += 1
                if kind == "set":
                    mine[pk] = points
                else:
                    mine.pop(pk, None)
                record(kind, pk, points)
            time.sleep(pause)
        record("stopped", acknowledged, refused)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
