"""The writer of the online-move benchmark, in a process of its own (spawned: this module
imports nothing of Django before django.setup())."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class WriteLog:
    at: list[float] = field(default_factory=list)        # time.time() of each acknowledged write
    latency: list[float] = field(default_factory=list)   # seconds it took
    refused_at: list[float] = field(default_factory=list)  # time.time() of each refused write
    reasons: dict = field(default_factory=dict)             # first words of the refusal -> count

    @property
    def refused(self) -> int:
        return len(self.refused_at)

    def refuse(self, reason: str) -> None:
        self.refused_at.append(time.time())
        key = reason[:60]
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def seen_freeze(self, start: float = 0.0, end: float = float("inf")) -> float | None:
        """Seconds from the first refused write to the first write accepted after the last
        refusal, among the refusals between `start` and `end` (time.time()): the freeze as
        this writer saw it (None if nothing was refused then)."""
        refused = [at for at in self.refused_at if start <= at <= end]
        if not refused:
            return None
        after = [at for at in self.at if at > refused[-1]]
        return (after[0] if after else refused[-1]) - refused[0]


class _WriteLoop:
    """Inserts / updates / deletes one tenant's customers at `rate` writes per second."""

    def __init__(self, tenant_id: int, rate: float, seed: int):
        self.tenant_id, self.rate, self.random = tenant_id, rate, random.Random(seed)
        self.log = WriteLog()
        self.expected: dict[int, int] = {}  # customer id -> loyalty points, after every acknowledged write
        self.error: str | None = None

    def _write(self):
        from shop.models import Customer
        from tenancy.context import tenant_context

        choice = self.random.random()
        from django.db import transaction
        from django.utils import timezone

        with tenant_context(self.tenant_id), transaction.atomic():
            if choice < 0.5 or len(self.expected) < 10:
                c = Customer.objects.create(first_name="bench", last_name="writer", created_at=timezone.now(),
                                            loyalty_points=self.random.randint(0, 10 ** 6))
                return "set", c.pk, c.loyalty_points
            pk = self.random.choice(list(self.expected))
            if choice < 0.85:
                points = self.random.randint(0, 10 ** 6)
                Customer.objects.filter(pk=pk).update(loyalty_points=points)
                return "set", pk, points
            Customer.objects.filter(pk=pk).delete()
            return "del", pk, None

    def run(self, stop, ready) -> None:
        from tenancy.exceptions import TenantWriteRefused

        interval = 1.0 / self.rate
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    kind, pk, points = self._write()
                except TenantWriteRefused as exc:
                    self.log.refuse(f"router: {exc}")
                except Exception as exc:  # noqa: BLE001 - the database fence refusing is expected
                    if "refuses writes" not in str(exc):
                        self.error = repr(exc)
                        return
                    self.log.refuse(f"fence: {str(exc).splitlines()[0]}")
                else:
                    if kind == "set":
                        self.expected[pk] = points
                    else:
                        self.expected.pop(pk, None)
                    self.log.at.append(time.time())
                    self.log.latency.append(time.monotonic() - started)
                    ready.set()
                next_at += interval
                stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            from django.db import connection

            connection.close()


def writer_process(tenant_id: int, rate: float, seed: int, stop, ready, results) -> None:
    import django

    django.setup()
    loop = _WriteLoop(tenant_id, rate, seed)
    try:
        loop.run(stop, ready)
    finally:
        results.send((loop.log, loop.expected, loop.error))
