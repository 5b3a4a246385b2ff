"""Build secondary indexes and foreign keys after the bulk load, not row by row during it.

`secondary_objects` lists, for one table of a place, everything the load can do without:
indexes other than the primary key's, UNIQUE / EXCLUDE constraints (with their indexes) and
FOREIGN KEY constraints. CHECK and NOT NULL constraints, the primary key and triggers stay
(cheap, and the PK keeps the copy honest). Each object is a JSON-serialisable dict

    {"kind": "index" | "constraint", "name": ..., "table": ..., "definition": ...,
     "contype": "u" | "x" | "f"   (constraints only),
     "references_index": ...      (foreign keys only: the referenced unique index)}

with `definition` exactly as pg_get_indexdef / pg_get_constraintdef print it, read with
search_path set to the place's schema (so a foreign key prints `REFERENCES shop_customer(id)`
in every place, and is re-created in the same place). The caller stores the list before
`drop_secondary`, so a crash between drop and `restore_secondary` is repaired from it; both
are idempotent. Names are kept, so later Django migrations find what they made.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
from psycopg import sql

from .copy import engine_session
from .places import Place

# Restore order: indexes, then UNIQUE/EXCLUDE constraints, then foreign keys (which need
# the referenced unique indexes). Drop order is the reverse.
_RANK = {"index": 0, "u": 1, "x": 1, "f": 2}


def _rank(obj: dict) -> int:
    if obj["kind"] == "index":
        return 0
    contype = obj.get("contype") or ("f" if obj["definition"].startswith("FOREIGN KEY") else "u")
    return _RANK.get(contype, 1)


@contextmanager
def _search_path(conn: psycopg.Connection, schema: str):
    """Only `schema` (after pg_catalog) on the search_path for the block, restored after."""
    previous = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
    conn.execute("SELECT set_config('search_path', quote_ident(%s), false)", (schema,))
    try:
        yield
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute("SELECT set_config('search_path', %s, false)", (previous,))


def secondary_objects(conn: psycopg.Connection, place: Place, table_name: str) -> list[dict]:
    """Secondary indexes and UNIQUE / EXCLUDE / FOREIGN KEY constraints of one table."""
    with _search_path(conn, place.schema):
        rel = conn.execute(
            """SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')""",
            (place.schema, table_name)).fetchone()
        if rel is None:
            raise LookupError(f"table {table_name} does not exist in {place}")
        oid = rel[0]
        indexes = conn.execute(
            """SELECT ic.relname, pg_get_indexdef(i.indexrelid)
                 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                WHERE i.indrelid = %s AND NOT i.indisprimary
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint co
                                   WHERE co.conindid = i.indexrelid AND co.conrelid = i.indrelid
                                     AND co.contype IN ('p', 'u', 'x'))
                ORDER BY ic.relname""", (oid,)).fetchall()
        constraints = conn.execute(
            """SELECT co.conname, co.contype, pg_get_constraintdef(co.oid), ic.relname
                 FROM pg_constraint co LEFT JOIN pg_class ic ON ic.oid = co.conindid
                WHERE co.conrelid = %s AND co.contype IN ('u', 'x', 'f')
                ORDER BY CASE co.contype WHEN 'f' THEN 1 ELSE 0 END, co.conname""", (oid,)).fetchall()
    objects = [{"kind": "index", "name": name, "table": table_name, "definition": definition}
               for name, definition in indexes]
    for name, contype, definition, index in constraints:
        obj = {"kind": "constraint", "name": name, "table": table_name, "definition": definition, "contype": contype}
        if contype == "f":
            obj["references_index"] = index  # the referenced table's unique index the FK relies on
        objects.append(obj)
    return objects


def _exists(conn: psycopg.Connection, place: Place, obj: dict) -> bool:
    if obj["kind"] == "index":
        query = """SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('i', 'I')"""
        args = (place.schema, obj["name"])
    else:
        query = """SELECT 1 FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = %s AND c.relname = %s AND co.conname = %s"""
        args = (place.schema, obj["table"], obj["name"])
    return conn.execute(query, args).fetchone() is not None


