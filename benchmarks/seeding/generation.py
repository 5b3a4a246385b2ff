"""Generation SQL: per shop table, an expression per column and a FROM clause over
generate_series, so that every row is made server-side by `INSERT ... SELECT` (see rows.py).

Values come from `hashint8extended(row number, salt)`: nothing depends on random() or now(),
and nothing is read back. Foreign keys are computed: device d belongs to customer
cust(d), a repair of device d is for customer cust(d); children (status history, parts,
estimates, signatures) are generated from the same formulas as their repair (repair_rows),
and copy what they show of their parents (part prices, customer names) from the parents'
formulas. That lets a load drop the foreign keys and indexes and rebuild them at the end.

Generated SQL text holds only code: values are %(name)s parameters, tables @model@ tokens.
"""
from __future__ import annotations

from .vocabulary import (CATALOG, DEVICES, FIRST_NAMES, LAST_NAMES, META_VARIANTS, NOISE_BYTES, PARTS, SPAN_US,
                         TAX_RATES, vocabulary)

TICKET0 = 100000  # ticket_number = TICKET0 + repair number (unique per tenant)

_MASK = "9223372036854775807"


def _rnd(n, k: int, over: str = "g", salt: str = "s") -> str:
    """SQL: a deterministic integer in [0, n) for row `over` (n: SQL text, e.g. 10 or %(C)s)."""
    return f"mod(hashint8extended({over}, %({salt})s::bigint + {k}) & {_MASK}, {n})"


def _pick(array: str, k: int, over: str = "g", salt: str = "s", size: int | None = None) -> str:
    """SQL: a deterministic element of the text[] parameter `array`."""
    n = size or len(vocabulary()[array])
    return f"(%({array})s::text[])[1 + {_rnd(n, k, over, salt)}]"


def _slice(array: str, k: int, max_len: int, over: str = "g", salt: str = "s") -> str:
    """SQL: 0..max_len consecutive elements of the text[] parameter `array` (may be empty)."""
    n = len(vocabulary()[array])
    start = f"(1 + {_rnd(n, k, over, salt)})"
    length = _rnd(max_len + 1, k + 1, over, salt)
    return f"(%({array})s::text[])[{start}:{start} + {length} - 1]"


def _at(us: str) -> str:
    """SQL: T0 plus `us` microseconds."""
    return f"(%(t0)s::timestamptz + ({us}) * interval '1 microsecond')"


def _us(expr: str) -> str:
    """SQL: an interval of `expr` microseconds."""
    return f"(({expr}) * interval '1 microsecond')"


def _uuid(over: str, salt: str) -> str:
    """SQL: a version-4-shaped uuid from md5(salt:row)."""
    return (f"overlay(overlay(md5(%({salt})s::text || ':' || {over}) placing '4' from 13) "
            f"placing '8' from 17)::uuid")


# Repair-level values that the children compute again from the repair number g (salt s_rep).
def _waited(g: str, status: str) -> str:
    """Whether the repair waited for parts (its path has a waiting_parts step)."""
    return f"({status} = 'waiting_parts' OR {_rnd(3, 11, g, 's_rep')} = 0)"


def _step_us(g: str) -> str:
    """Time between two status changes of a repair: 20 minutes .. 3 days."""
    return f"(1200000000 + {_rnd(259200000000, 12, g, 's_rep')})"


def _nsteps(status: str, waited: str) -> str:
    """Status changes so far: the position of the status in its path."""
    return (f"(CASE {status} WHEN 'received' THEN 1 WHEN 'diagnosing' THEN 2 WHEN 'waiting_parts' THEN 3 "
            f"WHEN 'cancelled' THEN 3 WHEN 'in_repair' THEN 3 + ({waited})::int "
            f"WHEN 'ready' THEN 4 + ({waited})::int ELSE 5 + ({waited})::int END)")


def _cust_of_device(d: str) -> str:
    """Customer number of device number d: customers 1..C have devices 1..C, the rest is spread."""
    return f"(CASE WHEN {d} <= %(C)s THEN {d} ELSE 1 + {_rnd('%(C)s::bigint', 1, d, 's_dev')} END)"


