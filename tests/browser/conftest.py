"""Browser tests: Debian's Chromium driven by Playwright for Python (`executable_path`, never a
downloaded browser) against pytest-django's live server, with a real django-q2 cluster
(`manage.py qcluster`, a subprocess) executing the moves on this test process's database.

Without Chromium they skip with one line, except in CI (`CI` or `REQUIRE_BROWSER=1` set, as
`.ci/run` does), where a missing browser is a failure.

Why a subprocess for the cluster: it is what runs moves in production (`qcluster` next to the
web server), it cannot share state with the live server by accident, and stopping it (SIGTERM,
then SIGKILL of its own process group) cannot leave threads behind in the test process. It is
pointed at this xdist worker's test database through DATABASE_URL (the ORM broker's queue is in
that database too), with this process's TENANT_DATABASE_PREFIX and backup folder, so what it
creates is cleaned up like everything else the tests make.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from django_q.conf import Conf
from django_q.models import Task
from playwright.sync_api import expect, sync_playwright

from tenancy.routing import routes
from tests import qcluster as qcluster_processes
from tests.helpers import staff_user

DEFAULT_BROWSER = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Screenshots of what a user sees, outside the repository.
SHOTS = Path(os.environ.get("BROWSER_SHOTS", "/tmp/browser-shots"))
PASSWORD = "pw-Perm-123"  # tests.helpers.staff_user's
# How long a page, a click or an expectation may take: the machine may be busy (xdist, CI).
TIMEOUT_MS = 20_000
expect.set_options(timeout=TIMEOUT_MS)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def require_browser() -> str:
    """The Chromium to drive (BROWSER_PATH, else Debian's /usr/bin/chromium). Missing: a failure
    in CI (CI or REQUIRE_BROWSER=1), a one-line skip anywhere else."""
    path = os.environ.get("BROWSER_PATH") or DEFAULT_BROWSER
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    if not os.environ.get("BROWSER_PATH") and shutil.which("chromium"):
        return shutil.which("chromium")
    if _flag("CI") or _flag("REQUIRE_BROWSER"):
        pytest.fail(f"chromium not found at {path}, and CI requires the browser tests: "
                    "apt-get install chromium (or set BROWSER_PATH)", pytrace=False)
    pytest.skip("chromium not installed: apt-get install chromium")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (each test gets a fresh context: no shared cookies).

    Playwright's sync API marks its event loop as running in this thread between calls, which
    Django's async-unsafe guard would take for an async context and refuse every ORM call of
    the test: DJANGO_ALLOW_ASYNC_UNSAFE is set only while the browser is up (these tests only;
    the ORM calls really are synchronous, in the test's own thread)."""
    path = require_browser()
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
            try:
                yield chromium
            finally:
                chromium.close()
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.call_failed = report.failed
    return report


@pytest.fixture
def page(request, browser, live_server):
    """A fresh page (own cookies) whose console errors and failed requests the test can check.
    A failed test leaves a screenshot of where it stopped (FAILED-<test>.png)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(f"javascript: {exc}"))
    page.on("response", lambda r: page.errors.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    yield page
    if getattr(request.node, "call_failed", False):
        shot(page, f"FAILED-{request.node.name}")
    context.close()


@pytest.fixture(autouse=True)
def _fresh_routes():
    """The live server runs in this process, which has no LISTEN thread (test settings): the
    placement changes the cluster commits reach it through this (as NOTIFY does elsewhere),
    and no host stays mapped to a tenant of an earlier test."""
    routes.clear()
    yield
    routes.clear()


@pytest.fixture
def enqueue_to_cluster(monkeypatch):
    """The test settings run django-q2 tasks inline (Q_CLUSTER sync); here the live server must
    hand them to the broker, for the cluster, as in production."""
    monkeypatch.setattr(Conf, "SYNC", False)


@pytest.fixture
def admin_login(page, live_server, transactional_db, enqueue_to_cluster):
    """Log in through the admin's login form as a superuser; returns the page on the admin index."""
    def login(username="boss"):
        staff_user(username, superuser=True)
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}/admin/")
        return page

    return login


def shot(page, name: str) -> Path:
    """A full-page screenshot in SHOTS (outside the repository), to look at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


class QCluster:
    """`manage.py qcluster` on this test process's database (tests/qcluster.py); started by the
    test, stopped after."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.cluster: qcluster_processes.QCluster | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.cluster = qcluster_processes.start_qcluster(self.log_path, {"Q_SYNC": "0", "Q_WORKERS": "2"})
        qcluster_processes.wait_ready(self.cluster, timeout)

    def wait_for_task(self, name: str, timeout: float = 60.0) -> Task:
        """The cluster's record of the task `name` once it has run (success or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = Task.objects.filter(name=name).first()
            if task is not None:
                return task
            time.sleep(0.2)
        pytest.fail(f"the cluster did not run task {name} within {timeout:.0f}s:\n{self.tail()}", pytrace=False)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.cluster.output().splitlines()[-lines:]) if self.cluster else ""

    def stop(self) -> None:
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            cluster.stop()


@pytest.fixture
def qcluster(live_server, transactional_db, enqueue_to_cluster, tmp_path):
    """A real django-q2 cluster for this test, started by `qcluster.start()`; stopped before the
    database is flushed (so no worker holds a connection to it)."""
    cluster = QCluster(tmp_path / "qcluster.log")
    yield cluster
    cluster.stop()
