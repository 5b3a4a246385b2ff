"""Bearer-token authentication for the staff API, JSON errors, and the call record.

`api_view(GET=[perms], POST=[perms])` wraps a view so that
- the request must carry `Authorization: Bearer <token>` of a live token whose user is an
  active staff member (401 without a valid token or an expired one, 403 for a revoked token,
  a non-staff user or a token without a creator), checked before anything else;
- only the listed methods are allowed (405 with `Allow`);
- the method's Django permissions (the ones the same action needs in the admin) are held by
  BOTH the token's user and the staff user who made the token, and the token's scope allows
  the method ("read": GET only), or 403 before the view runs (`require` checks more inside a
  view, e.g. a PATCH that also moves the tenant);
- the project's errors become JSON errors `{"error": "...", ...}` with the status code of
  their class, mapped in one place (STATUS_OF below); `ApiError` is for what only HTTP
  knows (tokens, methods, uploads); unexpected exceptions become a 500 that never shows
  the exception;
- the view runs as staff code (no current tenant, public schema);
- every call, refused or not, is recorded as an ApiCall (user, creator, what, when, status, duration).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import time

import psycopg
from django import db
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from api.models import ApiCall, ApiToken, Scope
from migration_jobs.exceptions import (ArchiveError, BadRequest, NotFound, Refused, RestoreConflict, RestoreError,
                                       RestoreRefused, StepFailed)
from migration_jobs.services.validation import check_json
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
    if prefix and not (prefix.isascii() and prefix.isprintable()):  # a NUL would reach PostgreSQL: a 500
        prefix = None
    found = ApiToken.objects.select_related("user", "created_by").filter(prefix=prefix).first() if prefix else None
    if found is None or not found.matches(token):
        raise _unauthorized("invalid API token", "invalid_token")
    request.api_token = found
    if found.revoked:
        raise ApiError(403, "this API token has been revoked")
    if found.expired:
        raise _unauthorized(f"this API token expired at {found.expires_at.isoformat()}", "invalid_token")
    user = found.user
    if not user.is_active or not user.is_staff:
        raise ApiError(403, "API tokens work for active staff users only; this token's user is not")
    if found.created_by is None:
        raise ApiError(403, "this API token has no creator on record (made before creators were recorded, or "
                            "its creator was deleted); make a new one in the admin")
    ApiToken.objects.filter(pk=found.pk).update(last_used_at=timezone.now())
    return found


SAFE_METHODS = ("GET", "HEAD")


def require(request, *perms: str) -> None:
    """403 unless the token's user AND its creator hold every permission in `perms` and the
    token's scope allows the request's method. Nothing has been changed when it refuses."""
    token = request.api_token
    if not perms:  # a route that does nothing (the JSON 404)
        return
    if request.method not in SAFE_METHODS and token.scope != Scope.READ_WRITE:
        raise ApiError(403, f"this API token's scope is {token.scope!r}: it may only read (GET)")
    for who, user in (("token's user", token.user), ("token's creator", token.created_by)):
        missing = [perm for perm in perms if not user.has_perm(perm)]
        if missing:
            raise ApiError(403, f"permission denied: the {who} {user.get_username()!r} lacks "
                                f"{', '.join(missing)}", missing=missing)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:30]} is out of range")
    return value


def json_body(request) -> dict:
    """The request body as a JSON object ({} when empty), or 400: no NUL, no lone surrogate,
    no NaN, Infinity or number beyond a float (jsonb takes none of them), nested at most
    services.JSON_MAX_DEPTH deep."""
    raw = request.body
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as exc:  # also a number of more than 4300 digits, NaN, Infinity, 1e999
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deep") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object")
    check_json(data, "body")
    return data


def check_query(request) -> None:
    """400 for a query parameter PostgreSQL could not even compare (NUL, lone surrogate)."""
    for key, values in request.GET.lists():
        for value in [key, *values]:
            if "\x00" in value:
                raise ApiError(400, f"query parameter {key[:50]!r} contains a NUL character")


def _client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


BIGINT = range(-(2 ** 63), 2 ** 63)


def _clean_text(text: str, size: int) -> str:
    """Storable text: no NUL (PostgreSQL refuses it), no lone surrogate, at most `size`."""
    return str(text).replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")[:size]


def record(request, response, started: float) -> None:
    token = getattr(request, "api_token", None)
    call = getattr(request, "api_call", {})
    detail = call.get("detail", "")
    if not detail and response.status_code >= 400 and response.get("Content-Type", "").startswith("application/json"):
        try:
            detail = json.loads(response.content).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
    ids = {}
    for name in ("tenant_id", "run_id"):  # an id beyond bigint is kept as text in the detail
        value = call.get(name)
        if value is not None and value not in BIGINT:
            detail = f"{detail} ({name} {value} out of range)".strip()
            value = None
        ids[name] = value
    request.api_recorded = True
    try:
        ApiCall.objects.create(
            token=token, user=token.user if token is not None else None,
            creator=token.created_by if token is not None else None, method=_clean_text(request.method, 10),
            path=_clean_text(request.path, 500), query=_clean_text(request.META.get("QUERY_STRING", ""), 500),
            status_code=response.status_code, remote_addr=_client_ip(request),
            duration_ms=round((time.monotonic() - started) * 1000, 2), detail=_clean_text(detail, 2000), **ids)
    except Exception:  # noqa: BLE001 - the call itself is answered; the record is best effort
        log.exception("could not record API call %s %s", request.method, request.path)


def _internal_error(request) -> JsonResponse:
    """500 without the exception (its text could quote connection details); the log has it."""
    log.exception("API call %s %s failed", request.method, request.path)
    return error_response(500, "internal error; the server log has the details")


def api_view(public: bool = False, **permissions: list[str]):
    """`permissions`: for each allowed method, the Django permissions it needs (see require).
    `public`: no token needed (the schema); still recorded."""
    methods = tuple(permissions)

    def decorator(view):
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            started = time.monotonic()
            request.api_call = {}
            try:
                with no_tenant():
                    if not public:
                        authenticate(request)
                        request.user = request.api_token.user
                    if request.method not in methods:
                        raise ApiError(405, f"method {request.method} is not allowed here; use {', '.join(methods)}",
                                       {"Allow": ", ".join(methods)})
                    if not public:
                        require(request, *permissions[request.method])
                    check_query(request)
                    response = view(request, *args, **kwargs)
            except ApiError as exc:
                response = exc.response()
            except TenantMoveError as exc:
                response = mapped_response(exc) or _internal_error(request)
            except (psycopg.OperationalError, db.OperationalError):
                # A database the call needs does not answer (a tenant's server down): the caller may
                # retry; what failed is logged, never sent (a connection error can name hosts).
                log.warning("API %s %s: a database is unreachable", request.method, request.path, exc_info=True)
                response = error_response(503, "a database this request needs is unreachable; retry later",
                                          {"Retry-After": "30"})
            except RequestDataTooBig:
                response = error_response(413, "request body too large (DATA_UPLOAD_MAX_MEMORY_SIZE); archives go "
                                               "to /api/admin/tenants/restore")
            except Exception:  # noqa: BLE001
                response = _internal_error(request)
            record(request, response, started)
            return response

        wrapper.api_methods = methods
        wrapper.api_permissions = permissions
        return wrapper

    return decorator
