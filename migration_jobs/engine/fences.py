"""Write fences around one tenant's rows in one place, as whole operations (the fence-table
primitives are in capture.py, the triggers that read it in guard.py). A *frozen* tenant's rows refuse writes while it is
being moved; *legacy* rows are the ones a tenant left behind in the place it moved away from,
fenced the same way until they are retired. Each function opens its own connection unless
given one, and is idempotent."""
from __future__ import annotations

from migration_jobs.engine import capture
from migration_jobs.engine.places import Place
from migration_jobs.engine.tables import TableSpec


def freeze(place: Place, tenant_id: int, slug: str, tables: list[TableSpec], reason: str) -> None:
    """Every write to the tenant's rows in `place` fails from now on (the guard + a fence row)."""
    with place.connect() as conn:
        capture.install_fence(conn, place, tenant_id, slug, tables)
        capture.close_fence(conn, place, tenant_id, reason, slug=slug)


def close(place: Place, tenant_id: int, reason: str, conn=None, slug: str = "") -> None:
    """Refuse writes through the guard installed earlier. With `conn`: on that open
    connection, whose fence objects must exist already (the cutover's freeze)."""
    if conn is not None:
        capture.close_fence(conn, place, tenant_id, reason, slug=slug, ensure=False)
        return
    with place.connect() as own:
        capture.close_fence(own, place, tenant_id, reason, slug=slug)


def reopen(place: Place, tenant_id: int) -> None:
    """Writes allowed again (the fence row goes; the shared guard stays)."""
    with place.connect() as conn:
        capture.open_fence(conn, place, tenant_id)


def remove(place: Place, tenant_id: int, tables: list[TableSpec]) -> None:
    """No fence left at all for the tenant in `place`."""
    with place.connect() as conn:
        capture.remove_fence(conn, place, tenant_id, tables)

