"""The smoke check after a switch: read a few rows of every tenant table through the router,
as the tenant's next requests will (tenant_context: its route, fresh from the switch; its
schema and role, or its dedicated database's alias), and time each read.

It never raises: a table that cannot be read is recorded with its error class and message
(no connection detail: database errors name tables and columns, not passwords), and the
check is `ok: false`. The first read includes opening the connection, as the first request
after a move does.
"""
from __future__ import annotations

import time

from django.db import connections, router, transaction

from migration_jobs.engine.tables import tenant_models
from tenancy.context import tenant_context

ROWS = 5


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def smoke_check(tenant_id: int, rows: int = ROWS) -> dict:
    """{"ok", "placement", "tables": {table: {"rows", "ms"} or {"error", "ms"}}, "total_ms",
    "error"}: `rows` rows (by primary key) of each tenant table, read as the tenant."""
    tables: dict[str, dict] = {}
    result = {"ok": True, "placement": None, "tables": tables, "total_ms": 0.0, "error": None}
    started = time.perf_counter()
    alias, opened_here = None, False
    try:
        with tenant_context(tenant_id) as route:
            result["placement"] = route.placement
            alias = route.db_alias
            opened_here = alias is not None and (alias not in connections or connections[alias].connection is None)
            for model in tenant_models():
                table_started = time.perf_counter()
                try:
                    with transaction.atomic(using=router.db_for_read(model)):  # a failed read breaks nothing
                        found = len(list(model._default_manager.order_by("pk")[:rows]))  # every column
                    tables[model._meta.db_table] = {"rows": found, "ms": _ms(table_started)}
                except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
                    result["ok"] = False
                    tables[model._meta.db_table] = {"error": _error(exc), "ms": _ms(table_started)}
    except Exception as exc:  # noqa: BLE001 - the route itself failed: recorded, never raised
        result["ok"], result["error"] = False, _error(exc)
    finally:
        if opened_here and alias in connections:
            connections[alias].close()  # a worker keeps no connection to every tenant it moved
    result["total_ms"] = _ms(started)
    return result


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
