"""Per-tenant request health, aggregated per minute: one row per (tenant, minute), never one
per request. monitoring/middleware.py adds to these rows from every process (an upsert that
adds counts), monitoring/health.py reads windows of them (p50/p95 estimated from buckets).
"""
from django.contrib.postgres.fields import ArrayField
from django.db import models

# Upper bounds (ms) of the latency buckets; one more bucket counts everything slower.
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
BUCKET_COUNT = len(LATENCY_BUCKETS_MS) + 1


def empty_buckets() -> list[int]:
    return [0] * BUCKET_COUNT


class RequestMinute(models.Model):
    # No database FK: a batch of upserts must not fail for a tenant deleted meanwhile, and
    # readers join on tenancy_tenant anyway.
    tenant = models.ForeignKey("tenancy.Tenant", on_delete=models.DO_NOTHING, db_constraint=False,
                               db_index=False, related_name="+")  # (tenant, minute) is unique: indexed
    minute = models.DateTimeField(help_text="Start of the minute (UTC).")
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0, help_text="Responses with a 5xx status.")
    latency_ms_sum = models.FloatField(default=0.0)
    latency_ms_max = models.FloatField(default=0.0)
    # buckets[i]: requests that took at most LATENCY_BUCKETS_MS[i] ms (and more than the
    # previous bound); the last one: slower than every bound. Not cumulative.
    buckets = ArrayField(models.BigIntegerField(), size=BUCKET_COUNT, default=empty_buckets)

    class Meta:
        db_table = "monitoring_requestminute"  # raw SQL in middleware.py and health.py names it
        ordering = ["-minute"]
        constraints = [models.UniqueConstraint(fields=["tenant", "minute"], name="one_row_per_tenant_minute")]
        indexes = [models.Index(fields=["minute"], name="requestminute_minute")]
        permissions = [("view_metrics", "Can read the Prometheus /metrics endpoint")]

    def __str__(self):
        return f"tenant {self.tenant_id} at {self.minute:%Y-%m-%d %H:%M}: {self.requests} requests"
