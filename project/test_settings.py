"""Settings for pytest: production settings, but with names that cannot collide with a demo
(or another test run) on the same server, and no background route listener (one process)."""
import os

from project.settings import *  # noqa: F401,F403

# One test database per pytest process, so concurrent runs never drop each other's.
# tests/conftest.py drops those left behind by runs that died.
TEST_RUN_ID = os.getpid()
DATABASES["default"]["TEST"] = {"NAME": f"test_repairshop_{TEST_RUN_ID}"}  # noqa: F405
TENANT_DATABASE_PREFIX = f"test{TEST_RUN_ID}_"
TENANT_ROUTE_LISTENER = False
# Request figures are written when a test says so (monitoring.middleware.aggregator.flush()),
# never in the middle of a request whose queries a test counts.
MONITORING_FLUSH_SECONDS = 0
BACKUP_DIR = VAR_DIR / "test-backups" / str(TEST_RUN_ID)  # noqa: F405
Q_CLUSTER = {**Q_CLUSTER, "sync": True}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
LOGGING = {"version": 1, "disable_existing_loggers": False}
# The suite's tenants are small: defer indexes as a big tenant's move does, so that path (its
# drop, rebuild and crash repair) is what the move tests exercise; tests/test_small_tenant.py
# sets the production threshold back.
MIGRATION_DEFER_INDEXES_FROM_ROWS = 0
