"""Run history: one MigrationRun per move, one MigrationStep per step. Thin on purpose; the
engine lives in migration_jobs/engine and migration_jobs/runs/."""
from django.conf import settings
from django.db import models
from django.utils import timezone

from tenancy import refusal


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class RunKind(models.TextChoices):
    MOVE = "move", "Move to dedicated"
    MOVE_BACK = "move_back", "Move back to shared"
    RETIRE = "retire", "Retire legacy rows"


class MigrationRun(models.Model):
    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.PROTECT, related_name="migration_runs")
    kind = models.CharField(max_length=10, choices=RunKind.choices, default=RunKind.MOVE)
    source_placement = models.CharField(max_length=10)
    target_placement = models.CharField(max_length=10)
    target_server = models.ForeignKey("tenancy.DatabaseServer", on_delete=models.PROTECT, null=True, blank=True,
                                      related_name="+")
    target_database = models.CharField(max_length=63, blank=True, default="")
    target_schema = models.CharField(max_length=63, blank=True, default="")
    online = models.BooleanField(default=False)
    dry_run = models.BooleanField(default=False)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="+")
    requested_via = models.CharField(max_length=20, default="command")
    status = models.CharField(max_length=12, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    current_step = models.CharField(max_length=40, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=100, blank=True, default="")
    rows_total = models.BigIntegerField(default=0, help_text="Estimated rows to copy (from preflight).")
    rows_copied = models.BigIntegerField(default=0)
    bytes_copied = models.BigIntegerField(default=0)
    rows_per_second = models.FloatField(null=True, blank=True)
    freeze_seconds = models.FloatField(null=True, blank=True, help_text="Length of an online move's cutover freeze.")
    writes_refused_seconds = models.FloatField(
        null=True, blank=True, help_text="How long the tenant's writes were refused: offline, from suspend to "
                                         "reactivate; online, the cutover's freeze. The one downtime figure.")
    freeze_started_at = models.DateTimeField(null=True, blank=True)
    freeze_ended_at = models.DateTimeField(null=True, blank=True)
    # Online moves: the catch-up lag, live, and the staff's controls over the cutover.
    lag_changes = models.BigIntegerField(null=True, blank=True, help_text="Captured changes not applied yet.")
    lag_seconds = models.FloatField(null=True, blank=True, help_text="Age of the oldest unapplied change.")
    hold_cutover = models.BooleanField(default=False, help_text="Keep the target in sync; cut over when cleared.")
    read_percent = models.PositiveSmallIntegerField(
        default=0, help_text="Share of the tenant's read-only requests served from the target while in sync.")
    cancel_requested = models.BooleanField(
        default=False, help_text="Staff asked to cancel: the worker rolls back at its next safe point.")
    previous_status = models.CharField(max_length=10, blank=True, default="",
                                       help_text="Tenant status before the run, restored at the end or on rollback.")
    # Progress over time for the run page's chart: [{"t": iso, "rows": n, "rows_per_second": x, "lag": n}, ...]
    samples = models.JSONField(default=list, blank=True)
    # A held online move waits in the database, not in a worker: the next catch-up round is due then.
    next_round_at = models.DateTimeField(null=True, blank=True)
    # Health after the switch: smoke check timings, latency/error before and after, regression flag.
    health = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    report = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # The database, not only the code, refuses a second active run for a tenant.
            models.UniqueConstraint(fields=["tenant"], condition=models.Q(status__in=["queued", "running"]),
                                    name="one_active_run_per_tenant"),
        ]

    def __str__(self):
        return (f"run {self.pk}: {self.tenant} {self.source_placement}->{self.target_placement} "
                f"({self.get_status_display().lower()})")

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def duration(self):
        if not self.started_at:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def progress_percent(self) -> float | None:
        total = self.rows_expected
        if not total:
            return None
        return min(100.0, 100.0 * self.rows_copied / total)

    @property
    def rows_expected(self) -> int:
        """The rows to copy: the preflight's estimate, the exact count once the run succeeded."""
        return self.rows_copied if self.status == RunStatus.SUCCEEDED and self.rows_copied else self.rows_total

    def steps_report(self) -> list[dict]:
        """The steps as plain data: the run's recorded summary, `--json` and the API."""
        return [{"name": s.name, "status": s.status, "rows": s.rows, "message": s.message,
                 "seconds": round(s.duration.total_seconds(), 3) if s.duration else None}
                for s in self.steps.all()]


class StepStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    SKIPPED = "skipped"


class MigrationStep(models.Model):
    run = models.ForeignKey(MigrationRun, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=40)
    order = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=12, choices=StepStatus.choices, default=StepStatus.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    rows = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    message = models.TextField(blank=True, default="")
    details = models.JSONField(default=dict, blank=True,
                               help_text="What the step needs to resume or roll back (never a secret).")

    class Meta:
        ordering = ["run", "order"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="one_step_per_name")]

    def __str__(self):
        return f"{self.order}. {self.name} ({self.status})"

    @property
    def duration(self):
        if not self.started_at:
            return None
        return (self.finished_at or timezone.now()) - self.started_at


# --- The expected remaining refusal of a migrating tenant (its requests' Retry-After) --------

AFTER_COPY_STEPS = ("sequences", "verify", "switch", "reactivate")


def expected_refusal_seconds(tenant_id: int) -> float | None:
    """Seconds the tenant's writes are still expected to be refused by its running move, or
    None when that cannot be told. Online: only the cutover's freeze refuses writes (well
    under a second). Offline: the copy left at its rate so far, then about half a copy's time
    for verifying; before the copy has a rate, None (the configured Retry-After)."""
    run = (MigrationRun.objects.filter(tenant_id=tenant_id, status=RunStatus.RUNNING)
           .only("online", "current_step", "rows_total", "rows_copied", "rows_per_second").first())
    if run is None:
        return None
    if run.online:
        return 1.0
    rate, total = run.rows_per_second or 0.0, run.rows_total or 0
    if rate <= 0 or total <= 0:
        return None
    verify = 0.5 * total / rate
    if run.current_step in AFTER_COPY_STEPS:
        return verify + 1.0
    return max(total - run.rows_copied, 0) / rate + verify + 1.0


refusal.register(expected_refusal_seconds)


# --- Tenant sizes over time (the candidates list's "growth since last look") --------------------

class TenantSizeSample(models.Model):
    """A tenant's rows and size as the candidates list saw them (at most one per tenant per
    hour, services.candidates): the next look compares with it."""

    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.CASCADE, related_name="size_samples")
    taken_at = models.DateTimeField(default=timezone.now)
    rows = models.BigIntegerField()
    size_bytes = models.BigIntegerField()
    estimated = models.BooleanField(help_text="The figures came from PostgreSQL's statistics, not exact counts.")

    class Meta:
        ordering = ["tenant", "-taken_at"]
        indexes = [models.Index(fields=["tenant", "-taken_at"], name="size_sample_tenant_time")]

    def __str__(self):
        return f"{self.tenant_id} at {self.taken_at:%Y-%m-%d %H:%M}: {self.rows} rows"
