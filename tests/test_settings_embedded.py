"""Settings only read where the embedded PostgreSQL listens; they never start it."""
import os
import subprocess
import sys

import pytest
from django.conf import settings

from project import embedded_pg


def test_settings_without_a_running_server_exit_with_one_line(tmp_path):
    missing = tmp_path / "pgdata"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(EMBEDDED_PG_DIR=str(missing), DJANGO_SETTINGS_MODULE="project.settings")
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: the embedded PostgreSQL server ({missing}) is not running; start it with `make db` "
        "(or set DATABASE_URL)"]
    assert not missing.exists()  # nothing initialised, nothing started


@pytest.mark.skipif(not settings.USING_EMBEDDED_PG, reason="DATABASE_URL is set: no embedded cluster")
def test_running_cluster_reads_the_live_server():
    cluster = embedded_pg.running_cluster(settings.EMBEDDED_PG_DIR)
    assert cluster is not None and str(cluster.port) == settings.DATABASES["default"]["PORT"]
    assert embedded_pg.running_cluster(settings.EMBEDDED_PG_DIR / "nothing-here") is None
