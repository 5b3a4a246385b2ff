"""Settings, all read from the environment (django-environ) and `.env` when present.

Without DATABASE_URL the embedded PostgreSQL cluster (project/embedded_pg.py) is used; it
must be running (`make db`). With DATABASE_URL any PostgreSQL 14+ server is used instead.
"""
from pathlib import Path

from redis.connection import parse_url as redis_url_keywords

from project import embedded_pg
from project.env import BASE_DIR, app_database_name, embedded_pg_dir, env

# Off unless DJANGO_DEBUG=1. Even on, error pages and reports redact every known secret
# (tenancy/error_reporting.py), but they still show code and data: never on in production.
DEBUG = env.bool("DJANGO_DEBUG", default=False)
# `make` writes a random one into .env (scripts/ensure_env.py); none at all is refused.
SECRET_KEY = env("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    raise SystemExit("error: DJANGO_SECRET_KEY is not set; `make env` writes one into .env "
                     "(or set it in the environment)")
# The admin's host names and every tenant host (<slug>.TENANT_BASE_DOMAIN, hence `.localhost`).
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", ".localhost"])
# Origins (scheme://host[:port]) allowed to POST forms over HTTPS behind a proxy, e.g. the admin.
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# --- Database -----------------------------------------------------------------------------
EMBEDDED_PG_DIR = embedded_pg_dir()
APP_DATABASE_NAME = app_database_name()

if env("DATABASE_URL", default=""):
    DATABASES = {"default": env.db("DATABASE_URL")}
    USING_EMBEDDED_PG = False
else:
    _cluster = embedded_pg.running_cluster(EMBEDDED_PG_DIR)
    if _cluster is None:
        # One line, no traceback: settings only read where the server is, never start it.
        raise SystemExit(f"error: the embedded PostgreSQL server ({EMBEDDED_PG_DIR}) is not running; "
                         "start it with `make db` (or set DATABASE_URL)")
    # The superuser password comes from EMBEDDED_PG_PASSWORD (environment or .env).
    DATABASES = {"default": {"NAME": APP_DATABASE_NAME, "USER": _cluster.user, "PASSWORD": _cluster.password,
                             "HOST": _cluster.host, "PORT": str(_cluster.port)}}
    USING_EMBEDDED_PG = True

# django-tenants' backend (search_path for schema placement), plus SET ROLE to the schema
# tenant's own role while a connection serves that tenant (tenancy/backend).
DATABASES["default"]["ENGINE"] = "tenancy.backend"
DATABASES["default"].setdefault("TEST", {})
DATABASE_ROUTERS = (
    # Must come first: TenantSyncRouter answers False for every alias but default.
    "tenancy.router.TenantRouter",
    "django_tenants.routers.TenantSyncRouter",
)

# --- Tenancy ------------------------------------------------------------------------------
TENANT_MODEL = "tenancy.Tenant"
TENANT_DOMAIN_MODEL = "tenancy.Domain"
PUBLIC_SCHEMA_NAME = "public"
TENANT_LIMIT_SET_CALLS = True  # one SET search_path per schema change, not per cursor
# 64 hex characters (32 bytes, AES-256-GCM). Checked at startup by tenancy.apps.
TENANT_ENCRYPTION_KEY = env("TENANT_ENCRYPTION_KEY", default="")
# Keys still accepted for decryption during a rotation (comma-separated hex keys).
TENANT_ENCRYPTION_OLD_KEYS = env.list("TENANT_ENCRYPTION_OLD_KEYS", default=[])
# Names of dedicated databases and schemas are this prefix plus the tenant slug.
TENANT_DATABASE_PREFIX = env("TENANT_DATABASE_PREFIX", default="tenant_")
TENANT_SCHEMA_PREFIX = env("TENANT_SCHEMA_PREFIX", default="tenant_")
# Host names under which tenants are served: <slug>.<TENANT_BASE_DOMAIN>
TENANT_BASE_DOMAIN = env("TENANT_BASE_DOMAIN", default="localhost")
# Seconds a client is told to wait when its tenant is suspended or being moved.
TENANT_RETRY_AFTER = env.int("TENANT_RETRY_AFTER", default=30)

