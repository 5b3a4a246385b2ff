"""Counting the statements a step sends to PostgreSQL servers: its round trips.

A move's fixed costs are mostly waiting on the network, one statement at a time; counting
them per step (the run records `round_trips` in each step's details) keeps them visible, and
a test fails when a step starts sending a statement per row.

What is counted, while at least one `counting()` block is open in this process:
- every statement of the engine's psycopg connections made with `connect()` (Place.connect
  uses it): execute, executemany (one), copy, stream, the implicit BEGIN of a connection that
  is not autocommit, commit and rollback; opening the connection is counted in `connections`;
- every Django ORM query, on every alias and every thread (an execute wrapper is put on each
  Django connection when it opens, and on the calling thread's when the block starts), and
  the connections the ORM opens (a copy worker thread opens its own).
Not counted: plain psycopg.connect connections made elsewhere (the run lock, provisioning's
admin connections), server-side cursors' fetches.

The counters are process-wide, not per thread, because copy workers are threads of the
step: two steps running at once in one process would each count the other's statements
too (the executor runs one step at a time per process). Counting is one lock per statement.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from django.db import connections
from django.db.backends.signals import connection_created

_lock = threading.Lock()
_active: list["RoundTrips"] = []


@dataclass
class RoundTrips:
    statements: int = 0
    connections: int = 0

    def as_dict(self) -> dict:
        return {"round_trips": self.statements, "connections": self.connections}


def _count(statements: int = 1, opened: int = 0) -> None:
    if not _active:  # the common case outside a step: no lock
        return
    with _lock:
        for counter in _active:
            counter.statements += statements
            counter.connections += opened


@contextmanager
def counting():
    """Count the statements sent by this process while the block runs; yields RoundTrips."""
    counter = RoundTrips()
    for alias in connections:
        _watch(connections[alias])
    with _lock:
        _active.append(counter)
    try:
        yield counter
    finally:
        with _lock:
            # By identity: two blocks of two threads can hold equal counts (RoundTrips compares
            # by value), and list.remove would take the other thread's, then fail for it.
            _active[:] = [c for c in _active if c is not counter]


# --- psycopg ----------------------------------------------------------------------------------

class CountingCursor(psycopg.Cursor):
    def _begins(self) -> int:
        conn = self.connection
        return int(not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)

    def execute(self, query, params=None, **kwargs):
        _count(1 + self._begins())
        return super().execute(query, params, **kwargs)

    def executemany(self, query, params_seq, **kwargs):
        _count(1 + self._begins())  # pipelined: about one round trip
        return super().executemany(query, params_seq, **kwargs)

    def copy(self, statement, params=None, **kwargs):
        _count(1 + self._begins())
        return super().copy(statement, params, **kwargs)

    def stream(self, query, params=None, **kwargs):
        _count(1 + self._begins())
        return super().stream(query, params, **kwargs)


class CountingConnection(psycopg.Connection):
    def commit(self):
        if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            _count(1)
        return super().commit()

    def rollback(self):
        if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            _count(1)
        return super().rollback()


def connect(**kwargs) -> psycopg.Connection:
    """psycopg.connect whose statements are counted."""
    conn = CountingConnection.connect(cursor_factory=CountingCursor, **kwargs)
    _count(0, opened=1)
    return conn


# --- Django ORM -------------------------------------------------------------------------------

def _orm_wrapper(execute, sql, params, many, context):
    _count(1)
    return execute(sql, params, many, context)


def _watch(wrapper) -> None:
    if _orm_wrapper not in wrapper.execute_wrappers:
        wrapper.execute_wrappers.append(_orm_wrapper)


def _on_connection_created(sender, connection, **kwargs):
    _watch(connection)  # before Django's own set-up queries on it (type look-ups): counted too
    _count(0, opened=1)


connection_created.connect(_on_connection_created, dispatch_uid="migration_jobs.roundtrips")