def _series(picks: str, lo: str = "1", hi: str = "%(n)s") -> str:
    """FROM clause over row numbers g, with per-row picks computed once (OFFSET 0 keeps the
    planner from copying them into every expression that uses them)."""
    return f"FROM (SELECT g{picks} FROM generate_series({lo}::bigint, {hi}::bigint) g OFFSET 0) x"


# --- Per-table generators: (expressions by column, FROM clause) ------------------------------
def _employee():
    exprs = {
        "id": "%(base)s::bigint + g - 1",
        "tenant_id": "%(t)s::bigint",
        "full_name": "(%(fn)s::text[])[i] || ' ' || (%(ln)s::text[])[j]",
        "email": "(%(fna)s::text[])[i] || '.' || (%(lna)s::text[])[j] || '.' || g || '@' || %(domain)s::text",
        "role": "CASE WHEN g = 1 THEN 'owner' WHEN clerk THEN 'clerk' ELSE 'technician' END",
        "hired_on": f"date '2012-01-01' + {_rnd(3650, 4)}::int",
        "is_active": f"g = 1 OR {_rnd(10, 5)} <> 0",
        "hourly_rate": f"round((1850 + {_rnd(7650, 6)})::numeric / 100, 2)",
        "skills": f"CASE WHEN clerk THEN '{{}}'::text[] ELSE {_slice('skills', 7, 4)} END",
    }
    return exprs, _series(f", 1 + {_rnd(len(FIRST_NAMES), 1)} AS i, 1 + {_rnd(len(LAST_NAMES), 2)} AS j, "
                          f"g > 1 AND {_rnd(10, 3)} < 3 AS clerk")


def _customer():
    exprs = {
        "id": "%(base)s::bigint + g - 1",
        "tenant_id": "%(t)s::bigint",
        "public_id": _uuid("(%(base)s::bigint + g - 1)", "s"),  # of the row id: unique in the table
        "first_name": _first_name("g", "s"),
        "last_name": _last_name("g", "s"),
        "email": (f"CASE WHEN {_rnd(100, 3)} < 15 THEN NULL ELSE {_first_name('g', 's', 'fna')} || '.' || "
                  f"{_last_name('g', 's', 'lna')} || '.' || g || '@' || {_pick('mail', 4)} END"),
        "phone": (f"CASE WHEN {_rnd(10, 5)} = 0 THEN '' ELSE '+' || (30 + {_rnd(20, 6)}) || ' ' || "
                  f"lpad({_rnd(1000000000, 7)}::text, 9, '0') END"),
        "notes": f"CASE WHEN {_rnd(10, 8)} < 6 THEN NULL ELSE {_pick('notes', 9)} END",
        "loyalty_points": f"CASE WHEN {_rnd(2, 10)} = 0 THEN 0 ELSE {_rnd(5000, 11)}::int END",
        "tags": _slice("ctags", 12, 3),
        "created_at": _at(_rnd(SPAN_US, 14)),
    }
    return exprs, _series("")


def _first_name(c: str, salt: str, array: str = "fn") -> str:
    """SQL: first name (or its ascii form) of customer number c; also used by signatures."""
    return _pick(array, 1, c, salt, size=len(FIRST_NAMES))


def _last_name(c: str, salt: str, array: str = "ln") -> str:
    return _pick(array, 2, c, salt, size=len(LAST_NAMES))


def _part_price(p: str, salt: str) -> str:
    """SQL: unit price of spare part number p; also used by repair parts."""
    return f"round((250 + {_rnd(45000, 3, p, salt)})::numeric / 100, 2)"


