"""No secret in any error report: the debug page (DEBUG), 500 e-mails and logged tracebacks.

Django's own filter hides settings and variables by *name*; a dedicated database's password
sits in frame locals under names it does not know (`conn_params`, `settings_dict`), in
exception messages or in request data. So every known secret *value* is replaced wherever
it appears in what is emitted:

- the shared database's password and every connection's PASSWORD (connections.settings, so
  a tenant alias registered by the router is covered without a query),
- every tenant role password and server admin password, decrypted from the database
  (cached for CACHE_SECONDS, read on a separate connection when the request's is broken),
- SECRET_KEY (and fallbacks), TENANT_ENCRYPTION_KEY and the old keys, the SMTP password and
  the Redis broker's password (Q_BROKER_URL),
- anything shaped like an API token (`tmt_<prefix>_<secret>`; only hashes are stored).

The filter cleanses frame variables, request data, META, cookies and settings (by key name
and by value), the reporter redacts its final text/HTML once more (raw, HTML-escaped and
repr-escaped forms), and RedactingFormatter does the same for log lines.
"""
from __future__ import annotations

import html
import logging
import re
import threading
import time
from functools import lru_cache
from urllib.parse import quote, quote_plus

from django.conf import settings
from django.db import connections, transaction
from django.http import HttpResponseBadRequest, JsonResponse
from django.views import defaults
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

from tenancy import crypto

log = logging.getLogger(__name__)

REDACTED = "********************"
CACHE_SECONDS = 30.0
MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary text (and guard nothing)
API_TOKEN = re.compile(r"tmt_[0-9a-f]+_[A-Za-z0-9_\-]+")

_lock = threading.Lock()
_stored: frozenset[str] = frozenset()  # decrypted from the database at `_stored_at`
_stored_at = float("-inf")
_busy = threading.local()


def _settings_secrets() -> set[str]:
    found = {settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ()),
             getattr(settings, "TENANT_ENCRYPTION_KEY", ""), *getattr(settings, "TENANT_ENCRYPTION_OLD_KEYS", ()),
             getattr(settings, "EMAIL_HOST_PASSWORD", ""),
             # The Redis broker's (Q_BROKER_URL), parsed into django-q2's settings.
             (getattr(settings, "Q_CLUSTER", {}).get("redis") or {}).get("password") or ""}
    for alias_settings in list(connections.settings.values()):
        found.add(alias_settings.get("PASSWORD") or "")
    for db in settings.DATABASES.values():
        found.add(db.get("PASSWORD") or "")
    return {str(value).strip() for value in found if value}


def _read_stored(connection) -> set[str]:
    found = set()
    with connection.cursor() as cursor:
        cursor.execute("SELECT password_encrypted FROM tenancy_databasecredential")
        credentials = [(token, crypto.CREDENTIAL_CONTEXT) for (token,) in cursor.fetchall()]
        cursor.execute("SELECT admin_password_encrypted FROM tenancy_databaseserver "
                       "WHERE admin_password_encrypted <> ''")
        credentials += [(token, crypto.SERVER_CONTEXT) for (token,) in cursor.fetchall()]
    for token, context in credentials:
        try:
            found.add(crypto.decrypt(token, context=context))
        except Exception:  # noqa: BLE001 - one unreadable token (an old key gone) hides no other
            continue
    return found


def _stored_secrets(query: bool) -> frozenset[str]:
    """Passwords stored encrypted: re-read at most every CACHE_SECONDS, never recursively;
    on any failure the last ones read are used."""
    global _stored, _stored_at
    if not query or getattr(_busy, "on", False) or time.monotonic() - _stored_at < CACHE_SECONDS:
        return _stored
    _busy.on = True
    try:
        current = connections["default"]
        found = None
        if current.connection is not None and not current.needs_rollback:
            try:  # the request's own connection sees its uncommitted credentials (and tests');
                # in a savepoint, so a failure here leaves the caller's transaction as it was
                with transaction.atomic(using=current.alias):
                    found = _read_stored(current)
            except Exception:  # noqa: BLE001 - any failure: try a connection of our own
                found = None
        if found is None:
            own = connections.create_connection("default")
            try:
                found = _read_stored(own)
            finally:
                own.close()
        with _lock:
            _stored, _stored_at = frozenset(found), time.monotonic()
    except Exception as exc:  # noqa: BLE001 - reporting an error must not raise another
        log.warning("error reports: stored passwords not read (%s); using the last ones read", type(exc).__name__)
    finally:
        _busy.on = False
    return _stored


def forget_cached_secrets() -> None:
    global _stored, _stored_at
    with _lock:
        _stored, _stored_at = frozenset(), float("-inf")


def known_secrets(query: bool = True) -> list[str]:
    """Every secret value this process knows (sorted: the same set gives the same list)."""
    values = _settings_secrets() | set(_stored_secrets(query))
    return sorted(v for v in values if len(v) >= MIN_SECRET_LENGTH)


