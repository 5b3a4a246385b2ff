"""Records the calls to /api that never reach an API view (auth.api_view records the others):
`/api` redirected to `/api/`, a bad Host header refused before any view (400). Put it first
in MIDDLEWARE, so that it sees the response every other middleware made."""
from __future__ import annotations

import time

from api.auth import record
from tenancy.context import no_tenant


def is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


class RecordApiCalls:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.monotonic()
        response = self.get_response(request)
        if is_api_path(request.path_info) and not getattr(request, "api_recorded", False):
            if not hasattr(request, "api_call"):
                request.api_call = {}
            if response.status_code in (301, 302, 307, 308):
                request.api_call.setdefault("detail", f"redirected to {response.get('Location', '')}")
            elif not response.get("Content-Type", "").startswith("application/json"):
                request.api_call.setdefault("detail", "answered before reaching the API (e.g. a bad Host header)")
            with no_tenant():
                record(request, response, started)
        return response
