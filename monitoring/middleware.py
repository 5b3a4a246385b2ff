"""Times every request served for a tenant and adds it to that tenant's row of the minute.

Cheap by construction: a request costs a dictionary update in process memory (under a lock);
the process writes what it gathered at most every MONITORING_FLUSH_SECONDS, in one
`INSERT ... ON CONFLICT DO UPDATE` that *adds* its counts to the (tenant, minute) rows, so
any number of processes share the rows and a tenant costs one row per minute, never one per
request. The write runs as staff code (public schema, no tenant role) on the request's own
connection, after the response was timed, inside a savepoint: a failed write is logged and
dropped, never the request's problem.

It sits right after tenancy's TenantMiddleware, so it sees the requests that were served for
a tenant (request.tenant_route); what that middleware refuses by the tenant's status (503
while suspended or frozen by a move, 409 read-only) is the move's downtime, recorded on the
run, not the application's errors. A 5xx of the application (an exception included: Django
turns it into a 500 before it reaches here) counts as an error.

Flushing at process exit is best effort (atexit; a killed process loses at most the last
MONITORING_FLUSH_SECONDS of figures). MONITORING_FLUSH_SECONDS = 0 turns the automatic writes
off (the tests call `aggregator.flush()` themselves).
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
from bisect import bisect_left
from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from django.db import connection, transaction

from monitoring.models import BUCKET_COUNT, LATENCY_BUCKETS_MS, empty_buckets
from tenancy.context import no_tenant

log = logging.getLogger(__name__)

BATCH_ROWS = 500  # rows per INSERT statement
MAX_PENDING = 100_000  # tenant-minutes a process keeps at most while nothing is written
PRUNE_EVERY_SECONDS = 3600
PRUNE_BATCH_ROWS = 10_000

UPSERT = """
INSERT INTO monitoring_requestminute AS t
       (tenant_id, minute, requests, errors, latency_ms_sum, latency_ms_max, buckets)
VALUES {values}
ON CONFLICT (tenant_id, minute) DO UPDATE SET
    requests = t.requests + EXCLUDED.requests,
    errors = t.errors + EXCLUDED.errors,
    latency_ms_sum = t.latency_ms_sum + EXCLUDED.latency_ms_sum,
    latency_ms_max = GREATEST(t.latency_ms_max, EXCLUDED.latency_ms_max),
    buckets = ARRAY[{bucket_sums}]
"""
# Element by element: t.buckets[1] + EXCLUDED.buckets[1], ... (a fixed number of buckets).
BUCKET_SUMS = ", ".join(f"coalesce(t.buckets[{i}], 0) + EXCLUDED.buckets[{i}]" for i in range(1, BUCKET_COUNT + 1))
ROW = "(%s, %s, %s, %s, %s, %s, %s::bigint[])"
PRUNE = """
DELETE FROM monitoring_requestminute WHERE id IN (
    SELECT id FROM monitoring_requestminute WHERE minute < %s ORDER BY minute LIMIT %s)
"""


def bucket_index(ms: float) -> int:
    """The bucket a latency falls in: the first bound it does not exceed, else the last one."""
    return bisect_left(LATENCY_BUCKETS_MS, ms)


class Minute:
    """One tenant's figures for one minute, in memory until the next flush."""
    __slots__ = ("requests", "errors", "ms_sum", "ms_max", "buckets")

    def __init__(self):
        self.requests, self.errors, self.ms_sum, self.ms_max = 0, 0, 0.0, 0.0
        self.buckets = empty_buckets()

    def add(self, ms: float, error: bool) -> None:
        self.requests += 1
        self.errors += int(error)
        self.ms_sum += ms
        self.ms_max = max(self.ms_max, ms)
        self.buckets[bucket_index(ms)] += 1


