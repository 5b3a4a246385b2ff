"""What the steps of one run share: the run, its tables, its places, its fault hook, and the
bookkeeping a step records (details, progress)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from migration_jobs.engine.places import Place, database_place, schema_place, shared_place
from migration_jobs.engine.tables import TableSpec, tenant_tables
from migration_jobs.models import MigrationRun, MigrationStep, RunKind
from migration_jobs.runs.faults import NO_FAULTS, Faults
from tenancy.models import Placement, Tenant

# The run page's chart: a point at most this often (a newer one replaces the newest point until
# then), and at most this many points (the older half thinned to every other point).
SAMPLE_EVERY_SECONDS = 2.0
MAX_SAMPLES = 300


@dataclass
class RunContext:
    run: MigrationRun
    tables: list[TableSpec] = field(default_factory=tenant_tables)
    faults: Faults = NO_FAULTS
    # A queue worker: a held online move parks between catch-up rounds instead of waiting here.
    park_when_held: bool = False
    _samples_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

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

    def record_sample(self, rows_copied: int | None = None, lag_changes: int | None = None) -> None:
        """One point of the run page's chart in `run.samples`: {"t": iso time, "rows": rows copied,
        "rows_per_second": the rate since the point before, "lag": captured changes not applied}
        (None where the caller did not measure it). Points are kept at least SAMPLE_EVERY_SECONDS
        apart: until then a new one replaces the newest, so the last point is always current. The
        list stays under MAX_SAMPLES. Safe from the copy's worker threads."""
        now = timezone.now()
        with self._samples_lock:
            samples = list(self.run.samples or [])
            replaced = {}
            if len(samples) >= 2 and (now - _sample_time(samples[-2])).total_seconds() < SAMPLE_EVERY_SECONDS:
                replaced = samples.pop()
            base = samples[-1] if samples else None
            rate = None
            if rows_copied is not None:
                if base is not None and base.get("rows") is not None:
                    elapsed = (now - _sample_time(base)).total_seconds()
                    rate = max(rows_copied - base["rows"], 0) / elapsed if elapsed > 0 else None
                elif not rows_copied:
                    rate = 0.0
            point = {"t": now.isoformat(), "rows": rows_copied, "rows_per_second": rate, "lag": lag_changes}
            # A replaced point keeps what this call did not measure (a lag beside a copy's rows).
            point = {key: value if value is not None else replaced.get(key) for key, value in point.items()}
            samples.append(point)
            if len(samples) > MAX_SAMPLES:
                half = len(samples) // 2
                samples = samples[:half:2] + samples[half:]
            MigrationRun.objects.filter(pk=self.run.pk).update(samples=samples)
            self.run.samples = samples


def _sample_time(sample: dict) -> datetime:
    return datetime.fromisoformat(sample["t"])
