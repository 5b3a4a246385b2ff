"""How long a move should take, from the moves measured so far: a fixed cost per move
(preflight, backup, provision, verify...) plus its rows at the copy rate. Both are averages
of the latest succeeded moves (the same target and mode when there are some, else any);
before any move was measured, the settings' defaults (FLEET_DEFAULT_*)."""
from __future__ import annotations

import heapq
import statistics
from dataclasses import dataclass

from django.conf import settings

from migration_jobs.models import MigrationRun, RunKind, RunStatus

RECENT_RUNS = 20


@dataclass(frozen=True)
class Rate:
    rows_per_second: float
    move_seconds: float     # fixed cost of one move, besides its rows
    freeze_seconds: float   # an online move's cutover freeze
    runs: int               # how many runs measured it (0: the defaults)

    def seconds(self, rows: int) -> float:
        return self.move_seconds + rows / self.rows_per_second

    def describe(self) -> str:
        source = f"measured over the last {self.runs} moves" if self.runs else "default, no move measured yet"
        return f"{self.rows_per_second:,.0f} rows/s + {self.move_seconds:.1f}s per move ({source})"


def measured_rate(target: str, online: bool) -> Rate:
    done = (MigrationRun.objects.filter(kind=RunKind.MOVE, status=RunStatus.SUCCEEDED, dry_run=False,
                                        rows_per_second__gt=0, started_at__isnull=False, finished_at__isnull=False)
            .order_by("-finished_at"))
    runs = list(done.filter(target_placement=target, online=online)[:RECENT_RUNS]) or list(done[:RECENT_RUNS])
    if not runs:
        return Rate(settings.FLEET_DEFAULT_ROWS_PER_SECOND, settings.FLEET_DEFAULT_MOVE_SECONDS, 1.0, 0)
    rate = statistics.fmean(r.rows_per_second for r in runs)
    fixed = statistics.median(max((r.finished_at - r.started_at).total_seconds() - r.rows_copied / r.rows_per_second,
                                  0.0) for r in runs)
    freezes = [r.freeze_seconds for r in runs if r.online and r.freeze_seconds is not None]
    return Rate(rate, fixed, statistics.median(freezes) if freezes else 1.0, len(runs))


def wall_seconds(durations, parallel: int) -> float:
    """The plan's length: moves taken in order, each by the first free of `parallel` lanes."""
    lanes = [0.0] * max(int(parallel), 1)
    for seconds in durations:
        heapq.heapreplace(lanes, lanes[0] + seconds)
    return max(lanes)


def writes_refused_seconds(rate: Rate, seconds: float, online: bool) -> float:
    """How long the tenant's writes are expected to be refused by its move: the whole move
    offline (suspend to reactivate), the cutover's freeze online."""
    return rate.freeze_seconds if online else seconds