SHARED_APPS = [
    "tenancy",
    "monitoring",
    # Before django_tenants: the first listed app's command wins, and migration_jobs'
    # `migrate` (schema tenants and dedicated databases too) must replace django-tenants'.
    "migration_jobs",
    "django_tenants",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_q",
    "fleet",
    "api",
    # Pooled tenants' rows live in public, so the demo app is shared too.
    "shop",
]
TENANT_APPS = ["shop"]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS] + ["benchmarks"]

MIDDLEWARE = [
    # Outermost: records the /api calls that never reach an API view (redirects, bad Host).
    "api.middleware.RecordApiCalls",
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's) straight from STATIC_ROOT, before any tenant lookup.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # First to read the Host header: a disallowed one gets a short 400 here, never a debug page.
    "tenancy.middleware.TenantMiddleware",
    # A NUL character, an action on ids that cannot be, a list filter the database refuses: a 400.
    "tenancy.middleware.BadInputMiddleware",
    # Times what is served for a tenant: per-tenant per-minute figures (monitoring/middleware.py).
    "monitoring.middleware.RequestHealthMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"  # filled by `collectstatic` (make demo), served by WhiteNoise
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Errors -------------------------------------------------------------------------------
# Error pages (DEBUG), 500 e-mails and logged tracebacks never show a password or key.
DEFAULT_EXCEPTION_REPORTER_FILTER = "tenancy.error_reporting.SecretRedactingFilter"
DEFAULT_EXCEPTION_REPORTER = "tenancy.error_reporting.SecretRedactingReporter"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Work folders -------------------------------------------------------------------------
VAR_DIR = Path(env("VAR_DIR", default=str(BASE_DIR / "var")))
BACKUP_DIR = Path(env("TENANT_BACKUP_DIR", default=str(VAR_DIR / "backups")))

# --- django-q2 ----------------------------------------------------------------------------
# A move can take hours. The ORM broker re-delivers any task not acknowledged within the
# *global* `retry`, so retry must exceed the longest move and timeout must stay below it;
# one attempt only, and tasks are no-ops when their run is already running or finished.
MIGRATION_TASK_TIMEOUT = env.int("MIGRATION_TASK_TIMEOUT", default=6 * 3600)
Q_CLUSTER = {
    # Separates projects (and test runs) sharing one broker: the queue's name and the salt
    # tasks are signed with (with SECRET_KEY), so every web and worker process must agree.
    "name": env("Q_NAME", default="tenant-moves"),
    "workers": env.int("Q_WORKERS", default=2),
    # A cluster takes at most one task it cannot start yet (plus the one its pusher holds):
    # moves are long, and a move prefetched by a busy machine would wait while others idle.
    "queue_limit": env.int("Q_QUEUE_LIMIT", default=1),
    "timeout": MIGRATION_TASK_TIMEOUT,
    "retry": MIGRATION_TASK_TIMEOUT + 1800,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 1000,
    "sync": env.bool("Q_SYNC", default=False),
    "poll": 0.5,
}
# Q_BROKER_URL=redis://[:password@]host:6379/0 switches to django-q2's Redis broker, for
# `manage.py qcluster` on any number of machines (README "Deployment"). Redis hands each task
# to one cluster and forgets it (no acknowledgement, no re-delivery: `retry`, `max_attempts`
# and `ack_failures` only matter to the ORM broker); the run lock still lets one worker only
# execute a run. Parsed into keywords so the password sits under a key error reports hide.
# Unset: the ORM broker, in the shared database (nothing else to run).
if _broker_url := env("Q_BROKER_URL", default=""):
    Q_CLUSTER["redis"] = redis_url_keywords(_broker_url)
else:
    Q_CLUSTER["orm"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"()": "tenancy.error_reporting.RedactingFormatter",
                             "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Clear cached tenant routes in every process when another commits a change (LISTEN/NOTIFY).
TENANT_ROUTE_LISTENER = env.bool("TENANT_ROUTE_LISTENER", default=True)
# Host names whose tenant (or absence of one) each process remembers, least recently used out.
TENANT_HOST_CACHE_SIZE = env.int("TENANT_HOST_CACHE_SIZE", default=10000)
# Connections a process keeps open to dedicated tenant databases (all threads together): past
# it, idle ones close, least recently used first (tenancy/connection_budget.py). Size it so
# processes x budget fits the target servers' max_connections, or put a pooler in between.
TENANT_MAX_DEDICATED_CONNECTIONS = env.int("TENANT_MAX_DEDICATED_CONNECTIONS", default=20)
# Poolers (PgBouncer...) in front of target servers, for tenant connections only:
# "server_name=host:port,..." (README "Deployment"); the engine always connects directly.
TENANT_DEDICATED_POOLERS = env.dict("TENANT_DEDICATED_POOLERS", default={})
# Staff paths: never tenant-gated (no tenant lookup, no suspension 503), whatever the host.
TENANT_UNGATED_PATHS = env.list("TENANT_UNGATED_PATHS", default=["/admin", "/api", "/" + STATIC_URL.strip("/"),
                                                                  "/metrics"])

# --- Moves --------------------------------------------------------------------------------
# Parallel table copies (each uses a source and a target connection).
MIGRATION_COPY_WORKERS = env.int("MIGRATION_COPY_WORKERS", default=2)
# ... in an online move, where the copy costs no downtime and other tenants need the cores.
MIGRATION_ONLINE_COPY_WORKERS = env.int("MIGRATION_ONLINE_COPY_WORKERS", default=1)
# A schema target (same database as the shared tables) is filled by INSERT ... SELECT inside
# the server; False pipes its rows through this process like a database target (to compare).
MIGRATION_COPY_IN_SERVER = env.bool("MIGRATION_COPY_IN_SERVER", default=True)
# A tenant with fewer rows than this is copied with the target's indexes and
# foreign keys in place: dropping and rebuilding its ~40 of them costs ~0.1 s, more than keeping
# them up to date for so few rows (bench: even at ~10k rows, slower beyond). 0: always defer.
MIGRATION_DEFER_INDEXES_FROM_ROWS = env.int("MIGRATION_DEFER_INDEXES_FROM_ROWS", default=5000)
# maintenance_work_mem of the sessions that build the target's indexes after the load.
MIGRATION_INDEX_MEMORY = env("MIGRATION_INDEX_MEMORY", default="256MB")
# How long a freeze waits for transactions begun before it to finish before giving up.
MIGRATION_DRAIN_TIMEOUT = env.float("MIGRATION_DRAIN_TIMEOUT", default=30.0)
API_MAX_UPLOAD_BYTES = env.int("API_MAX_UPLOAD_BYTES", default=512 * 1024 * 1024)  # archive uploads to /api/
# Online moves: cut over once at most this many captured changes wait to be applied.
MIGRATION_CUTOVER_MAX_CHANGES = env.int("MIGRATION_CUTOVER_MAX_CHANGES", default=200)
# ... and freezes once a last round just before the freeze applied at most this many.
MIGRATION_FREEZE_MAX_CHANGES = env.int("MIGRATION_FREEZE_MAX_CHANGES", default=20)
# Online: target sequences are set this far past the source's before the cutover (other tenants
# keep using the shared sequences meanwhile; bigint ids can afford the gap), so the
# freeze only checks them.
MIGRATION_SEQUENCE_MARGIN = env.int("MIGRATION_SEQUENCE_MARGIN", default=1_000_000)
MIGRATION_CATCHUP_INTERVAL = env.float("MIGRATION_CATCHUP_INTERVAL", default=0.2)
MIGRATION_CATCHUP_TIMEOUT = env.float("MIGRATION_CATCHUP_TIMEOUT", default=1800.0)
# While a cutover is held for the gradual read switch, compare source and target this often.
MIGRATION_DIVERGENCE_INTERVAL = env.float("MIGRATION_DIVERGENCE_INTERVAL", default=60.0)
# A held cutover (read switch in progress) gives up after this long.
MIGRATION_HOLD_MAX_SECONDS = env.float("MIGRATION_HOLD_MAX_SECONDS", default=7 * 86400.0)
# A held move run by the django-q2 cluster applies a catch-up round, then leaves its worker for
# this long (its next round is a django-q2 schedule; the scheduler looks every ~30 s).
MIGRATION_HELD_ROUND_INTERVAL = env.float("MIGRATION_HELD_ROUND_INTERVAL", default=30.0)
# Legacy rows of a moved tenant stay in the shared tables this long before they may be retired.
TENANT_LEGACY_GRACE_DAYS = env.float("TENANT_LEGACY_GRACE_DAYS", default=7.0)
TENANT_LEGACY_BATCH_ROWS = env.int("TENANT_LEGACY_BATCH_ROWS", default=5000)
# Fleet candidates: a shared tenant with more rows than this should move (manage.py tenant_candidates).
TENANT_DEDICATED_THRESHOLD_ROWS = env.int("TENANT_DEDICATED_THRESHOLD_ROWS", default=100_000)
# Server capacity: a server with fewer free connections than this takes no new tenant database.
TENANT_SERVER_MIN_FREE_CONNECTIONS = env.int("TENANT_SERVER_MIN_FREE_CONNECTIONS", default=5)
# Restores of untrusted archives: sequences never past the restored keys plus this margin;
# a gzip member may expand at most this ratio (export writes level 3: <= ~230:1), an archive
# at most this many bytes in total (checked while streaming).
TENANT_RESTORE_SEQUENCE_MARGIN = env.int("TENANT_RESTORE_SEQUENCE_MARGIN", default=1000)
TENANT_ARCHIVE_MAX_EXPANSION_RATIO = env.int("TENANT_ARCHIVE_MAX_EXPANSION_RATIO", default=300)
TENANT_ARCHIVE_MAX_EXPANDED_BYTES = env.int("TENANT_ARCHIVE_MAX_EXPANDED_BYTES", default=64 << 30)

# --- Health after a move (monitoring) -----------------------------------------------------
# Each process writes its per-tenant per-minute request figures at most this often (s); 0: never by itself.
MONITORING_FLUSH_SECONDS = env.float("MONITORING_FLUSH_SECONDS", default=5.0)
# Per-minute rows older than this are deleted (a batch at most once an hour per process).
MONITORING_RETENTION_DAYS = env.int("MONITORING_RETENTION_DAYS", default=30)
# A move regressed when the tenant's p95 in the hour after the switch exceeds this times the hour
# before, or its error rate grows by more than TENANT_HEALTH_ERROR_RATE_MARGIN (0.02 = 2 points);
# judged only with at least TENANT_HEALTH_MIN_REQUESTS requests on each side.
TENANT_HEALTH_REGRESSION_RATIO = env.float("TENANT_HEALTH_REGRESSION_RATIO", default=1.5)
TENANT_HEALTH_ERROR_RATE_MARGIN = env.float("TENANT_HEALTH_ERROR_RATE_MARGIN", default=0.02)
TENANT_HEALTH_MIN_REQUESTS = env.int("TENANT_HEALTH_MIN_REQUESTS", default=50)
# /metrics: per-tenant figures over the last this many minutes, for at most this many tenants (the
# busiest), and runs that are active or ended within TENANT_METRICS_RECENT_HOURS.
TENANT_METRICS_WINDOW_MINUTES = env.int("TENANT_METRICS_WINDOW_MINUTES", default=5)
TENANT_METRICS_MAX_TENANTS = env.int("TENANT_METRICS_MAX_TENANTS", default=500)
TENANT_METRICS_RECENT_HOURS = env.float("TENANT_METRICS_RECENT_HOURS", default=24.0)

# --- Fleet moves (plans of many moves) ------------------------------------------------------
# A shared tenant with at least this many rows is a candidate for a dedicated place.
TENANT_DEDICATED_THRESHOLD_ROWS = env.int("TENANT_DEDICATED_THRESHOLD_ROWS", default=100_000)
# Estimates before any move was measured: copy rate and the fixed cost of a move (preflight,
# backup, provision, verify of a small tenant...). Measured runs replace both.
FLEET_DEFAULT_ROWS_PER_SECOND = env.float("FLEET_DEFAULT_ROWS_PER_SECOND", default=50_000.0)
FLEET_DEFAULT_MOVE_SECONDS = env.float("FLEET_DEFAULT_MOVE_SECONDS", default=10.0)

# --- E-mail (notices to tenants about planned moves) --------------------------------------
# EMAIL_URL (smtp://user:password@host:587 , smtp+tls://..., smtp+ssl://..., consolemail://), or
# EMAIL_HOST (+ EMAIL_PORT, EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS / EMAIL_USE_SSL),
# or neither: printed on the console (the demo).
if env("EMAIL_URL", default=""):
    vars().update(env.email_url("EMAIL_URL"))
elif env("EMAIL_HOST", default=""):
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = env("EMAIL_HOST")
    EMAIL_PORT = env.int("EMAIL_PORT", default=25)
    EMAIL_HOST_USER = env("EMAIL_HOST_USER", default="")
    EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", default="")
    EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
    EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=30)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="tenant-moves@localhost")
