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
from django.core.exceptions import DisallowedHost
from django.http import JsonResponse

from tenancy.context import no_tenant, tenant_context
from tenancy.error_reporting import bad_request
from tenancy.refusal import retry_after
from tenancy.routing import routes

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
security_log = logging.getLogger("django.security.DisallowedHost")


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
