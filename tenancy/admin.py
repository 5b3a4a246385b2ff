"""Staff admin for tenants, their servers and credentials.

Secrets are never shown: a server's password is write-only (tenancy.forms) and displayed
as "set (key <id>)"; a credential's password is not editable here at all.
"""
from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db import DatabaseError, connection, models, transaction
from django.db.models.functions import Coalesce

from tenancy import crypto
from tenancy.admin_mixins import ReadOnlyAdmin
from tenancy.forms import DatabaseServerForm, TenantSettingsField
from tenancy.models import DatabaseCredential, DatabaseServer, Domain, Placement, Status, Tenant
from tenancy.routing import tenant_app_labels
from tenancy.scoping import TenantScopedModel


def tenant_models():
    """The tenant-scoped models of the configured tenant apps (settings.TENANT_APPS)."""
    return [model for label in sorted(tenant_app_labels()) for model in apps.get_app_config(label).get_models()
            if issubclass(model, TenantScopedModel)]


def rows_in_shared_tables():
    """An expression: the tenant's rows over all tenant tables of the shared database.

    One correlated COUNT per table, so the whole changelist page is a single query.
    """
    total = models.Value(0, output_field=models.BigIntegerField())
    for model in tenant_models():
        per_tenant = (model.unscoped.filter(tenant_id=models.OuterRef("pk")).order_by()
                      .values("tenant_id").annotate(n=models.Count("*")).values("n"))
        total = total + Coalesce(models.Subquery(per_tenant, output_field=models.BigIntegerField()), 0)
    return total


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def rows_in_schemas(schema_names) -> dict[str, int]:
    """{schema: rows over its tenant tables}, in two queries for any number of schemas.

    {} when they cannot be counted right now (a move may hold a lock or drop a schema:
    the page shows "—" rather than hang or fail).
    """
    if not schema_names:
        return {}
    tables = [m._meta.db_table for m in tenant_models()]
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")
            # Only tables that exist: a schema being filled may lack some.
            cursor.execute("SELECT schemaname, tablename FROM pg_tables "
                           "WHERE schemaname = ANY(%s) AND tablename = ANY(%s)", [sorted(schema_names), tables])
            found = cursor.fetchall()
            if not found:
                return {}
            counts = " UNION ALL ".join(f"SELECT %s, count(*) FROM {_quoted(schema)}.{_quoted(table)}"
                                        for schema, table in found)
            cursor.execute(f"SELECT s, sum(n) FROM ({counts}) AS c(s, n) GROUP BY s", [s for s, _ in found])
            return {schema: int(n) for schema, n in cursor.fetchall()}
    except DatabaseError:
        return {}


def primary_domain():
    """An expression: the tenant's primary domain (else its first one, alphabetically)."""
    first_domain = Domain.objects.filter(tenant_id=models.OuterRef("pk")).order_by("-is_primary", "domain")
    return models.Subquery(first_domain.values("domain")[:1])


class TenantChangeList(ChangeList):
    """Adds row counts (and what other apps annotate) to the list page only (not to the
    change form). The domain is annotated on the admin's queryset itself: the list sorts by
    it, and Django orders the root queryset before this method could annotate it."""

    def get_queryset(self, request, exclude_parameters=None):
        return super().get_queryset(request, exclude_parameters).annotate(
            shared_rows=rows_in_shared_tables(),
            **{name: make() for name, make in self.model_admin.list_annotations.items()})

    def get_results(self, request):
        super().get_results(request)
        # Schema tenants' rows live in their schema: at most two more queries for the page.
        in_schemas = [t for t in self.result_list if t.placement == Placement.SCHEMA]
        counts = rows_in_schemas({t.schema_name for t in in_schemas})
        for tenant in in_schemas:
            tenant.place_rows = counts.get(tenant.schema_name)