def _device():
    exprs = {
        "id": "%(base)s::bigint + g - 1",
        "tenant_id": "%(t)s::bigint",
        "customer_id": f"%(cbase)s::bigint + {_cust_of_device('g')} - 1",
        "kind": "(%(dkind)s::text[])[m]",
        "brand": "(%(dbrand)s::text[])[m]",
        "model_name": "(%(dmodel)s::text[])[m]",
        "serial_number": (f"CASE WHEN {_rnd(4, 3)} = 0 THEN 'SN' || lpad(g::text, 8, '0') "
                          f"ELSE upper(substr(md5(%(s)s::text || ':' || g), 1, 10)) || '-' || g END"),
        "imei": (f"CASE WHEN (%(dkind)s::text[])[m] IN ('phone', 'tablet') AND {_rnd(10, 4)} > 0 "
                 f"THEN lpad({_rnd(1000000000000000, 5)}::text, 15, '0') END"),
        "purchased_on": f"CASE WHEN {_rnd(5, 6)} = 0 THEN NULL ELSE date '2016-01-01' + {_rnd(3000, 7)}::int END",
    }
    return exprs, _series(f", 1 + {_rnd(len(DEVICES), 2)} AS m")


def _sparepart():
    exprs = {
        "id": "%(base)s::bigint + g - 1",
        "tenant_id": "%(t)s::bigint",
        "sku": "(%(pcode)s::text[])[p] || '-' || lpad(g::text, 5, '0')",
        "name": "(%(pname)s::text[])[p] || CASE WHEN m > 0 THEN ' for ' || (%(dmodel)s::text[])[m] ELSE '' END",
        "unit_price": _part_price("g", "s"),
        "stock": f"({_rnd(125, 4)} - 5)::int",
        "reorder_level": f"(1 + {_rnd(20, 5)})::smallint",
        "compatible_models": _slice("dmodel", 6, 4),
        "is_discontinued": f"{_rnd(100, 8)} < 7",
    }
    return exprs, _series(f", 1 + {_rnd(len(PARTS), 1)} AS p, {_rnd(len(DEVICES) + 1, 2)} AS m")


def _repair_rows() -> str:
    """SQL subquery: repairs number g = %(lo)s..%(hi)s with d (device number), st (status),
    w (waited for parts), received, step (interval between status changes) and completed (NULL
    unless finished). The repairs' INSERT and their children's use it: children never read the
    repair table (salt s_rep)."""
    slot = "%(span)s::bigint / %(R)s::bigint"  # repairs arrive in ticket order over SPAN_US
    status = (f"CASE WHEN g * 100 <= %(R)s::bigint * 92 THEN "
              f"(CASE WHEN {_rnd(100, 3, 'g', 's_rep')} < 9 THEN 'cancelled' ELSE 'delivered' END) "
              f"ELSE {_pick('recent', 4, 'g', 's_rep')} END")
    # Finished at the ready (or cancelled) step: steps are _step_us apart.
    done_steps = "(CASE st WHEN 'cancelled' THEN 2 WHEN 'ready' THEN 3 + w::int WHEN 'delivered' THEN 3 + w::int END)"
    received = _at(f"(g - 1) * ({slot}) + {_rnd(slot, 5, 'g', 's_rep')}")
    return (f"(SELECT g, d, st, w, received, step, received + {done_steps} * step AS completed "
            f"FROM (SELECT g, d, st, {_waited('g', 'st')} AS w, {received} AS received, {_us(_step_us('g'))} AS step "
            f"FROM (SELECT g, 1 + {_rnd('%(D)s::bigint', 1, 'g', 's_rep')} AS d, {status} AS st "
            "FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g OFFSET 0) y OFFSET 0) z)")


def _repair():
    meta = f"((w::int * 2 + (st = 'delivered')::int) * {META_VARIANTS} + {_rnd(META_VARIANTS, 22)})::int"
    exprs = {
        "id": "%(base)s::bigint + g - %(lo)s::bigint",
        "tenant_id": "%(t)s::bigint",
        "device_id": "%(dbase)s::bigint + d - 1",
        "customer_id": f"%(cbase)s::bigint + {_cust_of_device('d')} - 1",
        "assigned_to_id": (f"CASE WHEN st = 'received' AND {_rnd(2, 6)} = 0 THEN NULL WHEN {_rnd(20, 7)} = 0 "
                           f"THEN NULL ELSE %(ebase)s::bigint + {_rnd('%(E)s::bigint', 8)} END"),
        "ticket_number": f"{TICKET0} + g",
        "status": "st",
        "problem": (f"{_pick('problems', 9)} || CASE WHEN {_rnd(4, 10)} = 0 THEN E'\\n' || {_pick('details', 13)} "
                    "ELSE '' END"),
        "priority": f"(CASE WHEN {_rnd(10, 14)} < 6 THEN 2 ELSE 1 + {_rnd(4, 15)} END)::smallint",
        "received_at": "received",
        "due_on": (f"CASE WHEN {_rnd(10, 16)} < 3 THEN NULL "
                   f"ELSE ((received AT TIME ZONE 'UTC')::date + (2 + {_rnd(12, 17)})::int) END"),
        "completed_at": "completed",
        "labour_minutes": (f"(CASE WHEN st IN ('received', 'cancelled') THEN 0 WHEN {_rnd(1000, 18)} = 0 "
                           f"THEN 5000000000 + {_rnd(1000000, 19)} ELSE 5 + {_rnd(600, 20)} END)::bigint"),
        "metadata": f"CASE WHEN {_rnd(5, 21)} = 0 THEN '{{}}'::jsonb ELSE %(meta)s::jsonb -> {meta} END",
    }
    return exprs, f"FROM {_repair_rows()} x"


