"""Names of the per-schema-tenant roles (made by migration_jobs.engine.provision, used by
tenancy.backend.base with SET ROLE)."""
import hashlib

from django.conf import settings

SCHEMA_ROLE_SUFFIX = "_schema"


def schema_role(schema: str) -> str:
    """The NOLOGIN role a schema tenant's queries run as.

    Roles are cluster-wide while schemas live in one database: the name starts with the
    dedicated-database prefix (so two test runs sharing a server, each with its own shared
    database, never share one) and ends with a suffix no dedicated-database role has (`_rw`).
    """
    prefix = settings.TENANT_SCHEMA_PREFIX
    stem = schema[len(prefix):] if prefix and schema.startswith(prefix) else schema
    name = f"{settings.TENANT_DATABASE_PREFIX}{stem}{SCHEMA_ROLE_SUFFIX}"
    if len(name) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:63 - len(SCHEMA_ROLE_SUFFIX) - 9]}_{digest}{SCHEMA_ROLE_SUFFIX}"
    return name
