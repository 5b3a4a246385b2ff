"""Read the per-minute request figures back: a tenant's requests, errors, error rate and
p50/p95 latency over a window, or the same for every tenant with traffic in it (/metrics).

Percentiles come from the fixed latency buckets (monitoring.models.LATENCY_BUCKETS_MS): the
bucket holding the rank, interpolated linearly inside it (the slowest bucket ends at the
slowest request seen), so an estimate is never off by more than its bucket's width.
One query per call, over at most one row per tenant and minute (the (tenant, minute) index).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from monitoring.models import BUCKET_COUNT, LATENCY_BUCKETS_MS
from tenancy.models import Tenant

# One sum per bucket (buckets[1] .. buckets[BUCKET_COUNT]): no unnest, one pass over the rows.
BUCKET_SUMS = ", ".join(f"sum(buckets[{i}])::bigint" for i in range(1, BUCKET_COUNT + 1))
WINDOW_SQL = """
SELECT tenant_id, sum(requests)::bigint AS total, sum(errors)::bigint, sum(latency_ms_sum), max(latency_ms_max),
       {bucket_sums}
  FROM monitoring_requestminute
 WHERE minute >= %(start)s AND minute < %(end)s {tenant_filter}
 GROUP BY tenant_id
HAVING sum(requests) > 0
 ORDER BY total DESC, tenant_id
 {limit}
"""


@dataclass
class Window:
    """A tenant's figures over a window. Latencies in ms; None without requests."""
    requests: int = 0
    errors: int = 0
    ms_sum: float = 0.0
    ms_max: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * BUCKET_COUNT)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def mean_ms(self) -> float | None:
        return self.ms_sum / self.requests if self.requests else None

    def quantile_ms(self, q: float) -> float | None:
        return quantile_from_buckets(self.buckets, q, self.ms_max)

    def as_dict(self) -> dict:
        def rounded(value):
            return None if value is None else round(value, 2)
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": None if self.error_rate is None else round(self.error_rate, 5),
                "p50_ms": rounded(self.quantile_ms(0.5)), "p95_ms": rounded(self.quantile_ms(0.95)),
                "mean_ms": rounded(self.mean_ms), "max_ms": rounded(self.ms_max) if self.requests else None}


def quantile_from_buckets(buckets: list[int], q: float, max_ms: float | None = None) -> float | None:
    """The q-quantile (0 < q <= 1) of latencies counted in the fixed buckets, interpolated
    linearly inside the bucket that holds it; None when the buckets are empty."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = LATENCY_BUCKETS_MS[index - 1] if index > 0 else 0.0
            upper = LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else (max_ms or lower)
            if max_ms is not None and lower <= max_ms < upper:
                upper = max_ms  # nothing slower than the slowest request seen
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return max_ms


def windows(start: datetime, end: datetime, tenant_ids: list[int] | None = None,
            limit: int | None = None) -> dict[int, Window]:
    """{tenant id: Window} over [start, end) for tenants with requests in it (the busiest
    first, at most `limit`), in one query."""
    params = {"start": start, "end": end}
    tenant_filter = ""
    if tenant_ids is not None:
        tenant_filter = "AND tenant_id = ANY(%(tenants)s)"
        params["tenants"] = list(tenant_ids)
    limit_sql = ""
    if limit is not None:
        limit_sql = "LIMIT %(limit)s"
        params["limit"] = int(limit)
    with connection.cursor() as cursor:
        cursor.execute(WINDOW_SQL.format(bucket_sums=BUCKET_SUMS, tenant_filter=tenant_filter, limit=limit_sql),
                       params)
        rows = cursor.fetchall()
    return {tenant_id: Window(requests, errors, float(ms_sum or 0.0), float(ms_max or 0.0),
                              [int(n or 0) for n in buckets])
            for tenant_id, requests, errors, ms_sum, ms_max, *buckets in rows}


def window(tenant_id: int, start: datetime, end: datetime) -> Window:
    return windows(start, end, [tenant_id]).get(tenant_id) or Window()


def latency_window(tenant_id: int, start: datetime, end: datetime) -> dict:
    """{requests, errors, error_rate, p50_ms, p95_ms, mean_ms, max_ms} of the tenant over
    [start, end); rates and latencies None without requests."""
    return window(tenant_id, start, end).as_dict()


def busiest_tenants(minutes: int, limit: int, now: datetime | None = None) -> list[tuple[str, Window]]:
    """[(tenant slug, Window)] over the last `minutes` complete minutes, for the `limit`
    tenants with the most requests in them (a bounded set of labels for /metrics)."""
    end = (now or timezone.now()).replace(second=0, microsecond=0)
    found = windows(end - timedelta(minutes=minutes), end, limit=limit)
    slugs = dict(Tenant.objects.filter(pk__in=list(found)).values_list("pk", "slug"))
    return [(slugs[tenant_id], figures) for tenant_id, figures in found.items() if tenant_id in slugs]
