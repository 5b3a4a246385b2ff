"""Plans of many moves: a MovePlan and one MovePlanItem per tenant. Thin on purpose: what a
plan does lives in fleet/services.py; each item becomes an ordinary migration_jobs run."""
from django.conf import settings
from django.db import models


class Selection(models.TextChoices):
    CHOSEN = "chosen", "Chosen tenants"
    CANDIDATES = "candidates", "All candidates"
    SHARED = "shared", "All shared tenants"


class Order(models.TextChoices):
    BIGGEST_FIRST = "biggest_first", "Biggest first"
    SMALLEST_FIRST = "smallest_first", "Smallest first"
    AS_LISTED = "as_listed", "As listed"


class OnFailure(models.TextChoices):
    STOP = "stop", "Stop the plan"
    SKIP = "skip", "Skip that tenant and go on"


class PlanStatus(models.TextChoices):
    DRAFT = "draft"
    SCHEDULED = "scheduled"      # started, waiting for its window to open
    RUNNING = "running"
    PAUSED = "paused"            # no new moves start; running ones finish
    CANCELLING = "cancelling"    # no new moves; running ones are being cancelled and rolled back
    CANCELLED = "cancelled"
    DONE = "done"                # went through its list (some may have failed with on_failure=skip)
    FAILED = "failed"            # stopped by a failure (on_failure=stop)


# A plan in one of these holds its tenants: no other plan may take them.
OPEN_STATUSES = (PlanStatus.DRAFT, PlanStatus.SCHEDULED, PlanStatus.RUNNING, PlanStatus.PAUSED,
                 PlanStatus.CANCELLING)
# ... and in these it is advanced by its task (runs to start or to follow).
ADVANCING_STATUSES = (PlanStatus.SCHEDULED, PlanStatus.RUNNING, PlanStatus.PAUSED, PlanStatus.CANCELLING)
FINAL_STATUSES = (PlanStatus.CANCELLED, PlanStatus.DONE, PlanStatus.FAILED)


class ItemStatus(models.TextChoices):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


OPEN_ITEM_STATUSES = (ItemStatus.WAITING, ItemStatus.RUNNING)


class MovePlan(models.Model):
    name = models.CharField(max_length=200)
    selection = models.CharField(max_length=12, choices=Selection.choices, default=Selection.CHOSEN)
    target = models.CharField(max_length=10, choices=[("schema", "Dedicated schema"),
                                                      ("database", "Dedicated database")])
    servers = models.ManyToManyField("tenancy.DatabaseServer", blank=True, related_name="+",
                                     help_text="Database targets: several spread the tenants, least loaded first; "
                                               "none: the default server.")
    online = models.BooleanField(default=True)
    max_parallel = models.PositiveIntegerField(default=1, help_text="At most this many moves at once.")
    order = models.CharField(max_length=16, choices=Order.choices, default=Order.BIGGEST_FIRST)
    window_start = models.DateTimeField(null=True, blank=True, help_text="No move starts before.")
    window_end = models.DateTimeField(null=True, blank=True,
                                      help_text="No move starts that would not finish by then (estimate).")
    on_failure = models.CharField(max_length=4, choices=OnFailure.choices, default=OnFailure.STOP)
    status = models.CharField(max_length=10, choices=PlanStatus.choices, default=PlanStatus.DRAFT, db_index=True)
    error = models.TextField(blank=True, default="", help_text="Why the plan stopped, when it did.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.CheckConstraint(condition=models.Q(max_parallel__gte=1), name="plan_max_parallel_1"),
                       models.CheckConstraint(
                           condition=models.Q(window_start__isnull=True) | models.Q(window_end__isnull=True)
                           | models.Q(window_start__lt=models.F("window_end")), name="plan_window_in_order")]

    def __str__(self):
        return f"plan {self.pk}: {self.name} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class MovePlanItem(models.Model):
    plan = models.ForeignKey(MovePlan, on_delete=models.CASCADE, related_name="items")
    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.PROTECT, related_name="plan_items")
    position = models.PositiveIntegerField()
    rows = models.BigIntegerField(default=0, help_text="Rows counted when the plan was made.")
    estimate_seconds = models.FloatField(default=0.0, help_text="Expected duration of the move.")
    status = models.CharField(max_length=10, choices=ItemStatus.choices, default=ItemStatus.WAITING)
    run = models.ForeignKey("migration_jobs.MigrationRun", on_delete=models.SET_NULL, null=True, blank=True,
                            related_name="+")
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    notified = models.BooleanField(default=False, help_text="The tenant was told how its move ended.")
    resumed_at = models.DateTimeField(null=True, blank=True,
                                      help_text="When its run, interrupted by a worker that died, was last resumed.")

    class Meta:
        ordering = ["plan", "position"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "tenant"], name="one_item_per_tenant_per_plan"),
            # The database, not only the code, refuses a tenant in two plans at once.
            models.UniqueConstraint(fields=["tenant"], condition=models.Q(status__in=["waiting", "running"]),
                                    name="one_open_plan_item_per_tenant"),
        ]

    def __str__(self):
        return f"{self.position}. {self.tenant} ({self.status})"
