"""Tenants, their domains, the PostgreSQL servers that can host them, and their credentials."""
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin

from tenancy import crypto
from tenancy.settings_check import settings_problem
from tenancy.shared_db import shared_conninfo

slug_validator = RegexValidator(r"^[a-z][a-z0-9_]{0,39}$",
                                "lower-case letters, digits and _, starting with a letter, at most 40")


def default_server_values() -> dict:
    """Where the shared database's server is, as the settings say now."""
    info = shared_conninfo()
    return {"host": info["host"], "port": info["port"], "admin_user": info["user"] or "postgres",
            "maintenance_db": info["dbname"]}


def tenant_host(slug: str) -> str:
    """The host name a tenant is served at: slugs may hold `_`, host names may not (RFC 1034)."""
    return f"{slug.replace('_', '-')}.{settings.TENANT_BASE_DOMAIN}"


class Placement(models.TextChoices):
    SHARED = "shared", "Shared database"
    SCHEMA = "schema", "Dedicated schema"
    DATABASE = "database", "Dedicated database"


class Status(models.TextChoices):
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"
    READ_ONLY = "read_only", "Read-only"
    MIGRATING = "migrating", "Migrating"


class DedicatedReason(models.TextChoices):
    INFRASTRUCTURE = "infrastructure", "Needs dedicated infrastructure"
    COMPLIANCE = "compliance", "Compliance"


class Tenant(TenantMixin):
    # Pooled tenants have no schema: schemas are created by a migration run, never on save.
    auto_create_schema = False
    auto_drop_schema = False

    slug = models.SlugField(max_length=40, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    placement = models.CharField(max_length=10, choices=Placement.choices, default=Placement.SHARED)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    settings = models.JSONField(default=dict, blank=True)
    # Who hears about a planned move and its outcome (fleet plans send the notices).
    contact_email = models.EmailField(blank=True, default="", help_text="Where move notices are sent.")
    # A reason to move besides size: its own infrastructure, or compliance (fleet candidates).
    dedicated_reason = models.CharField(max_length=20, choices=DedicatedReason.choices, blank=True, default="")
    dedicated_note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        # What the admin and the API check besides view/change (README, "HTTP API").
        permissions = [("move_tenant", "Can move tenants"),
                       ("export_tenant_data", "Can export tenant data"),
                       ("restore_tenant_data", "Can restore tenant data")]

    def __str__(self):
        return self.slug

    def clean(self):
        super().clean()
        problem = settings_problem(self.settings)
        if problem:  # the admin's form shows it on the field; the API refuses the same (services)
            raise ValidationError({"settings": problem})

    def save(self, *args, **kwargs):
        # schema_name is required and unique in django-tenants; it names the schema the
        # tenant *would* get. It is only used as search_path in schema placement.
        if not self.schema_name:
            self.schema_name = f"{settings.TENANT_SCHEMA_PREFIX}{self.slug}"
        super().save(*args, **kwargs)

    @property
    def accepts_writes(self) -> bool:
        return self.status == Status.ACTIVE

    @property
    def database_name(self) -> str:
        return f"{settings.TENANT_DATABASE_PREFIX}{self.slug}"


class Domain(DomainMixin):
    pass


class DatabaseServer(models.Model):
    """A PostgreSQL server that can host dedicated tenant databases."""

    name = models.SlugField(max_length=60, unique=True)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=5432)
    admin_user = models.CharField(max_length=63)
    admin_password_encrypted = models.TextField(blank=True, default="", editable=False)
    maintenance_db = models.CharField(max_length=63, default="postgres")
    is_default = models.BooleanField(default=False, help_text="The server of the shared database.")
    max_tenant_databases = models.PositiveIntegerField(
        null=True, blank=True, help_text="How many dedicated tenant databases it may hold; empty: no limit.")
    notes = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["is_default"], condition=models.Q(is_default=True),
                                               name="one_default_server")]

    def __str__(self):
        return f"{self.name} ({self.host}:{self.port})"

    def set_admin_password(self, password: str) -> None:
        self.admin_password_encrypted = crypto.encrypt(password, context=crypto.SERVER_CONTEXT) if password else ""

    def admin_password(self) -> str:
        return crypto.decrypt(self.admin_password_encrypted, context=crypto.SERVER_CONTEXT) \
            if self.admin_password_encrypted else ""

    def conninfo(self, dbname: str | None = None) -> dict:
        """psycopg connection keywords as the admin user. Never log the result."""
        if self.is_default:
            # The shared database's server: always as the settings say now.
            return shared_conninfo(dbname)
        info = {"host": self.host, "port": self.port, "user": self.admin_user,
                "dbname": dbname or self.maintenance_db, "connect_timeout": 10}
        password = self.admin_password()
        if password:
            info["password"] = password
        return info


class DatabaseCredential(models.Model):
    """Where a tenant's dedicated database lives and the login role that reaches it."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="credential")
    server = models.ForeignKey(DatabaseServer, on_delete=models.PROTECT, related_name="credentials")
    database = models.CharField(max_length=63)
    role = models.CharField(max_length=63)
    password_encrypted = models.TextField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.role}@{self.server.name}/{self.database}"

    def set_password(self, password: str) -> None:
        self.password_encrypted = crypto.encrypt(password, context=crypto.CREDENTIAL_CONTEXT)

    def password(self) -> str:
        return crypto.decrypt(self.password_encrypted, context=crypto.CREDENTIAL_CONTEXT)

    def conninfo(self) -> dict:
        """psycopg connection keywords as the tenant role. Never log the result."""
        return {"host": self.server.host, "port": self.server.port, "user": self.role,
                "password": self.password(), "dbname": self.database, "connect_timeout": 10}


class ReadSwitch(models.Model):
    """A share of a tenant's read-only requests served from an in-sync copy of its rows.

    Written by whoever keeps that copy in sync (an online move while it catches up) through
    `tenancy.routing.set_read_switch`; no row means every request goes to the tenant's place.
    """

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, primary_key=True, related_name="read_switch")
    percent = models.PositiveSmallIntegerField()
    placement = models.CharField(max_length=10, choices=Placement.choices)
    schema_name = models.CharField(max_length=63, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.tenant_id}: {self.percent}% of reads from {self.placement}"
