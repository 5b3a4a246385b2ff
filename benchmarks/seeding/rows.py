"""The rows of one tenant: per shop table one `INSERT ... SELECT` of generation.py's
expressions (repairs and their children in chunks of CHUNK repairs), ids assigned in blocks
after each table's current max id, so nothing is read back and no row crosses the wire."""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable

from psycopg import sql

from .generation import CHILDREN, GENERATORS, MASTERS
from .tables import shop_models
from .tenants import SeedError, TenantSeed
from .vocabulary import SPAN_US, catalogs, vocabulary

CHUNK = 20000  # repairs per INSERT (children follow in the same chunk)
ROWS_PER_REPAIR = 8.8  # measured average of repair + its children, for planning only

Progress = Callable[[str, str, int], None]  # (tenant slug, table, rows just inserted)


def _insert(cur, model, params: dict) -> int:
    exprs, source = GENERATORS[model.__name__]()
    cols = [f.column for f in model._meta.concrete_fields]
    if set(cols) != set(exprs):
        raise SeedError(f"seeding of {model._meta.db_table} is out of date with its model: "
                        f"missing {sorted(set(cols) - set(exprs))}, unknown {sorted(set(exprs) - set(cols))}")
    query = sql.SQL("INSERT INTO {table} ({cols}) SELECT {exprs} {source}").format(
        table=sql.Identifier(model._meta.db_table),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
        exprs=sql.SQL(", ").join(sql.SQL(exprs[c]) for c in cols),
        source=_source(source))
    cur.execute(query, params)
    return cur.rowcount


def _source(source: str) -> sql.Composed:
    """A FROM clause whose @model@ tokens (lower-case model names) become quoted table names."""
    tables = {name.lower(): m._meta.db_table for name, m in _by_name().items()}
    pieces = re.split(r"@(\w+)@", source)
    return sql.Composed([sql.Identifier(tables[piece]) if i % 2 else sql.SQL(piece)
                         for i, piece in enumerate(pieces)])


def _by_name() -> dict:
    return {m.__name__: m for m in shop_models()}



def seed_tenant(cur, rank: int, tenant: TenantSeed, seed: int, next_id: dict, progress: Progress | None):
    models = _by_name()
    vocab = vocabulary()

    def run(name: str, params: dict) -> int:
        model = models[name]
        table = model._meta.db_table
        p = {**vocab, **common, **params, "s": _salt(seed, rank, table), "base": next_id[table]}
        n = _insert(cur, model, p)
        next_id[table] += n
        tenant.rows[table] = tenant.rows.get(table, 0) + n
        if progress is not None and n:
            progress(tenant.slug, table, n)
        return n

    repairs = _repairs_for(tenant.target_rows)
    masters = _masters(repairs)
    tbl = {name: models[name]._meta.db_table for name in GENERATORS}
    common = {"t": tenant.tenant_id, "domain": f"{tenant.slug.replace('_', '-')}.example",
              "s_rep": _salt(seed, rank, tbl["Repair"]), "s_dev": _salt(seed, rank, tbl["Device"]),
              "s_cus": _salt(seed, rank, tbl["Customer"]), "s_par": _salt(seed, rank, tbl["SparePart"]),
              "ebase": next_id[tbl["Employee"]], "E": masters["Employee"],
              "cbase": next_id[tbl["Customer"]], "C": masters["Customer"],
              "dbase": next_id[tbl["Device"]], "D": masters["Device"],
              "pbase": next_id[tbl["SparePart"]], "P": masters["SparePart"],
              "R": repairs, "span": SPAN_US, **catalogs(seed)}
    for name in MASTERS:
        run(name, {"n": masters[name]})
    for table in tbl.values():
        tenant.rows.setdefault(table, 0)

    done, todo = 0, repairs
    while True:
        while done < todo:
            lo, hi = done + 1, min(todo, done + CHUNK)
            chunk = {"lo": lo, "hi": hi, "rbase": next_id[tbl["Repair"]]}
            run("Repair", chunk)
            for name in CHILDREN:
                run(name, chunk)
            done = hi
        missing = tenant.target_rows - tenant.total_rows
        if missing <= 0:
            break
        todo += max(1, math.ceil(missing / ROWS_PER_REPAIR))  # top up: rare, estimates are conservative



def _masters(repairs: int) -> dict[str, int]:
    customers = max(3, repairs * 35 // 100)
    return {"Employee": min(60, 3 + repairs // 300), "Customer": customers,
            "Device": customers + customers * 3 // 10, "SparePart": min(2000, 20 + repairs // 25)}


def _repairs_for(target: int) -> int:
    """Fewest repairs whose expected total (masters + repairs with children) reaches target."""
    lo, hi = 1, max(1, target)
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(_masters(mid).values()) + mid * ROWS_PER_REPAIR >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _salt(seed: int, rank: int, table: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{rank}:{table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2  # < 2**62: salt + small k stays a bigint

