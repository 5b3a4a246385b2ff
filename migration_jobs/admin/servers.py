"""The database server list shows each server's capacity (services.capacity): tenant
databases against its limit, and connections in use against max_connections, read live
for the servers of the page only, in parallel, within a few seconds in all; a server that
does not answer shows "unreachable" (never the error: it may quote connection details)."""
from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList

from migration_jobs.services import capacity
from tenancy.admin import DatabaseServerAdmin

# The list page waits at most about this long for all its servers together.
LIST_TIMEOUT = 2


class ServerChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        found = capacity.capacities(self.result_list, timeout=LIST_TIMEOUT)
        for server, cap in zip(self.result_list, found):
            server.capacity = cap


def capacity_note(cap: capacity.Capacity) -> str:
    """One phrase for a server choice (the move confirmation page): its room, and whether a
    move there would be refused for capacity."""
    limit = "no limit" if cap.limit is None else cap.limit
    note = f"{cap.tenant_databases} / {limit} tenant databases, " + (
        f"{cap.load.free} free connections" if cap.load is not None else cap.problem or "connections not read")
    if not cap.refusal():
        return note
    return f"{note} ({'' if cap.problem else 'full: '}a move there is refused)"  # unreachable is not full


@admin.display(description="tenant databases")
def tenant_databases(server):
    cap = getattr(server, "capacity", None)
    if cap is None:
        return "—"
    limit = "no limit" if cap.limit is None else cap.limit
    moving = f" ({cap.moving} moving in)" if cap.moving else ""
    return f"{cap.tenant_databases} / {limit}{moving}"


@admin.display(description="connections")
def connections(server):
    cap = getattr(server, "capacity", None)
    if cap is None:
        return "—"
    if cap.load is None:
        return cap.problem or "—"
    return f"{cap.load.used} / {cap.load.max_connections} ({cap.load.free} free)"


DatabaseServerAdmin.get_changelist = lambda self, request, **kwargs: ServerChangeList
for column in (tenant_databases, connections):
    if column not in DatabaseServerAdmin.list_display:
        DatabaseServerAdmin.list_display = [*DatabaseServerAdmin.list_display, column]
