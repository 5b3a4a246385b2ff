"""How long a refused request should wait: the `Retry-After` of a tenant's 503.

Whoever refuses a tenant's writes for a while (a move: migration_jobs) registers an estimate
of the refusal still to come, `estimate(tenant_id) -> seconds or None`; tenancy knows nothing
of runs. A migrating tenant gets the estimate (at least 1 s, at most TENANT_RETRY_AFTER);
any other refusal, or no estimate, gets TENANT_RETRY_AFTER. Estimates are kept a second per
process, so a burst of refused requests costs one query.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

from django.conf import settings

Estimate = Callable[[int], "float | None"]
_estimates: list[Estimate] = []
_cache: dict[int, tuple[float, int]] = {}
_lock = threading.Lock()
CACHE_SECONDS = 1.0


def register(estimate: Estimate) -> None:
    if estimate not in _estimates:
        _estimates.append(estimate)


def forget() -> None:
    """Drop the cached estimates (tests)."""
    with _lock:
        _cache.clear()


def _estimate(tenant_id: int) -> float | None:
    for estimate in _estimates:
        try:
            seconds = estimate(tenant_id)
        except Exception:  # noqa: BLE001 - a failing estimate must not fail the request
            seconds = None
        if seconds is not None:
            return seconds
    return None


def retry_after(route) -> int:
    """Seconds for the Retry-After header of a request refused for this tenant route."""
    ceiling = int(settings.TENANT_RETRY_AFTER)
    if route.status != "migrating":
        return ceiling
    now = time.monotonic()
    with _lock:
        cached = _cache.get(route.id)
    if cached and cached[0] > now:
        return cached[1]
    seconds = _estimate(route.id)
    value = ceiling if seconds is None else max(1, min(int(math.ceil(seconds)), ceiling))
    with _lock:
        _cache[route.id] = (now + CACHE_SECONDS, value)
    return value
