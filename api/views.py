"""The staff HTTP API (JSON in and out; see api/urls.py for the routes and the README).

Tenant ids in URLs are the numeric Tenant primary key. Every view is wrapped by
auth.api_view: Bearer staff token, JSON errors, one ApiCall record per request.
"""
from __future__ import annotations

import re
import tempfile

from django.conf import settings
from django.db import transaction
from django.http import FileResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse
from django.utils import timezone

from api.auth import ApiError, api_view, json_body
from migration_jobs import services
from migration_jobs.models import MigrationRun
from tenancy.models import Placement, Status, Tenant

CHUNK = 1 << 20
TRUE = {"1", "true", "yes", "on"}
FALSE = {"", "0", "false", "no", "off"}
# Placement names a runbook may use in settings.database.type, mapped to ours.
PLACEMENT_ALIASES = {"shared": Placement.SHARED, "schema": Placement.SCHEMA, "dedicated": Placement.DATABASE,
                     "database": Placement.DATABASE}
# Keys that would hold credentials: never accepted (credentials are made by provisioning).
SECRET_KEY_PATTERN = re.compile(r"pass(word)?|secret|connection_?string|dsn|credential", re.I)


# --- helpers --------------------------------------------------------------------------------

def _tenant(request, value) -> Tenant:
    if not str(value).isdigit():
        raise ApiError(400, f"tenant id must be a number, got {value!r}")
    request.api_call["tenant_id"] = int(value)
    try:
        return Tenant.objects.get(pk=int(value))
    except Tenant.DoesNotExist:
        raise ApiError(404, f"unknown tenant {value}", tenant_id=int(value)) from None


def tenant_json(tenant: Tenant) -> dict:
    data = {"id": tenant.pk, "slug": tenant.slug, "name": tenant.name, "placement": tenant.placement,
            "status": tenant.status, "settings": tenant.settings,
            "domains": list(tenant.domains.values_list("domain", flat=True)),
            "updated_at": tenant.updated_at.isoformat() if tenant.updated_at else None}
    if tenant.placement == Placement.SCHEMA:
        data["schema"] = tenant.schema_name
    elif tenant.placement == Placement.DATABASE:
        credential = getattr(tenant, "credential", None)
        if credential is not None:  # where it lives; never the role's password
            data["database"] = {"server": credential.server.name, "name": credential.database}
    run = services.active_run(tenant)
    data["active_run"] = _run_ref(run) if run else None
    return data


def _run_ref(run: MigrationRun) -> dict:
    return {"run_id": run.pk, "kind": run.kind, "status": run.status, "source": run.source_placement,
            "target": run.target_placement, "created_at": run.created_at.isoformat(),
            "status_url": reverse("api:migration-run", args=[run.pk])}


def _bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ApiError(400, f"{name} must be true or false, got {value!r}")


def _start_run(request, tenant: Tenant, target: str, server: str | None = None, dry_run: bool = False
               ) -> MigrationRun:
    """Create the run for a placement change (Refused -> 409). The caller enqueues it after commit."""
    if server and target != Placement.DATABASE:
        raise ApiError(400, "server applies to moves to a dedicated database only")
    if target == Placement.SHARED:
        return services.request_move_back(tenant, dry_run=dry_run, requested_by=request.user, via="api")
    return services.request_move(tenant, target, server_name=server, dry_run=dry_run, requested_by=request.user,
                                 via="api")


def _accepted(request, run: MigrationRun, **extra) -> JsonResponse:
    services.enqueue(run)
    run.refresh_from_db()
    request.api_call["run_id"] = run.pk
    request.api_call["detail"] = f"run {run.pk} {run.source_placement} -> {run.target_placement} queued"
    status_url = reverse("api:migration-run", args=[run.pk])
    response = JsonResponse({**extra, "run_id": run.pk, "status": run.status, "status_url": status_url,
                             "kind": run.kind, "source": run.source_placement, "target": run.target_placement},
                            status=202)
    response["Location"] = status_url
    return response


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


def _secret_keys(value, path="settings") -> list[str]:
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            if SECRET_KEY_PATTERN.search(str(key)):
                found.append(here)
            found += _secret_keys(item, here)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _secret_keys(item, f"{path}[{i}]")
    return found


# --- tenants --------------------------------------------------------------------------------

