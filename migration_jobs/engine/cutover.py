"""The cutover of an online move: the only moment the tenant's writes are refused.

Before the freeze, everything slow is done: target sequences are raised past the source's
with a margin, both servers flush their dirty buffers (CHECKPOINT), the connections are
opened and the last catch-up rounds run on them. Then, in the freeze:
  1. fence: requests get 503 (the caller's `freeze_requests`) and the database refuses every
     write to the tenant's rows in the source (a row in the fence table, which the guard's
     triggers read: guard.py);
  2. drain: wait until no transaction begun before the freeze is still open;
  3. final rounds: apply the captured changes until a round finds none;
  4. sequences: raise a target sequence only where the source went past it;
  5. incremental verify: every table was compared in full at `verified_round`; since then
     only logged keys changed (on the source the capture logs every write, on the target only
     the catch-up writes), so comparing the rows of those keys proves the tables equal;
  6. switch (the caller's `switch`): the target becomes the tenant's place.
Any failure before the switch reopens the fence and the caller's `unfreeze_requests` runs:
nothing was written anywhere but the target, which the tenant does not use yet."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg

from migration_jobs.engine import capture
from migration_jobs.engine.guard import wait_for_older_transactions
from migration_jobs.engine.places import Place
from migration_jobs.engine.sequences import all_positions, sequence_positions, set_sequences
from migration_jobs.engine.tables import TableSpec
from migration_jobs.engine.verify import fingerprint
from migration_jobs.exceptions import StepFailed

log = logging.getLogger(__name__)


def checkpoint_servers(*places: Place) -> None:
    """Flush dirty buffers just before the freeze: the commits in the freeze must not queue
    behind a checkpoint's writes (the copy just wrote a whole tenant). Needs superuser or
    pg_checkpoint; without it the freeze is only slower."""
    for place in {place.label: place for place in places}.values():
        try:
            with place.connect(autocommit=True) as conn:
                conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            log.info("no privilege to CHECKPOINT %s before the freeze", place)


def raise_sequences(source: Place, target: Place, tables: list[TableSpec], margin: int = 0) -> dict:
    """Target sequences past the source's positions plus `margin`; returns the values set."""
    with source.connect() as s:
        floor = {table: value + margin for table, value in sequence_positions(s, source, tables).items()}
    with target.connect() as t:
        values = set_sequences(t, target, tables, floor)
        t.commit()
    return values


def check_sequences(src, dst, source: Place, target: Place, tables: list[TableSpec]) -> None:
    """In the freeze: raise a target sequence only if the source went past it (rare: the
    margin set before the freeze covers the writes the catch-up left). One query a side."""
    ahead, behind_now = all_positions(src, source, tables), all_positions(dst, target, tables)
    behind = {table: value for table, value in ahead.items() if value > behind_now.get(table, 0)}
    src.rollback()
    if behind:
        set_sequences(dst, target, [t for t in tables if t.name in behind], behind)
    dst.commit()


def verify_since(src, dst, source: Place, target: Place, run_id: int, tenant_id: int,
                 tables: list[TableSpec], verified_round: int) -> list[str]:
    """The rows of every key logged since `verified_round`, compared on both sides."""
    problems = []
    changed = capture.changed_keys(src, source, run_id, verified_round)
    for table in tables:
        keys = changed.get(table.name)
        if keys and fingerprint(src, source, table, tenant_id, keys) != fingerprint(
                dst, target, table, tenant_id, keys):
            problems.append(f"{table.name}: rows changed since the last full comparison differ")
    src.rollback()
    dst.rollback()
    return problems


@dataclass
class CutoverResult:
    frozen_at: datetime
    ended_at: datetime
    seconds: float
    final_round: int
    phases_ms: dict = field(default_factory=dict)
    final_rounds: list = field(default_factory=list)  # [changes, ms] of each round in the freeze


def _noop(*args) -> None:
    return None


def freeze_and_switch(source: Place, target: Place, run_id: int, tenant_id: int, tables: list[TableSpec], *,
                      last_round: int, verified_round: int, reason: str, sequence_margin: int, slug: str = "",
                      drain_timeout: float, freeze_max_changes: int, drain,
                      freeze_requests=_noop, unfreeze_requests=_noop, switch=_noop,
                      checkpoint=_noop) -> CutoverResult:
    """The sequence above. `drain` is the connection (or Django cursor) of the shared
    database that waits for older transactions; `switch(source_conn)` gets the source
    connection of the freeze; `checkpoint(name)` is a fault-injection hook (tests). The fence
    objects must exist (the capture step installs them)."""
    number = last_round
    raise_sequences(source, target, tables, margin=sequence_margin)
    checkpoint_servers(source, target)
    source_conn = source.connect()
    rounds = capture.round_connections(source, target)
    try:
        # Last rounds before the freeze, on the connections the freeze uses: they leave it only
        # the changes of the last few milliseconds, and warm those sessions' caches.
        for _ in range(10):
            number += 1
            if capture.apply_round(source, target, run_id, tenant_id, tables, number,
                                   connections=rounds).changes <= freeze_max_changes:
                break
        frozen_at = datetime.now(timezone.utc)
        started = time.monotonic()
        phases: dict = {}

        def lap(name):
            phases[name] = round(1000 * (time.monotonic() - started) - sum(phases.values()), 1)

        try:
            freeze_requests()
            capture.close_fence(source_conn, source, tenant_id, reason, slug=slug, ensure=False)
            lap("freeze")
            left = wait_for_older_transactions(drain, frozen_at, drain_timeout)
            if left:
                raise StepFailed(f"{left} transactions begun before the freeze did not finish")
            lap("drain")
            applied = []
            for _ in range(20):
                number += 1
                result = capture.apply_round(source, target, run_id, tenant_id, tables, number, connections=rounds)
                applied.append([result.changes, round(1000 * result.seconds, 1)])
                if result.changes == 0:
                    break
            else:
                raise StepFailed("changes kept arriving after the freeze")
            lap("apply")
            checkpoint("cutover:applied")
            check_sequences(*rounds, source, target, tables)
            lap("sequences")
            problems = verify_since(*rounds, source, target, run_id, tenant_id, tables, verified_round)
            if problems:
                raise StepFailed(f"verification at cutover failed: {'; '.join(problems)}")
            lap("verify")
            checkpoint("cutover:before-switch")
            switch(source_conn)
            lap("switch")
        except Exception:
            # Unfreeze where the tenant still lives; nothing was written anywhere else.
            with source.connect() as conn:
                capture.open_fence(conn, source, tenant_id)
            unfreeze_requests()
            raise
    finally:
        for conn in (source_conn, *rounds):
            conn.close()
    return CutoverResult(frozen_at, datetime.now(timezone.utc), time.monotonic() - started, number,
                         phases, applied)
