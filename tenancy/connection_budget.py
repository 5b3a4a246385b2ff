"""A budget for the connections a process keeps to dedicated tenant databases.

After a fleet move, every web and worker process may route to hundreds of dedicated databases;
Django keeps one connection per alias and thread (until CONN_MAX_AGE at a request boundary, or
forever in a process with no request cycle), which would exhaust the target servers'
max_connections. So:

- The router calls `use(alias)` before each query it sends to a dedicated database. When this
  thread has no open connection there yet (one is about to be opened) and the process already
  holds TENANT_MAX_DEDICATED_CONNECTIONS, room is made first, least recently used first.
- Only idle connections are closed: not inside an atomic block, not an alias the current
  request or task uses (`keep`, and the one about to be used).
- Django's connections belong to one thread. This thread's own are closed directly. Another
  thread's are closed only while that thread is between two requests (it holds a gate from
  request_started to request_finished; we take it without waiting, so it cannot start a
  request meanwhile). A thread that is inside a request, or has no request cycle (a task, a
  command), is never touched: its connections are marked, and it closes them itself at its next
  routed query or the end of its request. So one thread per process (gunicorn sync workers,
  qcluster workers), or threads between requests, never exceed the budget; threads that are
  all busy at once exceed it by at most the connections they open before their next query.
- CONN_MAX_AGE (the dedicated aliases inherit the default's) is honoured outside the request
  cycle too: this thread's connections past their age are closed whenever room is made.
"""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass

from django.conf import settings
from django.core.signals import request_finished, request_started
from django.db.backends.signals import connection_created


@dataclass
class _Open:
    ref: weakref.ref  # the thread's DatabaseWrapper for the alias (collected after its thread)
    thread: weakref.ref  # the thread that owns it
    last_used: float

    @property
    def wrapper(self):
        return self.ref()

    def orphaned(self) -> bool:
        thread = self.thread()
        return thread is None or not thread.is_alive()


_lock = threading.Lock()
_open: dict[tuple[int, str], _Open] = {}      # (thread ident, alias) -> its open connection
_marked: set[tuple[int, str]] = set()          # to be closed by their thread at its next chance
_tracked: set[str] = set()                     # the dedicated aliases routing registered
_gates: dict[int, threading.Lock] = {}         # thread ident -> held by it during each request
_local = threading.local()                     # .in_request: this thread holds its gate


def budget() -> int:
    return max(1, int(getattr(settings, "TENANT_MAX_DEDICATED_CONNECTIONS", 20)))


def use(alias: str, keep: tuple[str, ...] = ()) -> None:
    """The router is about to send a query to `alias` (a dedicated database) in this thread;
    `keep`: other aliases the current request uses, never closed to make room."""
    key = (threading.get_ident(), alias)
    entry = _open.get(key)
    if entry is not None and _is_open(entry.wrapper):
        entry.last_used = time.monotonic()
        if _marked:
            close_marked(keep=(alias, *keep))
        return
    make_room(alias, keep)


def track(alias: str) -> None:
    """Count (and close when idle) this alias's connections: routing registers each dedicated one."""
    _tracked.add(alias)


def _is_open(wrapper) -> bool:
    return wrapper is not None and wrapper.connection is not None


def _idle(wrapper) -> bool:
    return _is_open(wrapper) and not wrapper.in_atomic_block


def _prune() -> list[tuple[tuple[int, str], _Open]]:
    """Forget connections closed meanwhile (Django's close_old_connections, an error), close
    those of threads that ended (their wrappers wait for the garbage collector, which may take
    long): the open ones, least recently used first. Under _lock."""
    for key, entry in list(_open.items()):
        wrapper = entry.wrapper
        if _is_open(wrapper) and entry.orphaned():
            wrapper.inc_thread_sharing()  # its thread is gone: nobody else can be using it
            try:
                wrapper.close()
            except Exception:  # noqa: BLE001 - a dead session: closing it is all we wanted
                pass
            finally:
                wrapper.dec_thread_sharing()
        if not _is_open(wrapper):
            del _open[key]
            _marked.discard(key)
    return sorted(_open.items(), key=lambda item: item[1].last_used)