@api_view("GET")
def tenant_export(request):
    from migration_jobs.engine.archive import HashingWriter, write_archive_to
    from migration_jobs.engine.places import place_of
    from migration_jobs.engine.tables import tenant_tables

    value = request.GET.get("tenantId") or request.GET.get("tenant_id")
    if not value:
        raise ApiError(400, "missing query parameter tenantId")
    tenant = _tenant(request, value)
    spool = tempfile.TemporaryFile(prefix="tenant-export-")
    try:
        out = HashingWriter(spool)
        manifest = write_archive_to(out, place_of(tenant), tenant, tenant_tables())
        spool.flush()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    rows = sum(t["rows"] for t in manifest["tables"])
    request.api_call["detail"] = f"exported {rows} rows ({out.size} bytes, sha256 {out.hexdigest()})"
    filename = f"{tenant.slug}-{timezone.now():%Y%m%dT%H%M%SZ}.tenant.tar"
    response = FileResponse(spool, as_attachment=True, filename=filename, content_type="application/x-tar")
    response["X-Archive-SHA256"] = out.hexdigest()
    response["X-Archive-Rows"] = str(rows)
    response["Cache-Control"] = "no-store"
    return response


@api_view("GET")
def tenant_list(request):
    tenants = Tenant.objects.order_by("pk")
    if request.GET.get("slug"):
        tenants = tenants.filter(slug=request.GET["slug"])
    return JsonResponse({"tenants": [{"id": t.pk, "slug": t.slug, "name": t.name, "placement": t.placement,
                                      "status": t.status} for t in tenants[:1000]]})


@api_view("GET", "PATCH")
def tenant_detail(request, tenant_id):
    tenant = _tenant(request, tenant_id)
    if request.method == "GET":
        return JsonResponse(tenant_json(tenant))
    body = json_body(request)
    unknown = sorted(set(body) - {"name", "settings", "placement", "server"})
    if unknown:
        raise ApiError(400, f"unknown fields: {', '.join(unknown)} (accepted: name, settings, placement, server)")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 200):
        raise ApiError(400, "name must be a non-empty string of at most 200 characters")
    patch = body.get("settings")
    if patch is not None and not isinstance(patch, dict):
        raise ApiError(400, "settings must be a JSON object")
    patch = dict(patch or {})
    target, server = body.get("placement"), body.get("server")
    database = patch.pop("database", None)
    if database is not None:
        if not isinstance(database, dict):
            raise ApiError(400, "settings.database must be an object like {\"type\": \"dedicated\"}")
        secret = [f"settings.database.{k}" for k in database if SECRET_KEY_PATTERN.search(str(k))]
        if secret:
            raise ApiError(400, f"{', '.join(secret)} is refused: credentials are never accepted as text; a move "
                                "provisions the database and its role and stores the password encrypted")
        extra = sorted(set(database) - {"type", "server"})
        if extra:
            raise ApiError(400, f"unknown fields in settings.database: {', '.join(extra)} (accepted: type, server)")
        if "type" in database:
            if target is not None and PLACEMENT_ALIASES.get(str(database["type"])) != \
                    PLACEMENT_ALIASES.get(str(target)):
                raise ApiError(400, "placement and settings.database.type disagree")
            target = database["type"]
        server = server or database.get("server")
    secret = _secret_keys(patch)
    if secret:
        raise ApiError(400, f"{', '.join(secret)} is refused: tenant settings may not hold credentials")
    if target is not None:
        if str(target) not in PLACEMENT_ALIASES:
            raise ApiError(400, f"unknown placement {target!r}: use shared, schema or database (or dedicated)")
        target = PLACEMENT_ALIASES[str(target)]
    if server is not None and not isinstance(server, str):
        raise ApiError(400, "server must be the name of a database server")
    if server and target != Placement.DATABASE:
        raise ApiError(400, "server applies to a move to a dedicated database only")

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
            run = _start_run(request, tenant, target, server)  # Refused: 409, the whole PATCH rolled back
    request.api_call["detail"] = f"changed {', '.join(changed)}" if changed else "no field changed"
    if run is not None:
        return _accepted(request, run, tenant=tenant_json(tenant), changed=changed)
    data = tenant_json(tenant)
    data["changed"] = changed
    return JsonResponse(data)


def _set_status(request, tenant_id, status: str):
    tenant = _tenant(request, tenant_id)
    previous = tenant.status
    tenant = services.set_status(tenant, status)
    request.api_call["detail"] = f"status {previous} -> {tenant.status}"
    return JsonResponse({**tenant_json(tenant), "previous_status": previous})


@api_view("POST")
def tenant_suspend(request, tenant_id):
    return _set_status(request, tenant_id, Status.SUSPENDED)


@api_view("POST")
def tenant_reactivate(request, tenant_id):
    return _set_status(request, tenant_id, Status.ACTIVE)


# --- migration runs -------------------------------------------------------------------------

