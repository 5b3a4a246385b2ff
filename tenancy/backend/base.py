"""django-tenants' PostgreSQL backend, plus least privilege for schema tenants.

`search_path` alone isolates nothing (a query can name any schema), so while a connection
serves a schema tenant its queries run as that tenant's own role: `SET ROLE` goes with the
`SET search_path` django-tenants issues, in the same statement, and `RESET ROLE` with the
one that takes the connection back to public. tenancy.context chooses the role
(`use_tenant_role`) when it hands the connection to a tenant; any later change of schema
(set_schema_to_public, set_schema of another schema) drops it. Connections set to a schema
without a role (django-tenants' migrate_schemas) keep running as the login role, the owner.
"""
import django.db.utils
import psycopg
from django.core.exceptions import ImproperlyConfigured
from django_tenants.postgresql_backend.base import DatabaseWrapper as TenantsDatabaseWrapper
from django_tenants.utils import get_limit_set_calls, get_public_schema_name
from psycopg import sql


class DatabaseWrapper(TenantsDatabaseWrapper):
    def __init__(self, *args, **kwargs):
        self.tenant_role = None           # the role queries run as; None: the login role
        self._tenant_role_schema = None   # the schema it was chosen for
        super().__init__(*args, **kwargs)

    def set_tenant(self, tenant, include_public=True):
        super().set_tenant(tenant, include_public)
        if tenant.schema_name != self._tenant_role_schema:
            self.tenant_role = self._tenant_role_schema = None

    def use_tenant_role(self, role: str | None) -> None:
        """Run the current schema's queries as `role` (None: as the login role), from the
        next cursor on."""
        if role is not None and self.schema_name == get_public_schema_name():
            raise ValueError("the public schema is never used under a tenant role")
        if role != self.tenant_role:
            self.tenant_role = role
            self._tenant_role_schema = self.schema_name if role else None
            self.search_path_set_schemas = None  # re-issue SET search_path/ROLE

    def _handle_search_path(self, cursor=None):
        # django-tenants' method, with SET ROLE / RESET ROLE in the same statement.
        if self._setting_search_path:
            return
        if get_limit_set_calls() and self.search_path_set_schemas:
            return
        if not self.schema_name:
            raise ImproperlyConfigured("Database schema not set. Did you forget "
                                       "to call set_schema() or set_tenant()?")
        search_paths = self._get_cursor_search_paths()
        role = self.tenant_role
        statement = sql.SQL("SET search_path = {}; {}").format(
            sql.SQL(", ").join(sql.Identifier(s) for s in search_paths),
            sql.SQL("SET ROLE {}").format(sql.Identifier(role)) if role else sql.SQL("RESET ROLE"))
        self._setting_search_path = True
        target = self.connection.cursor() if cursor is None else cursor
        aborted = self.connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        try:
            target.execute(statement.as_string(self.connection))
        except (django.db.utils.DatabaseError, psycopg.Error):
            self.search_path_set_schemas = None
            # In a failed transaction nothing runs anyway (a rollback must still get its
            # cursor). Otherwise a tenant role that could not be taken must stop the query:
            # it would run as the login role.
            if role and not aborted:
                raise
        else:
            self.search_path_set_schemas = search_paths
        finally:
            self._setting_search_path = False
            if cursor is None:
                target.close()
