"""What the steps of one run share: the run, its tables, its places, its fault hook, and the
bookkeeping a step records (details, progress)."""
from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone

from migration_jobs.engine.places import Place, database_place, schema_place, shared_place
from migration_jobs.engine.tables import TableSpec, tenant_tables
from migration_jobs.models import MigrationRun, MigrationStep, RunKind
from migration_jobs.runs.faults import NO_FAULTS, Faults
from tenancy.models import Placement, Tenant


@dataclass
class RunContext:
    run: MigrationRun
    tables: list[TableSpec] = field(default_factory=tenant_tables)
    faults: Faults = NO_FAULTS
    # A queue worker: a held online move parks between catch-up rounds instead of waiting here.
    park_when_held: bool = False

    def checkpoint(self, name: str) -> None:
        self.faults.checkpoint(name)

    @property
    def tenant(self) -> Tenant:
        return self.run.tenant

    def refresh_tenant(self) -> Tenant:
        self.run.tenant = Tenant.objects.select_related().get(pk=self.run.tenant_id)
        return self.run.tenant

    @property
    def retires_dedicated(self) -> bool:
        """A retirement of the dedicated place a move back left (not of legacy shared rows)."""
        return self.run.kind == RunKind.RETIRE and self.run.target_placement == Placement.SHARED

    @property
    def reads_dedicated(self) -> bool:
        """The rows are read from the dedicated place: a move back, or retiring the place it left."""
        return self.run.kind == RunKind.MOVE_BACK or self.retires_dedicated

    @property
    def dedicated(self) -> Place:
        """The dedicated side: the target of a move out, the source of a move back."""
        run = self.run
        kind = run.source_placement if self.reads_dedicated else run.target_placement
        if kind == Placement.SCHEMA:
            return schema_place(run.target_schema)
        return database_place(run.target_server, run.target_database)

    @property
    def source(self) -> Place:
        """Where the rows are read from (for a retirement: the legacy rows)."""
        return self._share(self.dedicated if self.reads_dedicated else shared_place())

    @property
    def target(self) -> Place:
        return self._share(self.dedicated if self.run.kind == RunKind.MOVE else shared_place())

    def _share(self, place: Place) -> Place:
        # An online move shares the servers with the tenant's and everyone else's traffic.
        return place.gentle() if self.run.online else place

    @property
    def copy_workers(self) -> int:
        """Parallel table copies: fewer online, where the copy's length costs no downtime but
        every core it takes is missed by the other tenants' requests."""
        return settings.MIGRATION_ONLINE_COPY_WORKERS if self.run.online else settings.MIGRATION_COPY_WORKERS

    def step(self, name: str) -> MigrationStep:
        return self.run.steps.get(name=name)

    def save_details(self, step: MigrationStep, **details) -> None:
        step.details = {**step.details, **details}
        MigrationStep.objects.filter(pk=step.pk).update(details=step.details)

    def progress(self, rows: int | None = None, bytes_: int | None = None) -> None:
        fields = {"heartbeat_at": timezone.now()}
        if rows is not None:
            fields["rows_copied"] = rows
            started = self.run.started_at or timezone.now()
            elapsed = max((timezone.now() - started).total_seconds(), 1e-6)
            fields["rows_per_second"] = rows / elapsed
        if bytes_ is not None:
            fields["bytes_copied"] = bytes_
        MigrationRun.objects.filter(pk=self.run.pk).update(**fields)
        for key, value in fields.items():
            setattr(self.run, key, value)