@api_view("GET", "POST")
def tenant_migrations(request, tenant_id):
    tenant = _tenant(request, tenant_id)
    if request.method == "GET":
        return JsonResponse({"tenant": tenant.slug, "runs": [_run_ref(r) for r in tenant.migration_runs.all()[:100]]})
    body = json_body(request)
    unknown = sorted(set(body) - {"to", "server", "dry_run"})
    if unknown:
        raise ApiError(400, f"unknown fields: {', '.join(unknown)} (accepted: to, server, dry_run)")
    to = body.get("to")
    if to is None:
        raise ApiError(400, "missing field 'to': schema, database or shared")
    if str(to) not in PLACEMENT_ALIASES:
        raise ApiError(400, f"unknown target {to!r}: use schema, database or shared")
    server = body.get("server")
    if server is not None and not isinstance(server, str):
        raise ApiError(400, "server must be the name of a database server")
    dry_run = _bool(body.get("dry_run", False), "dry_run")
    run = _start_run(request, tenant, PLACEMENT_ALIASES[str(to)], server, dry_run)
    return _accepted(request, run, tenant=tenant.slug)


@api_view("GET")
def migration_run(request, run_id):
    run = MigrationRun.objects.select_related("tenant", "target_server").filter(pk=run_id).first()
    if run is None:
        raise ApiError(404, f"unknown migration run {run_id}")
    request.api_call.update(run_id=run.pk, tenant_id=run.tenant_id)
    report = services.run_report(run)
    report["status_url"] = reverse("api:migration-run", args=[run.pk])
    report["finished"] = not run.is_active
    return JsonResponse(report)


# --- restore --------------------------------------------------------------------------------

@api_view("POST")
def tenant_restore(request):
    from migration_jobs.engine.archive import ArchiveError
    from migration_jobs.engine.restore import RestoreError, restore_tenant

    limit = settings.API_MAX_UPLOAD_BYTES
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError(400, "invalid Content-Length") from None
    if length > limit:
        raise ApiError(413, f"upload of {length} bytes is larger than the limit of {limit} bytes "
                            "(API_MAX_UPLOAD_BYTES)", limit=limit)
    content_type = request.content_type or ""
    if content_type == "application/json":
        raise ApiError(415, "send the archive written by the export as a file: multipart form field 'archive' "
                            "(curl -F archive=@file) or the raw body as application/x-tar (curl --data-binary @file)")
    with tempfile.TemporaryDirectory(prefix="tenant-restore-") as folder:
        if content_type.startswith("multipart/"):
            try:
                upload = request.FILES.get("archive") or next(iter(request.FILES.values()), None)
                options = request.POST
            except MultiPartParserError as exc:
                raise ApiError(400, f"malformed multipart upload: {exc}") from None
            if upload is None:
                raise ApiError(400, "no archive in the upload: send it as the form field 'archive'")
            if upload.size > limit:
                raise ApiError(413, f"archive of {upload.size} bytes is larger than the limit of {limit} bytes",
                               limit=limit)
            if hasattr(upload, "temporary_file_path"):  # already on disk (large uploads): no copy
                path = upload.temporary_file_path()
            else:
                path = f"{folder}/upload.tar"
                with open(path, "wb") as out:
                    for chunk in upload.chunks(CHUNK):
                        out.write(chunk)
        else:
            options = request.GET
            path = f"{folder}/upload.tar"
            total = 0
            with open(path, "wb") as out:
                while chunk := request.read(CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise ApiError(413, f"upload is larger than the limit of {limit} bytes", limit=limit)
                    out.write(chunk)
            if total == 0:
                raise ApiError(400, "empty upload: send the archive as the request body or as form field 'archive'")
        opts = {key: options.get(key) for key in ("into", "as", "replace", "server", "check")}
        unknown = sorted(set(options) - set(opts) - {"tenantId"})
        if unknown:
            raise ApiError(400, f"unknown options: {', '.join(unknown)} (accepted: into, as, replace, server, check)")
        try:
            report = restore_tenant(path, into=opts["into"] or None, as_slug=opts["as"] or None,
                                    replace=_bool(opts["replace"] or "", "replace"),
                                    server_name=opts["server"] or None, check_only=_bool(opts["check"] or "", "check"))
        except ArchiveError as exc:
            raise ApiError(422, f"invalid archive: {exc}") from None
        except RestoreError as exc:
            raise ApiError(exc.status, str(exc), **getattr(exc, "details", {})) from None
    if report.get("checked"):
        request.api_call["detail"] = "archive checked; nothing written"
        return JsonResponse(report)
    request.api_call["tenant_id"] = report["tenant_id"]
    request.api_call["detail"] = (f"{'created' if report['created'] else 'restored'} tenant {report['tenant']} in "
                                  f"{report['placement']}: {report['rows']} rows")
    return JsonResponse(report, status=201 if report["created"] else 200)


@api_view("GET", "POST", "PATCH", "PUT", "DELETE")
def not_found(request, rest=""):
    raise ApiError(404, f"no API route {request.path}")
