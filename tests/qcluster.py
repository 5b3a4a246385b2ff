"""Real `manage.py qcluster` processes against this test's database, for tests of the queue.

The test database must be visible to other processes: use it from tests marked
`django_db(transaction=True)` (pytest-django's `transactional_db`), whose writes commit.

    with qclusters(2, tmp_path, env={"Q_BROKER_URL": url, "Q_NAME": name}) as clusters:
        ...  # enqueue; clusters[i].pid is the pid a worker records as its cluster's

Each process runs the production settings (project.settings: the queue is the real one, not
the tests' sync mode) with DATABASE_URL pointing at the test database, the test run's names for
dedicated databases and its backup folder. It is ready once django-q2 logs that its cluster
runs; leaving the block stops it with SIGTERM, then SIGKILL for its whole process group.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

BASE_DIR = Path(__file__).resolve().parent.parent
READY = re.compile(r"Q Cluster \S+ \[(?P<queue>[^\]]*)\] running")
STOP_TIMEOUT = 30.0


def subprocess_database_url() -> str:
    """A DATABASE_URL for the test database (settings read it before the embedded cluster)."""
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = db.get("HOST") or "localhost"
    return f"postgres://{auth}@{host}:{db.get('PORT') or 5432}/{quote(db['NAME'], safe='')}"


def manage_env(**extra: str) -> dict:
    """The environment of a `manage.py` subprocess that works on this test's database."""
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "DATABASE_URL": subprocess_database_url(),
            "TENANT_DATABASE_PREFIX": settings.TENANT_DATABASE_PREFIX,
            "TENANT_BACKUP_DIR": str(settings.BACKUP_DIR), "PYTHONUNBUFFERED": "1", **extra}


@dataclass
class QCluster:
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""

    def ready(self) -> re.Match | None:
        return READY.search(self.output(tail=1 << 20))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # django-q2 finishes the tasks it holds, then exits
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its sentinel and workers too, whatever is left
        except ProcessLookupError:
            pass
        self.proc.wait(STOP_TIMEOUT)


def start_qcluster(log: Path, env: dict | None = None) -> QCluster:
    proc = subprocess.Popen([sys.executable, str(BASE_DIR / "manage.py"), "qcluster"], cwd=BASE_DIR,
                            env=manage_env(LOG_LEVEL="INFO", **(env or {})), stdin=subprocess.DEVNULL,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    return QCluster(proc, log)


def wait_ready(cluster: QCluster, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cluster.ready():
        if cluster.proc.poll() is not None:
            raise AssertionError(f"qcluster exited ({cluster.proc.returncode}) before it was ready: "
                                 f"{cluster.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"qcluster not ready after {timeout:.0f}s: {cluster.output()}")
        time.sleep(0.1)


@contextmanager
def qclusters(count: int, log_dir: Path, *, env: dict | None = None, envs: list[dict] | None = None):
    """Start `count` qcluster processes (`env` for all, `envs[i]` for the i-th), wait until each
    is ready and yield them; they are stopped on leaving, whatever happened."""
    with ExitStack() as stack:
        clusters = []
        for i in range(count):
            cluster = start_qcluster(log_dir / f"qcluster-{i}.log", {**(env or {}), **(envs[i] if envs else {})})
            stack.callback(cluster.stop)
            clusters.append(cluster)
        for cluster in clusters:
            wait_ready(cluster)
        yield clusters