def _children(count: str) -> str:
    """FROM clause: the chunk's repairs (alias r: the columns of _repair_rows, id, n, before), where
    r.n is the number of rows to make (SQL `count` over the columns of _repair_rows) and r.before
    the rows made for the earlier repairs: row k (1..r.n) gets id %(base)s + r.before + k - 1."""
    return ("FROM (SELECT r1.*, sum(r1.n) OVER (ORDER BY r1.g) - r1.n AS before FROM ("
            f"SELECT x.*, %(rbase)s::bigint + x.g - %(lo)s::bigint AS id, {count} AS n "
            f"FROM {_repair_rows()} x OFFSET 0) r1) r")


def _history():
    path = ("(CASE WHEN r.st = 'cancelled' THEN %(path_c)s::text[] WHEN r.w THEN %(path_w)s::text[] "
            "ELSE %(path)s::text[] END)")
    key = "(r.g * 8 + s)"
    exprs = {
        "id": "%(base)s::bigint + r.before + s - 1",
        "tenant_id": "%(t)s::bigint",
        "repair_id": "r.id",
        "from_status": "h.path[s - 1]",
        "to_status": "h.path[s]",
        "changed_at": "r.received + (s - 1) * r.step",
        "changed_by_id": (f"CASE WHEN {_rnd(10, 1, key)} = 0 THEN NULL "
                          f"ELSE %(ebase)s::bigint + {_rnd('%(E)s::bigint', 2, key)} END"),
        "note": f"CASE WHEN {_rnd(4, 3, key)} = 0 THEN {_pick('notes', 4, key)} ELSE '' END",
    }
    return exprs, (_children(_nsteps("st", "w")) + f" CROSS JOIN LATERAL (SELECT {path} AS path OFFSET 0) h "
                   "CROSS JOIN LATERAL generate_series(1, r.n) s")


def _repairpart():
    count = (f"(CASE WHEN st IN ('received', 'diagnosing', 'cancelled') THEN 0 "
             f"WHEN w THEN 1 + {_rnd(3, 1)} ELSE {_rnd(3, 2)} END)")
    key = "(r.g * 4 + j)"
    exprs = {
        "id": "%(base)s::bigint + r.before + j - 1",
        "tenant_id": "%(t)s::bigint",
        "repair_id": "r.id",
        "part_id": "%(pbase)s::bigint + q.pn - 1",
        "quantity": f"CASE WHEN {_rnd(5, 3, key)} = 0 THEN 2 + {_rnd(3, 4, key)} ELSE 1 END",
        "unit_price": f"CASE WHEN {_rnd(10, 5, key)} = 0 THEN round(q.price * 0.9, 2) ELSE q.price END",
    }
    # Parts of one repair are consecutive part numbers: distinct because n <= 3 <= P.
    part_no = f"1 + mod({_rnd('%(P)s::bigint', 6, 'r.g')} + j - 1, %(P)s::bigint)"
    return exprs, (_children(count) + " CROSS JOIN LATERAL generate_series(1, r.n) j "
                   f"CROSS JOIN LATERAL (SELECT pn, {_part_price('pn', 's_par')} AS price "
                   f"FROM (SELECT {part_no} AS pn) p OFFSET 0) q")


