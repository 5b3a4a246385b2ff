"""Settings for pytest: the same as production but for names that must not collide with a
demo running on the same server, and no background route listener (one process)."""
from project.settings import *  # noqa: F401,F403

TENANT_ROUTE_LISTENER = False
TENANT_DATABASE_PREFIX = "test_tenant_"
BACKUP_DIR = VAR_DIR / "test-backups"  # noqa: F405
Q_CLUSTER = {**Q_CLUSTER, "sync": True}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
LOGGING = {"version": 1, "disable_existing_loggers": False}
