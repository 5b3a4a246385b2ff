"""Fault injection, for tests only: a run is given a `Faults` whose `checkpoint(name)` raises
the exception registered for that name ("before:copy", "after:verify", "copy:shop_repair",
"cutover:applied"...). Product code passes none: every checkpoint is then a no-op."""
from __future__ import annotations


class WorkerKilled(BaseException):
    """Behaves like the worker process dying: no rollback runs, the run lock is released."""


class Faults:
    def __init__(self, faults: dict[str, BaseException | type[BaseException]] | None = None):
        self.faults = dict(faults or {})

    def checkpoint(self, name: str) -> None:
        fault = self.faults.get(name)
        if fault is not None:
            raise fault if isinstance(fault, BaseException) else fault(f"injected fault at {name}")


NO_FAULTS = Faults()