class DomainInline(admin.TabularInline):
    model = Domain
    extra = 0
    fields = ["domain", "is_primary"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "placement", "status", "row_count", "domain", "created_at"]
    list_filter = ["placement", "status", "dedicated_reason"]
    search_fields = ["slug", "name", "domains__domain"]
    inlines = [DomainInline]
    # Other apps append their actions here (e.g. migration_jobs: "move to schema/database").
    actions = []
    # And for the list page, {name: () -> expression} annotations their columns read.
    list_annotations = {}
    # Set by the app that moves tenants: tenant -> why its status is not staff's to edit now
    # (e.g. "run 5 is moving it"), or None.
    status_owner = None

    def get_changelist(self, request, **kwargs):
        return TenantChangeList

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "settings":  # NaN, a NUL, an empty field: a form error, not a 500
            kwargs["form_class"] = TenantSettingsField
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(primary_domain=primary_domain())

    def _status_owned(self, tenant) -> str | None:
        owner = type(self).status_owner
        return owner(tenant) if owner is not None and tenant is not None else None

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["slug", "name", "status", "settings", "dedicated_reason", "dedicated_note"]
        return ["slug", "name", "placement", "schema_name", "status", "settings", "dedicated_reason",
                "dedicated_note", "created_at", "updated_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        # Placement (and where it points) changes only through a migration run; the slug
        # names the tenant's schema and database. Status belongs to a running move.
        readonly = ["slug", "placement", "schema_name", "created_at", "updated_at"]
        if obj.status == Status.MIGRATING or self._status_owned(obj):
            return readonly + ["status"]
        return readonly

    def save_model(self, request, obj, form, change):
        # The form may have been opened before a run took the tenant: its status stays the run's.
        owner = self._status_owned(obj) if change and "status" in form.changed_data else None
        if owner:
            obj.status = form.initial["status"]
            self.message_user(request, f"{obj.slug}: status not changed: {owner}", messages.ERROR)
        super().save_model(request, obj, form, change)

    def has_delete_permission(self, request, obj=None):
        # Deleting the row would orphan the tenant's data and drop its database credential.
        return False

    @admin.display(description="rows")
    def row_count(self, tenant):
        if tenant.placement == Placement.SHARED:
            return tenant.shared_rows
        rows = getattr(tenant, "place_rows", None)
        return rows if rows is not None else f"— ({tenant.get_placement_display().lower()})"

    @admin.display(description="domain", ordering="primary_domain")
    def domain(self, tenant):
        return tenant.primary_domain or "—"


def secret_status(token: str) -> str:
    if not token:
        return "not set"
    return f"set (key {crypto.token_key_id(token) or 'unknown format'})"


@admin.register(DatabaseServer)
class DatabaseServerAdmin(admin.ModelAdmin):
    form = DatabaseServerForm
    list_display = ["name", "host", "port", "admin_user", "is_default", "password_status"]
    readonly_fields = ["is_default", "password_status", "created_at"]

    def get_fieldsets(self, request, obj=None):
        main = ["name", "host", "port", "admin_user", "maintenance_db", "is_default", "max_tenant_databases", "notes",
                "created_at"]
        if obj is not None and obj.is_default:
            # The default server mirrors settings.DATABASES (refreshed on every migrate).
            return [(None, {"fields": main}), ("Admin password", {"fields": ["password_status"]})]
        return [(None, {"fields": main}),
                ("Admin password", {"fields": ["password_status", "new_password", "clear_password"]})]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.is_default:
            return [*self.readonly_fields, "name", "host", "port", "admin_user", "maintenance_db"]
        return self.readonly_fields

    @admin.display(description="password")
    def password_status(self, server):
        return secret_status(server.admin_password_encrypted)


@admin.register(DatabaseCredential)
class DatabaseCredentialAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """Read-only: credentials are made and rotated by migration runs, never typed in."""

    list_display = ["tenant", "server", "database", "role", "created_at", "rotated_at", "password"]
    list_select_related = ["tenant", "server"]
    search_fields = ["tenant__slug", "database", "role"]
    fields = ["tenant", "server", "database", "role", "password", "created_at", "rotated_at"]
    readonly_fields = fields

    @admin.display(description="password")
    def password(self, credential):
        kid = crypto.token_key_id(credential.password_encrypted)
        return f"stored encrypted (key {kid})" if kid else "stored encrypted"
