"""Checking a request before anything changes: every entry point (admin, commands, API,
tasks) goes through these, so the same bad input is refused with the same one-line
message (`Refused`), and nothing is changed when it is."""
from __future__ import annotations

import re

import psycopg

from migration_jobs.exceptions import BadRequest, NotFound, Refused
from migration_jobs.models import MigrationRun
from migration_jobs.services.capacity import check_room
from tenancy.models import DatabaseServer, Placement, Tenant
from tenancy.servers import ensure_default_server

TARGETS = (Placement.SCHEMA, Placement.DATABASE)
# Placement names a request may use (the API's settings.database.type too), mapped to ours.
PLACEMENT_ALIASES = {"shared": Placement.SHARED, "schema": Placement.SCHEMA, "dedicated": Placement.DATABASE,
                     "database": Placement.DATABASE}
READ_SHARES = (0, 10, 50, 100)
TRUE = {"1", "true", "yes", "on"}
FALSE = {"", "0", "false", "no", "off"}
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Ids are ASCII digits only: str.isdigit() also takes '١٢' (which int() reads as 12) and '²'.
ASCII_ID = re.compile(r"[0-9]{1,30}\Z")
BIGINT_MAX = 2 ** 63 - 1
JSON_MAX_DEPTH = 32


def is_id(value) -> bool:
    """True for a non-negative id written in ASCII digits (nothing else: no sign, no space)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0 or \
        isinstance(value, str) and ASCII_ID.match(value) is not None


def _plain_text(value) -> bool:
    """Text PostgreSQL can store and compare: no NUL, no lone surrogate."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def get_tenant(slug_or_id) -> Tenant:
    """A tenant by slug or numeric id (ASCII digits), or NotFound."""
    text = str(slug_or_id)
    if not _plain_text(text):
        raise NotFound(f"unknown tenant {text!r}")
    if is_id(text):
        lookup = {"pk": int(text)} if int(text) <= BIGINT_MAX else None
    else:
        lookup = {"slug": text}
    found = Tenant.objects.filter(**lookup).first() if lookup else None
    if found is None:
        raise NotFound(f"unknown tenant {text!r}")
    return found


def tenant_id(value) -> int:
    """A tenant id given as text (a URL part, a query parameter), or BadRequest."""
    if value is None or value == "":
        raise BadRequest("missing tenant id")
    if not is_id(value):
        raise BadRequest(f"tenant id must be a number (ASCII digits), got {value!r}")
    return int(value)


def tenant_by_id(value) -> Tenant:
    """A tenant by its numeric id only (the API's URLs), or BadRequest / NotFound."""
    pk = tenant_id(value)
    found = Tenant.objects.filter(pk=pk).first() if pk <= BIGINT_MAX else None
    if found is None:
        raise NotFound(f"unknown tenant {pk}", tenant_id=pk)
    return found


def get_run(run_id) -> MigrationRun:
    """A run by its id (ASCII digits), or NotFound."""
    if not is_id(run_id) or int(run_id) > BIGINT_MAX:
        raise NotFound(f"unknown migration run {str(run_id)!r}")
    run = MigrationRun.objects.select_related("tenant", "target_server").filter(pk=int(run_id)).first()
    if run is None:
        raise NotFound(f"unknown migration run {run_id}")
    return run


def check_json(value, what: str = "body") -> None:
    """BadRequest for JSON that PostgreSQL's jsonb would refuse or that is nested deeper than
    JSON_MAX_DEPTH: a NUL or a lone surrogate in a key or a string. Names where."""
    stack = [(value, what, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > JSON_MAX_DEPTH:
            raise BadRequest(f"{what} is nested deeper than {JSON_MAX_DEPTH} levels")
        if isinstance(item, str):
            if not _plain_text(item):
                raise BadRequest(f"{path} contains a NUL character or invalid Unicode")
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _plain_text(str(key)):
                    raise BadRequest(f"a key of {path} contains a NUL character or invalid Unicode")
                stack.append((child, f"{path}.{key}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def get_server(name: str | None) -> DatabaseServer:
    if not name:
        return ensure_default_server()
    try:
        return DatabaseServer.objects.get(name=name)
    except DatabaseServer.DoesNotExist:
        known = ", ".join(DatabaseServer.objects.values_list("name", flat=True)) or "none"
        raise Refused(f"unknown database server {name!r} (known: {known})") from None


def check_reachable(server: DatabaseServer) -> None:
    try:
        with psycopg.connect(**{**server.conninfo(), "connect_timeout": 5}) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        # The class and the server, never the message: it could quote connection details.
        raise Refused(f"database server {server.name!r} ({server.host}:{server.port}) is unreachable: "
                      f"{type(exc).__name__}") from None


def reachable_server(name: str | None) -> DatabaseServer:
    """The named server (the default one without a name) for a new tenant database: checked
    reachable and with room for it (services.capacity: under its max_tenant_databases, with
    TENANT_SERVER_MIN_FREE_CONNECTIONS connections to spare), else Refused in one line."""
    server = get_server(name)
    check_reachable(server)
    check_room(server)
    return server


def boolean(value, name: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (or a JSON boolean), or Refused."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise BadRequest(f"{name} must be true or false, got {value!r}")


def placement(value, *, what: str = "placement") -> str:
    """A placement name or alias (shared, schema, database, dedicated), or BadRequest."""
    if value is None:
        raise BadRequest(f"missing field 'to': schema, database or shared" if what == "target"
                         else f"missing {what}")
    if str(value) not in PLACEMENT_ALIASES:
        hint = "schema, database or shared" if what == "target" else "shared, schema or database (or dedicated)"
        raise BadRequest(f"unknown {what} {value!r}: use {hint}")
    return PLACEMENT_ALIASES[str(value)]


def known_fields(data: dict, accepted, *, what: str = "fields") -> None:
    """BadRequest naming the keys of `data` that are not accepted."""
    unknown = sorted(set(data) - set(accepted))
    if unknown:
        raise BadRequest(f"unknown {what}: {', '.join(unknown)} (accepted: {', '.join(accepted)})")


def server_name(value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BadRequest("server must be the name of a database server")
    return value or None
