"""A real django-q2 cluster for a benchmark: `manage.py qcluster` in a process group of its own,
with N worker processes, on a queue of its own, as a deployment runs moves.

The cluster inherits this process's environment, so it reaches the same database and broker
(the project's settings and .env do that; a test points both at its database through the
environment). Its queue name (Q_NAME) is unique to this benchmark, and `own_queue()` makes this
process enqueue there rather than run tasks inline (a settings' sync mode): the plan's tasks
and the runs they start go to this cluster. Its log goes to a file, read for the line django-q2
prints once the cluster runs.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django_q.conf import Conf

READY = re.compile(r"Q Cluster \S+ \[[^\]]*\] running")
STOP_TIMEOUT = 30.0


def queue_name() -> str:
    return f"bench-fleet-{os.getpid()}"


def broker_label() -> str:
    return "Redis broker" if Conf.REDIS else "ORM broker (the shared database)"


@contextmanager
def own_queue(name: str):
    """Tasks enqueued by this process go to the queue `name` (signed for it), never run inline."""
    saved = {attr: getattr(Conf, attr) for attr in ("SYNC", "PREFIX", "CLUSTER_NAME")}
    Conf.SYNC, Conf.PREFIX, Conf.CLUSTER_NAME = False, name, name
    try:
        yield
    finally:
        for attr, value in saved.items():
            setattr(Conf, attr, value)


class Cluster:
    """One `manage.py qcluster` with `workers` worker processes on queue `name`."""

    def __init__(self, name: str, workers: int, log: Path):
        self.name, self.workers, self.log = name, workers, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ, "Q_NAME": self.name, "Q_WORKERS": str(self.workers), "LOG_LEVEL": "INFO",
               "PYTHONUNBUFFERED": "1"}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "qcluster"],
                                         cwd=settings.BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not READY.search(self.output(1 << 20)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.output()
                self.stop()
                raise RuntimeError(f"qcluster did not start (exit {self.proc.returncode}): {tail}")
            time.sleep(0.1)

    def output(self, tail: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM (django-q2 lets its workers finish), then SIGKILL to what is left of its group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(STOP_TIMEOUT)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False