def _forget(key) -> None:
    with _lock:
        _open.pop(key, None)
        _marked.discard(key)


def _close_own(key, entry) -> None:
    try:
        entry.wrapper.close()
    finally:
        _forget(key)


def _close_between_requests(key, entry) -> bool:
    """Close another thread's idle connection if that thread is between requests."""
    gate = _gates.get(key[0])
    if gate is None or not gate.acquire(blocking=False):
        return False
    try:
        wrapper = entry.wrapper
        if not _idle(wrapper):
            return False
        wrapper.inc_thread_sharing()  # its owner waits at its gate: nobody else uses it now
        try:
            wrapper.close()
        finally:
            wrapper.dec_thread_sharing()
        _forget(key)
        return True
    finally:
        gate.release()


def make_room(alias: str, keep: tuple[str, ...] = ()) -> None:
    """Before this thread opens a connection to `alias`: bring the process's open dedicated
    connections down to the budget minus one, least recently used first."""
    me, now = threading.get_ident(), time.monotonic()
    protected = {alias, *keep}
    with _lock:
        ordered = _prune()
    for key, entry in ordered:  # CONN_MAX_AGE, for this thread's (no request cycle may do it)
        wrapper = entry.wrapper
        if key[0] == me and key[1] not in protected and _idle(wrapper) and wrapper.close_at is not None \
                and wrapper.close_at <= now:
            _close_own(key, entry)
    with _lock:
        ordered = _prune()
    excess = len(ordered) - budget() + 1
    for key, entry in ordered:
        if excess <= 0:
            return
        if key[0] == me:
            if key[1] not in protected and _idle(entry.wrapper):
                _close_own(key, entry)
                excess -= 1
        elif _close_between_requests(key, entry):
            excess -= 1
    if excess > 0:  # busy threads' connections: their owners close them at their next chance
        with _lock:
            for key, _ in _prune():
                if excess <= 0:
                    break
                if key[0] != me and key not in _marked:
                    _marked.add(key)
                    excess -= 1


def close_marked(keep: tuple[str, ...] = ()) -> None:
    """Close this thread's connections that another thread marked, if idle."""
    me = threading.get_ident()
    with _lock:
        mine = [(key, _open[key]) for key in _marked if key[0] == me and key in _open]
    for key, entry in mine:
        if key[1] not in keep and _idle(entry.wrapper):
            _close_own(key, entry)


def open_connections() -> int:
    """Dedicated connections this process holds open now (every thread)."""
    with _lock:
        return len(_prune())


def _opened(sender, connection, **kwargs) -> None:
    if connection.alias in _tracked:
        with _lock:
            _open[(threading.get_ident(), connection.alias)] = _Open(
                weakref.ref(connection), weakref.ref(threading.current_thread()), time.monotonic())


def _request_started(sender, **kwargs) -> None:
    if getattr(_local, "in_request", False):
        return
    me = threading.get_ident()
    gate = _gates.get(me)
    if gate is None:
        with _lock:
            gate = _gates.setdefault(me, threading.Lock())
    # Waits only while another thread closes one of ours; longer, the gate was left held by a
    # thread that died in a request and whose ident this one reuses: a new gate then.
    if not gate.acquire(timeout=5.0):
        with _lock:
            gate = _gates[me] = threading.Lock()
        gate.acquire()
    _local.in_request = True


def _request_finished(sender, **kwargs) -> None:
    if _marked:
        close_marked()
    if getattr(_local, "in_request", False):
        _local.in_request = False
        _gates[threading.get_ident()].release()


connection_created.connect(_opened, dispatch_uid="tenancy.connection_budget")
request_started.connect(_request_started, dispatch_uid="tenancy.connection_budget")
request_finished.connect(_request_finished, dispatch_uid="tenancy.connection_budget")
