"""Changing a tenant's own fields: its name, its settings (an RFC 7396 merge patch that may
never hold a credential) and, through a run, its placement. Checked completely before
anything is written; one transaction, so a refused placement change keeps the rest too."""
from __future__ import annotations


from django.db import transaction

from migration_jobs.exceptions import BadRequest
from migration_jobs.models import MigrationRun
from migration_jobs.services.moves import request_placement
from migration_jobs.services.validation import PLACEMENT_ALIASES, check_json, known_fields, placement, server_name
from tenancy.models import Placement, Tenant
from tenancy.settings_check import settings_problem

TENANT_FIELDS = ("name", "settings", "placement", "server")


def check_settings(value, path="settings") -> None:
    """BadRequest naming every place a credential would be stored in tenant settings."""
    problem = settings_problem(value, path)
    if problem:
        raise BadRequest(problem)


def merge_patch(target, patch):
    """RFC 7396 JSON merge patch: objects merge recursively, null removes a key."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def check_tenant_change(body: dict) -> tuple[str | None, dict, str | None, str | None]:
    """(name, settings patch, target placement, server) of a change request, or BadRequest.
    `settings.database` ({"type": "dedicated", "server": ...}) asks for a placement too."""
    known_fields(body, TENANT_FIELDS)
    check_json(body, "body")  # NUL, invalid Unicode, nesting: PostgreSQL would refuse them (a 500)
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 200):
        raise BadRequest("name must be a non-empty string of at most 200 characters")
    patch = body.get("settings")
    if patch is not None and not isinstance(patch, dict):
        raise BadRequest("settings must be a JSON object")
    patch = dict(patch or {})
    target, server = body.get("placement"), body.get("server")
    database = patch.pop("database", None)
    if database is not None:
        if not isinstance(database, dict):
            raise BadRequest("settings.database must be an object like {\"type\": \"dedicated\"}")
        check_settings(database, "settings.database")
        extra = sorted(set(database) - {"type", "server"})
        if extra:
            raise BadRequest(f"unknown fields in settings.database: {', '.join(extra)} (accepted: type, server)")
        if "type" in database:
            if target is not None and PLACEMENT_ALIASES.get(str(database["type"])) != \
                    PLACEMENT_ALIASES.get(str(target)):
                raise BadRequest("placement and settings.database.type disagree")
            target = database["type"]
        server = server or database.get("server")
    check_settings(patch)
    if target is not None:
        target = placement(target)
    server = server_name(server)
    if server and target != Placement.DATABASE:
        raise BadRequest("server applies to a move to a dedicated database only")
    return name, patch, target, server


def change_tenant(tenant: Tenant, body: dict, *, requested_by=None, via: str = "api"
                  ) -> tuple[Tenant, list[str], MigrationRun | None]:
    """Apply a change request (check_tenant_change): (tenant, changed fields, the run created
    for a placement change or None). The caller enqueues the run after commit."""
    name, patch, target, server = check_tenant_change(body)
    run = None
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        changed = []
        if name is not None and name != tenant.name:
            tenant.name = name.strip()
            changed.append("name")
        if patch:
            merged = merge_patch(tenant.settings or {}, patch)
            if merged != tenant.settings:
                tenant.settings = merged
                changed.append("settings")
        if changed:
            tenant.save()
        if target is not None and target != tenant.placement:
            # Refused: the whole change is rolled back.
            run = request_placement(tenant, target, server_name=server, requested_by=requested_by, via=via)
    return tenant, changed, run