def _forms(secret: str) -> set[str]:
    """The ways a secret is written in a report: as is, repr-escaped, HTML- and URL-escaped."""
    forms = {secret, repr(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}
    return forms | {html.escape(form) for form in forms} | {html.escape(form, quote=False) for form in forms}


@lru_cache(maxsize=4)
def _matcher(secrets: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Every written form of the secrets, by its first MIN_SECRET_LENGTH characters (longest
    first): one pass over a text finds them all, however many tenants there are."""
    by_prefix: dict[str, set[str]] = {}
    for secret in secrets:
        for form in _forms(secret):
            if len(form) >= MIN_SECRET_LENGTH:
                by_prefix.setdefault(form[:MIN_SECRET_LENGTH], set()).add(form)
    return {prefix: tuple(sorted(forms, key=len, reverse=True)) for prefix, forms in by_prefix.items()}


def redact(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every form of every secret (and anything shaped like an API token) replaced."""
    if not isinstance(text, str) or not text:
        return text
    by_prefix = _matcher(tuple(known_secrets() if secrets is None else secrets))
    if by_prefix:
        out, start, i, end = [], 0, 0, len(text) - MIN_SECRET_LENGTH + 1
        while i < end:
            forms = by_prefix.get(text[i:i + MIN_SECRET_LENGTH])
            found = next((form for form in forms if text.startswith(form, i)), None) if forms else None
            if found is None:
                i += 1
                continue
            out.append(text[start:i])
            out.append(REDACTED)
            i = start = i + len(found)
        out.append(text[start:])
        text = "".join(out)
    return API_TOKEN.sub(REDACTED, text)


class _Redacted:
    """Stands in for a frame variable whose repr held a secret: shows the redacted repr."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self):
        return self.text


class SecretRedactingFilter(SafeExceptionReporterFilter):
    """Django's filter, active even with DEBUG on, that also hides known secret values."""

    def is_active(self, request):
        return True  # sensitive_variables / sensitive_post_parameters count with DEBUG on too

    def _clean(self, key, value, secrets, depth=0):
        if isinstance(key, str) and key and (key == settings.SESSION_COOKIE_NAME or self.hidden_settings.search(key)):
            return self.cleansed_substitute
        if isinstance(value, str):
            return redact(value, secrets)
        if depth < 4 and isinstance(value, dict):
            return {k: self._clean(k, v, secrets, depth + 1) for k, v in value.items()}
        if depth < 4 and isinstance(value, (list, tuple)):
            return type(value)(self._clean("", v, secrets, depth + 1) for v in value)
        try:
            shown = repr(value)
        except Exception:  # noqa: BLE001 - Django shows such values as their error, so do we
            return value
        cleaned = redact(shown, secrets)
        return value if cleaned == shown else _Redacted(cleaned)

    def cleanse_setting(self, key, value):
        return self._clean(key, super().cleanse_setting(key, value), known_secrets())

    def get_post_parameters(self, request):
        params = super().get_post_parameters(request)
        if not params:
            return params
        secrets = known_secrets()
        cleaned = params.copy()
        for key in cleaned:
            cleaned.setlist(key, [self._clean(key, v, secrets) for v in params.getlist(key)])
        return cleaned

    def get_traceback_frame_variables(self, request, tb_frame):
        secrets = known_secrets()
        return [(name, value if isinstance(value, str) and value == self.cleansed_substitute else self._clean(name, value, secrets))
                for name, value in super().get_traceback_frame_variables(request, tb_frame)]


class SecretRedactingReporter(ExceptionReporter):
    """Redacts the rendered report as a whole: exception messages, chained exceptions, the
    URL, GET and FILES items are not passed through the filter by Django."""

    def get_traceback_html(self):
        return redact(super().get_traceback_html())

    def get_traceback_text(self):
        return redact(super().get_traceback_text())


class RedactingFormatter(logging.Formatter):
    """Log lines and tracebacks without known secrets. Only records with a traceback may
    read the stored passwords (cached); others use what this process already knows."""

    def format(self, record):
        text = super().format(record)
        try:
            return redact(text, known_secrets(query=bool(record.exc_info)))
        except Exception:  # noqa: BLE001 - never lose the line; settings secrets at least
            return redact(text, known_secrets(query=False))


def _is_api(request) -> bool:
    path = getattr(request, "path", "") or ""
    return path == "/api" or path.startswith("/api/")


def bad_request(request, exception=None):
    """handler400 (and the tenant middleware's answer to a disallowed Host): short, never a
    debug page; JSON under /api/ like every other API error."""
    if _is_api(request):
        return JsonResponse({"error": "bad request"}, status=400)
    return HttpResponseBadRequest("Bad Request (400)\n", content_type="text/plain; charset=utf-8")


def server_error(request):
    """handler500: JSON under /api/, Django's plain page elsewhere; never any detail."""
    if _is_api(request):
        return JsonResponse({"error": "internal server error"}, status=500)
    return defaults.server_error(request)