def write_minutes(rows: list[tuple[int, datetime, Minute]]) -> None:
    """Add these figures to their (tenant, minute) rows: one statement per BATCH_ROWS rows."""
    with connection.cursor() as cursor:
        for start in range(0, len(rows), BATCH_ROWS):
            chunk = rows[start:start + BATCH_ROWS]
            params = []
            for tenant_id, minute, m in chunk:
                params += [tenant_id, minute, m.requests, m.errors, m.ms_sum, m.ms_max, m.buckets]
            cursor.execute(UPSERT.format(values=", ".join([ROW] * len(chunk)), bucket_sums=BUCKET_SUMS), params)


def prune(before: datetime) -> int:
    """Delete at most PRUNE_BATCH_ROWS rows older than `before` (oldest first)."""
    with connection.cursor() as cursor:
        cursor.execute(PRUNE, [before, PRUNE_BATCH_ROWS])
        return cursor.rowcount


class Aggregator:
    """The process's figures not written yet: {(tenant id, minute start epoch): Minute}."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], Minute] = {}
        self._last_flush = clock()
        self._pruned_at = 0.0
        self._flushing = False
        self.rows_written = 0  # (tenant, minute) rows upserted by this aggregator, for benchmarks

    def add(self, tenant_id: int, seconds: float, status: int) -> bool:
        """Record one request; True when this caller should flush now (at most one at a time)."""
        now = self.clock()
        key = (tenant_id, int(now // 60) * 60)
        interval = settings.MONITORING_FLUSH_SECONDS
        with self._lock:
            entry = self._pending.get(key)
            if entry is None:
                if len(self._pending) >= MAX_PENDING:  # never written (writes off, or failing): bounded
                    self._pending.clear()
                entry = self._pending[key] = Minute()
            entry.add(seconds * 1000.0, status >= 500)
            if interval <= 0 or self._flushing or now - self._last_flush < interval:
                return False
            self._flushing = True
            return True

    def pending(self) -> dict[tuple[int, int], Minute]:
        with self._lock:
            return dict(self._pending)

    def flush(self) -> int:
        """Write what was gathered (as staff code, in a savepoint); the rows written, 0 when
        the write failed (logged; those figures are dropped)."""
        with self._lock:
            taken, self._pending = self._pending, {}
            self._last_flush = self.clock()
        try:
            if not taken:
                return 0
            rows = [(tenant_id, datetime.fromtimestamp(minute, dt_timezone.utc), m)
                    for (tenant_id, minute), m in sorted(taken.items())]
            try:
                with no_tenant(), transaction.atomic():
                    write_minutes(rows)
                    self._maybe_prune()
                self.rows_written += len(rows)
            except Exception as exc:  # noqa: BLE001 - recording must never fail the request it rides on
                log.warning("request figures of %d tenant-minutes not recorded: %s: %s", len(rows),
                            type(exc).__name__, " ".join(str(exc).split())[:300])
                return 0
            return len(rows)
        finally:
            with self._lock:
                self._flushing = False

    def _maybe_prune(self) -> None:
        now = self.clock()
        if now - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        self._pruned_at = now
        keep = settings.MONITORING_RETENTION_DAYS * 86400
        prune(datetime.fromtimestamp(now - keep, dt_timezone.utc))

    def flush_at_exit(self) -> None:
        """Best effort: the process is ending (gunicorn worker restart, runserver stop)."""
        if settings.MONITORING_FLUSH_SECONDS <= 0:
            return  # automatic writes are off (tests): never write at exit either
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - nothing can be done this late; a lost minute at most
            log.warning("request figures not recorded at exit")


aggregator = Aggregator()
atexit.register(lambda: aggregator.flush_at_exit())


class RequestHealthMiddleware:
    """Put right after tenancy.middleware.TenantMiddleware in MIDDLEWARE."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        route = getattr(request, "tenant_route", None)
        if route is None:
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        current = aggregator  # the module's (tests may replace it)
        if current.add(route.id, elapsed, response.status_code):
            current.flush()
        return response
