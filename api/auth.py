"""Bearer-token authentication for the staff API, JSON errors, and the call record.

`api_view("GET", "POST")` wraps a view so that
- the request must carry `Authorization: Bearer <token>` of a live token whose user is an
  active staff member (401 without a valid token, 403 for a revoked token or a non-staff
  user), checked before anything else;
- only the listed methods are allowed (405 with `Allow`);
- the project's errors become JSON errors `{"error": "...", ...}` with the status code of
  their class, mapped in one place (STATUS_OF below); `ApiError` is for what only HTTP
  knows (tokens, methods, uploads); unexpected exceptions become a 500 that never shows
  the exception;
- the view runs as staff code (no current tenant, public schema);
- every call, refused or not, is recorded as an ApiCall (who, what, when, status, duration).
"""
from __future__ import annotations

import functools
import json
import logging
import time

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from api.models import ApiCall, ApiToken
from migration_jobs.exceptions import (ArchiveError, BadRequest, NotFound, Refused, RestoreConflict, RestoreError,
                                       RestoreRefused, StepFailed)
from tenancy.context import no_tenant
from tenancy.exceptions import TenantMoveError

log = logging.getLogger(__name__)

# The HTTP status of each error class (the most specific class wins) and a prefix for its message.
# Others (a key that cannot decrypt a secret, ...) are the server's problem: 500.
STATUS_OF = {
    Refused: (409, ""),
    BadRequest: (400, ""),
    NotFound: (404, ""),
    ArchiveError: (422, "invalid archive: "),
    RestoreError: (409, ""),
    RestoreRefused: (400, ""),
    RestoreConflict: (409, ""),
    StepFailed: (409, ""),
}


class ApiError(Exception):
    """An error only the HTTP layer knows (authentication, methods, upload limits)."""

    def __init__(self, status: int, message: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra

    def response(self) -> JsonResponse:
        return error_response(self.status, self.message, self.headers, **self.extra)


def mapped_response(exc: TenantMoveError) -> JsonResponse | None:
    """The JSON error for one of the project's exceptions, by its class (STATUS_OF); None
    for a class that is not the client's to fix."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            status, prefix = STATUS_OF[cls]
            return error_response(status, f"{prefix}{exc}", **getattr(exc, "details", {}))
    return None


def error_response(status: int, message: str, headers: dict | None = None, **extra) -> JsonResponse:
    response = JsonResponse({"error": " ".join(str(message).split()), **extra}, status=status)
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def _unauthorized(message: str, error: str | None = None) -> ApiError:
    challenge = 'Bearer realm="api"' + (f', error="{error}"' if error else "")
    return ApiError(401, message, {"WWW-Authenticate": challenge})


def authenticate(request) -> ApiToken:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        raise _unauthorized("missing API token: send the header 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("the Authorization header must be 'Bearer <token>'", "invalid_request")
    prefix = ApiToken.prefix_of(token)
    found = ApiToken.objects.select_related("user").filter(prefix=prefix).first() if prefix else None
    if found is None or not found.matches(token):
        raise _unauthorized("invalid API token", "invalid_token")
    request.api_token = found
    if found.revoked:
        raise ApiError(403, "this API token has been revoked")
    user = found.user
    if not user.is_active or not user.is_staff:
        raise ApiError(403, "API tokens work for active staff users only; this token's user is not")
    ApiToken.objects.filter(pk=found.pk).update(last_used_at=timezone.now())
    return found


def json_body(request) -> dict:
    """The request body as a JSON object ({} when empty), or 400."""
    raw = request.body
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object")
    return data


def _client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def record(request, response, started: float) -> None:
    token = getattr(request, "api_token", None)
    call = getattr(request, "api_call", {})
    detail = call.get("detail", "")
    if not detail and response.status_code >= 400 and response.get("Content-Type", "").startswith("application/json"):
        try:
            detail = json.loads(response.content).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
    try:
        ApiCall.objects.create(
            token=token, user=token.user if token is not None else None, method=request.method[:10],
            path=request.path[:500], query=request.META.get("QUERY_STRING", "")[:500],
            status_code=response.status_code, tenant_id=call.get("tenant_id"), run_id=call.get("run_id"),
            remote_addr=_client_ip(request), duration_ms=round((time.monotonic() - started) * 1000, 2),
            detail=str(detail)[:2000])
    except Exception:  # noqa: BLE001 - the call itself is answered; the record is best effort
        log.exception("could not record API call %s %s", request.method, request.path)


def _internal_error(request) -> JsonResponse:
    """500 without the exception (its text could quote connection details); the log has it."""
    log.exception("API call %s %s failed", request.method, request.path)
    return error_response(500, "internal error; the server log has the details")


def api_view(*methods: str):
    def decorator(view):
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            started = time.monotonic()
            request.api_call = {}
            try:
                with no_tenant():
                    authenticate(request)
                    request.user = request.api_token.user
                    if request.method not in methods:
                        raise ApiError(405, f"method {request.method} is not allowed here; use {', '.join(methods)}",
                                       {"Allow": ", ".join(methods)})
                    response = view(request, *args, **kwargs)
            except ApiError as exc:
                response = exc.response()
            except TenantMoveError as exc:
                response = mapped_response(exc) or _internal_error(request)
            except RequestDataTooBig:
                response = error_response(413, "request body too large (DATA_UPLOAD_MAX_MEMORY_SIZE); archives go "
                                               "to /api/admin/tenants/restore")
            except Exception:  # noqa: BLE001
                response = _internal_error(request)
            record(request, response, started)
            return response

        wrapper.api_methods = methods
        return wrapper

    return decorator
