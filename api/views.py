"""The staff HTTP API (JSON in and out; see api/urls.py for the routes and the README).

Tenant ids in URLs are the numeric Tenant primary key. Every view is wrapped by
auth.api_view: Bearer staff token, the Django permissions of each method (the ones the same
action needs in the admin; see PERMISSIONS), JSON errors, one ApiCall record per request.
api/openapi.py describes every route (served at /api/openapi.json); keep the two together.
"""
from __future__ import annotations

import tempfile

from django.conf import settings
from django.http import FileResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse

from api.auth import ApiError, api_view, json_body, require
from migration_jobs import services
from migration_jobs.models import MigrationRun
from tenancy.models import Placement, Status, Tenant

CHUNK = 1 << 20

# The permissions each action needs, as in the admin.
VIEW, CHANGE = "tenancy.view_tenant", "tenancy.change_tenant"
MOVE, EXPORT, RESTORE = "tenancy.move_tenant", "tenancy.export_tenant_data", "tenancy.restore_tenant_data"
VIEW_RUN = "migration_jobs.view_migrationrun"


def api_permissions(view, method: str) -> list[str]:
    """The permissions `view` needs for `method` (for the OpenAPI schema)."""
    return list(view.api_permissions[method])


# --- helpers --------------------------------------------------------------------------------

def _tenant(request, value) -> Tenant:
    request.api_call["tenant_id"] = services.tenant_id(value)
    return services.tenant_by_id(value)


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


def _status_url(run: MigrationRun) -> str:
    return reverse("api:migration-run", args=[run.pk])


def _run_ref(run: MigrationRun) -> dict:
    return {**services.run_dict(run, services.REF), "status_url": _status_url(run)}


def _accepted(request, run: MigrationRun, **extra) -> JsonResponse:
    services.enqueue(run)
    run.refresh_from_db()
    request.api_call["run_id"] = run.pk
    request.api_call["detail"] = f"run {run.pk} {run.source_placement} -> {run.target_placement} queued"
    status_url = _status_url(run)
    response = JsonResponse({**extra, "run_id": run.pk, "status": run.status, "status_url": status_url,
                             "kind": run.kind, "source": run.source_placement, "target": run.target_placement},
                            status=202)
    response["Location"] = status_url
    return response


# --- tenants --------------------------------------------------------------------------------

@api_view(GET=[EXPORT])
def tenant_export(request):
    value = request.GET.get("tenantId") or request.GET.get("tenant_id")
    if not value:
        raise ApiError(400, "missing query parameter tenantId")
    tenant = _tenant(request, value)
    spool, report = services.export_to_spool(tenant)
    request.api_call["detail"] = f"exported {report['rows']} rows ({report['bytes']} bytes, sha256 {report['sha256']})"
    response = FileResponse(spool, as_attachment=True, filename=services.archive_filename(tenant),
                            content_type="application/x-tar")
    response["X-Archive-SHA256"] = report["sha256"]
    response["X-Archive-Rows"] = str(report["rows"])
    response["Cache-Control"] = "no-store"
    return response


@api_view(GET=[VIEW])
def tenant_list(request):
    tenants = Tenant.objects.order_by("pk")
    if request.GET.get("slug"):
        tenants = tenants.filter(slug=request.GET["slug"])
    return JsonResponse({"tenants": [{"id": t.pk, "slug": t.slug, "name": t.name, "placement": t.placement,
                                      "status": t.status} for t in tenants[:1000]]})


@api_view(GET=[VIEW], PATCH=[VIEW, CHANGE])
def tenant_detail(request, tenant_id):
    tenant = _tenant(request, tenant_id)
    if request.method == "GET":
        return JsonResponse(tenant_json(tenant))
    body = json_body(request)
    if services.check_tenant_change(body)[2] is not None:  # a placement change is a move
        require(request, MOVE)
    tenant, changed, run = services.change_tenant(tenant, body, requested_by=request.user, via="api")
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


@api_view(POST=[VIEW, CHANGE])
def tenant_suspend(request, tenant_id):
    return _set_status(request, tenant_id, Status.SUSPENDED)


@api_view(POST=[VIEW, CHANGE])
def tenant_reactivate(request, tenant_id):
    return _set_status(request, tenant_id, Status.ACTIVE)


# --- migration runs -------------------------------------------------------------------------

@api_view(GET=[VIEW, VIEW_RUN], POST=[VIEW, MOVE])
def tenant_migrations(request, tenant_id):
    tenant = _tenant(request, tenant_id)
    if request.method == "GET":
        return JsonResponse({"tenant": tenant.slug, "runs": [_run_ref(r) for r in tenant.migration_runs.all()[:100]]})
    body = json_body(request)
    services.known_fields(body, ("to", "server", "dry_run"))
    target = services.placement(body.get("to"), what="target")
    server = services.server_name(body.get("server"))
    dry_run = services.boolean(body.get("dry_run", False), "dry_run")
    run = services.request_placement(tenant, target, server_name=server, dry_run=dry_run, requested_by=request.user,
                                     via="api")
    return _accepted(request, run, tenant=tenant.slug)


@api_view(GET=[VIEW_RUN])
def migration_run(request, run_id):
    run = services.get_run(run_id)
    request.api_call.update(run_id=run.pk, tenant_id=run.tenant_id)
    report = services.run_report(run)
    report["status_url"] = _status_url(run)
    report["finished"] = not run.is_active
    return JsonResponse(report)


@api_view(POST=[VIEW_RUN, MOVE])
def migration_cancel(request, run_id):
    """Cancel a run: queued -> cancelled now; running or held -> its worker rolls it back."""
    run = services.get_run(run_id)
    request.api_call.update(run_id=run.pk, tenant_id=run.tenant_id)
    run = services.cancel(run)
    request.api_call["detail"] = "cancelled" if not run.is_active else "cancel requested"
    report = services.run_report(run)
    report["status_url"] = _status_url(run)
    report["finished"] = not run.is_active
    return JsonResponse(report, status=200 if not run.is_active else 202)


# --- restore --------------------------------------------------------------------------------

@api_view(POST=[RESTORE])
def tenant_restore(request):
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
            if any("\x00" in key or "\x00" in value for key, values in options.lists() for value in values):
                raise ApiError(400, "a form field contains a NUL character")
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
        report = services.restore(path, **services.restore_options(options, extra=("tenantId",)))
    if report.get("checked"):
        request.api_call["detail"] = "archive checked; nothing written"
        return JsonResponse(report)
    request.api_call["tenant_id"] = report["tenant_id"]
    request.api_call["detail"] = (f"{'created' if report['created'] else 'restored'} tenant {report['tenant']} in "
                                  f"{report['placement']}: {report['rows']} rows")
    return JsonResponse(report, status=201 if report["created"] else 200)


@api_view(GET=[], POST=[], PATCH=[], PUT=[], DELETE=[])
def not_found(request, rest=""):
    raise ApiError(404, f"no API route {request.path}")
