"""Picks the tenant from the request's host and enforces its status; other hosts (the
admin) run with no tenant. After the first request for a host, resolving it costs no query.

Staff paths (settings.TENANT_UNGATED_PATHS: the admin, the API, static files, metrics) are
never tenant-gated: whatever the host, they run with no tenant, so a tenant domain that
happens to equal the admin's host (`localhost`) cannot suspend the admin or the API.
A Host header that is not allowed gets a short 400 here, before anything else reads it,
never Django's debug page.
"""
import logging
import random

from django.conf import settings
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ERROR_FLAG
from django.core.exceptions import DisallowedHost, ValidationError
from django.db import DataError
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse

from tenancy.context import no_tenant, tenant_context
from tenancy.error_reporting import bad_request
from tenancy.refusal import retry_after
from tenancy.routing import routes

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
security_log = logging.getLogger("django.security.DisallowedHost")
log = logging.getLogger(__name__)


def refusal(route, method: str):
    """The response that a request to this tenant gets instead of being served, or None."""
    retry = str(retry_after(route))  # the expected remaining refusal (tenancy.refusal)
    if route.status == "suspended":
        response = JsonResponse({"error": f"tenant {route.slug} is suspended", "tenant": route.slug}, status=503)
        response["Retry-After"] = retry
        return response
    if route.status == "migrating" and method not in SAFE_METHODS:
        response = JsonResponse({"error": f"tenant {route.slug} is being moved; writes resume shortly",
                                 "tenant": route.slug}, status=503)
        response["Retry-After"] = retry
        return response
    if route.status == "read_only" and method not in SAFE_METHODS:
        return JsonResponse({"error": f"tenant {route.slug} is read-only", "tenant": route.slug}, status=409)
    return None


def is_ungated(path: str) -> bool:
    """A staff path: `/admin`, `/admin/...` but not `/administrator`."""
    for prefix in settings.TENANT_UNGATED_PATHS:
        prefix = prefix.rstrip("/")
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            return True
    return False


class TenantMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            host = request.get_host().rsplit(":", 1)[0].lower()
        except DisallowedHost as exc:
            security_log.warning("%s", exc)  # the header is the client's: Django logs it too
            return bad_request(request, exc)
        if is_ungated(request.path_info):
            request.tenant_route = None
            with no_tenant():
                return self.get_response(request)
        route = routes.by_host(host)
        request.tenant_route = route
        if route is None:
            with no_tenant():
                return self.get_response(request)
        refused = refusal(route, request.method)
        if refused is not None:
            return refused
        if route.read_route is not None and request.method in SAFE_METHODS and \
                random.random() * 100 < route.read_percent:
            route = route.read_route  # served from the in-sync copy of an online move
        request.tenant_route = route
        with tenant_context(route):
            return self.get_response(request)


def _is_api(path: str) -> bool:
    """The staff API and /metrics check their own input and answer JSON (api/auth.py)."""
    return path == "/api" or path.startswith("/api/") or path == "/metrics"


def _refuse(request, message: str, status: int = 400):
    if request.path_info.startswith("/admin"):
        return HttpResponse(f"Bad Request (400): {message}\n", status=status, content_type="text/plain; charset=utf-8")
    return JsonResponse({"error": message}, status=status)


class BadInputMiddleware:
    """Input PostgreSQL cannot take, or Django's admin does not check, is a 400 with one clear
    line, never a 500 (the API checks its own, in api/auth.py):
    - a NUL character in the path, a query parameter or a form field (psycopg refuses a NUL in
      any text it sends: "PostgreSQL text fields cannot contain NUL (0x00) bytes");
    - an admin action posted with a selected id its model's key cannot be (Django filters
      `pk__in` with it and fails with a ValueError);
    - a changelist filter the database cannot run (`?created_at__year=99999999999`, a regex
      PostgreSQL refuses): Django's own answer to a bad filter, the "?e=1" error page.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not _is_api(request.path_info):
            where = self._nul(request)
            if where:
                return _refuse(request, f"{where} contains a NUL character")
        return self.get_response(request)

    @staticmethod
    def _nul(request) -> str | None:
        if "\x00" in request.path_info:
            return "the path"
        # A multipart form is read only where views read it as a form (the admin): elsewhere the
        # view may read the raw body, which a parsed multipart stream no longer has.
        form = request.method == "POST" and (request.content_type == "application/x-www-form-urlencoded" or (
            request.content_type == "multipart/form-data" and request.path_info.startswith("/admin/")))
        sources = [("query parameter", request.GET)] + ([("form field", request.POST)] if form else [])
        for name, source in sources:
            for key, values in source.lists():
                if "\x00" in key or any("\x00" in value for value in values):
                    return f"{name} {key[:50].replace(chr(0), '')!r}"
        return None

    def process_view(self, request, view_func, view_args, view_kwargs):
        model_admin = getattr(view_func, "model_admin", None)
        if model_admin is None or request.method != "POST" or not _is_changelist(request):
            return None
        key = model_admin.model._meta.pk
        for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
            try:
                key.get_prep_value(key.to_python(value))
            except (ValidationError, ValueError, TypeError, OverflowError):
                return _refuse(request, f"selected {model_admin.model._meta.verbose_name} {value[:50]!r} is not an id")
        return None

    def process_exception(self, request, exception):
        if not isinstance(exception, (OverflowError, ValueError, DataError)) or request.method not in SAFE_METHODS:
            return None
        match = request.resolver_match
        if match is None or getattr(match.func, "model_admin", None) is None or not _is_changelist(request):
            return None
        log.info("changelist filter refused: %s", type(exception).__name__)
        if ERROR_FLAG in request.GET:
            return _refuse(request, "a filter of this list cannot be applied")
        return HttpResponseRedirect(f"{request.path}?{ERROR_FLAG}=1")


def _is_changelist(request) -> bool:
    match = request.resolver_match
    return bool(match and match.url_name and match.url_name.endswith("_changelist"))