def drop_secondary(conn: psycopg.Connection, place: Place, objects: list[dict]) -> list[str]:
    """Drop the objects (foreign keys first). Absent ones are skipped. Returns the names dropped.

    Never CASCADE: an object something else depends on (a foreign key of a table not in
    the list referencing a UNIQUE constraint of the list) makes the drop fail instead.
    """
    if place.kind == "shared":
        raise ValueError("refusing to drop indexes or constraints of the shared tables: they are live "
                         "for every tenant (deferral is for a dedicated target being filled)")
    dropped = []
    for obj in sorted(objects, key=_rank, reverse=True):
        if not _exists(conn, place, obj):
            continue
        if obj["kind"] == "index":
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(place.schema, obj["name"])))
        else:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                place.table(obj["table"]), sql.Identifier(obj["name"])))
        dropped.append(obj["name"])
    return dropped


def _check_index_definition(conn: psycopg.Connection, place: Place, obj: dict) -> None:
    """An index definition must be for this place's table (it names the table with its schema)."""
    expected = conn.execute("SELECT format(' ON %%I.%%I ', %s::text, %s::text)",
                            (place.schema, obj["table"])).fetchone()[0]
    only = expected.replace(" ON ", " ON ONLY ", 1)
    if expected not in obj["definition"] and only not in obj["definition"]:
        raise ValueError(f"index {obj['name']} is defined for another place than {place}: "
                         "read the objects from the place they are restored to")


def _create(conn: psycopg.Connection, place: Place, obj: dict) -> None:
    if obj["kind"] == "index":
        _check_index_definition(conn, place, obj)
        conn.execute(sql.SQL(obj["definition"]))
    else:
        with _search_path(conn, place.schema):  # REFERENCES <table> resolves in the place
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                place.table(obj["table"]), sql.Identifier(obj["name"]), sql.SQL(obj["definition"])))


def restore_secondary(conn: psycopg.Connection, place: Place, objects: list[dict], *, workers: int = 1,
                      maintenance_work_mem: str | None = None) -> list[str]:
    """Create the objects that do not exist (indexes, then UNIQUE, then foreign keys).

    Objects that exist already are skipped, so calling it again is harmless. With
    `workers` > 1 the work is spread over that many new autocommit connections to the place,
    one table at a time per worker (its indexes, UNIQUE constraints, then its foreign keys
    to primary keys), biggest tables first; each object is committed as soon as it is built.
    Foreign keys that reference a UNIQUE constraint or index of the list wait for the end
    and are added on `conn`, like everything when `workers` is 1. `conn` should be in
    autocommit mode (or the caller commits). `maintenance_work_mem` (e.g. "512MB") is set
    on the building sessions. Returns the names created.
    """
    ordered = sorted(objects, key=_rank)
    unique_names = {o["name"] for o in ordered if _rank(o) < 2}
    # A foreign key needs the referenced key's index: the primary key's is never dropped.
    late = [o for o in ordered if _rank(o) == 2 and o.get("references_index", "?") in unique_names | {"?"}]
    early = [o for o in ordered if o not in late]
    created: list[str] = []
    lock = threading.Lock()

    def run(c, group):
        for obj in group:
            if not _exists(c, place, obj):
                _create(c, place, obj)
                with lock:
                    created.append(obj["name"])

    def build(group):
        with place.connect(autocommit=True, application_name="tenant-move restore") as c:
            engine_session(c)
            if maintenance_work_mem:
                c.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
            run(c, group)

    tables = {o["table"] for o in early}
    if workers > 1 and len(tables) > 1:
        by_table: dict[str, list[dict]] = defaultdict(list)
        for obj in early:
            by_table[obj["table"]].append(obj)
        sizes = dict(conn.execute(
            """SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %s AND c.relname = ANY(%s)""", (place.schema, list(tables))).fetchall())
        groups = sorted(by_table.values(), key=lambda g: (sizes.get(g[0]["table"], 0), len(g)), reverse=True)
        pool = ThreadPoolExecutor(max_workers=min(workers, len(groups)), thread_name_prefix="tenant-restore")
        try:
            for future in [pool.submit(build, g) for g in groups]:
                future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error, start nothing more
    else:
        late = early + late
    if late:
        previous = conn.execute("SELECT current_setting('maintenance_work_mem')").fetchone()[0]
        if maintenance_work_mem:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
        try:
            run(conn, late)
        finally:
            if maintenance_work_mem and conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
                conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (previous,))
    return created


def table_objects(conn: psycopg.Connection, place: Place, table_names) -> list[dict]:
    """secondary_objects of several tables, concatenated (what the caller stores)."""
    return [obj for name in table_names for obj in secondary_objects(conn, place, name)]