def _costestimate():
    count = f"(CASE WHEN st = 'received' THEN 0 WHEN {_rnd(5, 1)} = 0 THEN 2 ELSE 1 END)"
    key = "(r.g * 4 + e)"
    created = "(r.received + r.step / 2 + (e - 1) * r.step / 4)"
    exprs = {
        "id": "%(base)s::bigint + r.before + e - 1",
        "tenant_id": "%(t)s::bigint",
        "repair_id": "r.id",
        "line_items": "%(items)s::jsonb -> x.li",
        "subtotal": "x.subtotal",
        "tax_rate": "x.rate",
        "total": "round(x.subtotal * (1 + x.rate), 2)",
        "currency": _pick("curr", 2, key),
        "valid_until": f"(x.created AT TIME ZONE 'UTC')::date + (CASE WHEN {_rnd(2, 3, key)} = 0 THEN 14 ELSE 30 END)",
        "accepted": (f"CASE WHEN e < r.n THEN false WHEN r.st = 'cancelled' THEN false "
                     f"WHEN r.st = 'diagnosing' THEN NULL WHEN {_rnd(50, 4, key)} = 0 THEN NULL ELSE true END"),
        "created_at": "x.created",
    }
    picks = (f"SELECT li, round((%(items_cents)s::int8[])[1 + li] / 100.0, 2) AS subtotal, "
             f"(%(taxes)s::text[])[1 + {_rnd(len(TAX_RATES), 20, key)}]::numeric AS rate, {created} AS created "
             f"FROM (SELECT {_rnd(CATALOG, 12, key)}::int AS li) i")
    return exprs, (_children(count) + " CROSS JOIN LATERAL generate_series(1, r.n) e "
                   f"CROSS JOIN LATERAL ({picks} OFFSET 0) x")


def _signature():
    count = (f"(CASE WHEN st <> 'delivered' OR {_rnd(10, 1)} >= 6 THEN 0 "
             f"WHEN {_rnd(20, 2)} = 0 THEN 2 ELSE 1 END)")
    key = "(r.g * 4 + k)"
    # PNG magic, 32 bytes unique to the row, then a seeded slice of noise: 100 .. 700 B, one in
    # ten 3 .. 8 KB (stored out of line, in TOAST).
    length = (f"(CASE WHEN {_rnd(10, 3, key)} = 0 THEN 3000 + {_rnd(5150, 4, key)} "
              f"ELSE 60 + {_rnd(600, 5, key)} END)::int")
    image = (f"'\\x89504e470d0a1a0a'::bytea || sha256(int8send(hashint8extended({key}, %(s)s::bigint))) || "
             f"substring(%(noise)s::bytea from (1 + {_rnd(NOISE_BYTES - 8192, 9, key)})::int for {length})")
    customer = _cust_of_device("r.d")
    exprs = {
        "id": "%(base)s::bigint + r.before + k - 1",
        "tenant_id": "%(t)s::bigint",
        "repair_id": "r.id",
        "signed_by": (f"CASE WHEN k = 1 THEN {_first_name(customer, 's_cus')} || ' ' || "
                      f"{_last_name(customer, 's_cus')} ELSE {_pick('signers', 6, key)} END"),
        "signed_at": f"r.completed + r.step + (k - 1) * {_us(_rnd(3600000000, 7, key))}",
        "image": "img.image",
        "sha256": "encode(sha256(img.image), 'hex')",
    }
    return exprs, (_children(count) + " CROSS JOIN LATERAL generate_series(1, r.n) k "
                   f"CROSS JOIN LATERAL (SELECT {image} AS image OFFSET 0) img")


GENERATORS = {
    "Employee": _employee, "Customer": _customer, "Device": _device, "SparePart": _sparepart,
    "Repair": _repair, "RepairStatusHistory": _history, "RepairPart": _repairpart,
    "CostEstimate": _costestimate, "Signature": _signature,
}
CHILDREN = ["RepairStatusHistory", "RepairPart", "CostEstimate", "Signature"]
MASTERS = ["Employee", "Customer", "Device", "SparePart"]
