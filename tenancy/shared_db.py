"""The shared database's connection parameters, built in one place from
settings.DATABASES["default"] as they are now (the embedded cluster's port can change between
starts; tests use another database name). Never log the result: it holds the password."""
from django.conf import settings


def shared_conninfo(dbname: str | None = None, *, connect_timeout: int | None = 10) -> dict:
    """psycopg connection keywords for the shared database (or `dbname` on its server)."""
    db = settings.DATABASES["default"]
    info = {"host": db.get("HOST") or "localhost", "port": int(db.get("PORT") or 5432), "user": db.get("USER"),
            "dbname": dbname or db["NAME"]}
    if connect_timeout is not None:
        info["connect_timeout"] = connect_timeout
    if db.get("PASSWORD"):
        info["password"] = db["PASSWORD"]
    return info


def shared_password() -> str:
    """The shared database's password ("" when there is none): a secret to redact."""
    return settings.DATABASES["default"].get("PASSWORD") or ""
