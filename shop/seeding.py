"""Demo data for the shared database: N tenants of skewed (Zipf-like) sizes, built server-side.

Every row is made by `INSERT ... SELECT ... FROM generate_series(...)`: no row crosses the
wire. Values come from `hashint8extended(row number, salt)`, where the salt is derived from
(seed, tenant rank, table), and from JSON catalogs made once per seed in Python: the same seed
gives byte-identical rows. Row ids are assigned explicitly, in blocks after the table's current
max id, and tenant ids after the largest tenant id, so on the same starting state (an empty
database, or after `--reset` of the only tenants) even ids and tenant ids repeat. Nothing
depends on random() or now().

Nothing is read back either: foreign keys are computed. Device d belongs to customer cust(d),
a repair of device d is for customer cust(d); children (status history, parts, estimates,
signatures) are generated, in chunks of CHUNK repairs, from the same formulas as their repair
(_repair_rows), and copy what they show of their parents (part prices, customer names) from
the parents' formulas. That lets a load drop every index and foreign key and rebuild them at
the end (see seed()).

Entry points: `seed()` (used by `manage.py seed_demo`), `plan()`, `demo_tenants()`,
`tenant_row_counts()`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal

from django.apps import apps
from django.conf import settings
from django.db import connections, transaction
from django.db.models import JSONField, ProtectedError, Q, RestrictedError
import psycopg
from psycopg import sql

from tenancy.models import tenant_host

# Tenant.settings key that marks a tenant as made by this module.
DEMO_MARKER = "seed_demo"
SKEW = 1.2  # Zipf exponent of tenant sizes: target(rank k) = largest / k**SKEW
MIN_TENANT_ROWS = 300
CHUNK = 20000  # repairs per INSERT (children follow in the same chunk)
TICKET0 = 100000  # ticket_number = TICKET0 + repair number (unique per tenant)
T0 = datetime(2021, 1, 1, tzinfo=timezone.utc)
SPAN_US = 5 * 365 * 86400 * 1_000_000  # repairs are spread over five years after T0
ROWS_PER_REPAIR = 8.8  # measured average of repair + its children, for planning only

Progress = Callable[[str, str, int], None]  # (tenant slug, table, rows just inserted)


class SeedError(Exception):
    """The demo data cannot be (re)built; the message says why and names the tenant."""


@dataclass
class TenantSeed:
    slug: str
    name: str
    tenant_id: int
    target_rows: int
    rows: dict[str, int] = field(default_factory=dict)  # db_table -> rows inserted

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


@dataclass
class SeedResult:
    seed: int
    tenants: list[TenantSeed]
    seconds: float
    reset_tenants: list[str] = field(default_factory=list)  # slugs deleted by reset
    bulk_load: bool = False  # secondary indexes and foreign keys were rebuilt after the load
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase

    @property
    def total_rows(self) -> int:
        return sum(t.total_rows for t in self.tenants)

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else float("inf")

    @property
    def largest(self) -> TenantSeed:
        return max(self.tenants, key=lambda t: t.total_rows)


# --- Vocabulary (passed to SQL as array parameters) ----------------------------------------
_BASE_TENANTS = [
    ("acme_repairs", "Acme Repairs"), ("fixit_berlin", "FixIt Berlin"), ("phone_doctor", "Phone Doctor"),
    ("pixel_clinic", "Pixel Clinic"), ("screen_savers", "Screen Savers"), ("byte_menders", "Byte Menders"),
    ("circuit_cafe", "Circuit Café"), ("gadget_garage", "Gadget Garage"),
    ("repair_republic", "Repair Republic"), ("solder_squad", "Solder Squad"),
    ("tech_triage", "Tech Triage"), ("mobile_medics", "Mobile Medics"), ("the_fix_lab", "The Fix Lab"),
    ("zurich_handy_fix", "Zürich Handy-Fix"), ("cafe_reparation", "Café Réparation"),
    ("lisboa_arranjos", "Lisboa Arranjos"), ("nordic_repairs", "Nordic Repairs"),
    ("oslo_elektronikk", "Oslo Elektronikk"), ("roma_riparazioni", "Roma Riparazioni"),
    ("krakow_serwis", "Kraków Serwis"), ("dublin_device_care", "O'Reilly's Device Care"),
    ("tokyo_fix", "東京フィックス"), ("athens_service", "Αθήνα Service"), ("wien_reparatur", "Wien Reparatur"),
    ("madrid_moviles", "Madrid Móviles"), ("praha_opravy", "Praha Opravy"),
    ("amsterdam_fixers", "Amsterdam Fixers"), ("brussels_gsm", "Brussels GSM"),
    ("copenhagen_care", "Copenhagen Care"), ("helsinki_huolto", "Helsinki Huolto"),
]
FIRST_NAMES = [
    ("Anna", "anna"), ("Zoë", "zoe"), ("Jürgen", "juergen"), ("Łukasz", "lukasz"), ("José", "jose"),
    ("Chloé", "chloe"), ("Søren", "soren"), ("Siobhán", "siobhan"), ("Mary-Kate", "marykate"),
    ("D'Angelo", "dangelo"), ("李", "li"), ("Владимир", "vladimir"), ("Αλέξανδρος", "alexandros"),
    ("Nguyễn Văn", "nguyen"), ("Ana María", "anamaria"), ("Tom", "tom"), ("Emma", "emma"),
    ("Noah", "noah"), ("Fatima", "fatima"), ("Mohammed", "mohammed"), ("Olivia", "olivia"),
    ("Liam", "liam"), ("Yuki", "yuki"), ("Ingrid", "ingrid"), ("Björk", "bjork"), ("Ørjan", "orjan"),
]
LAST_NAMES = [
    ("O'Brien", "obrien"), ("Müller", "mueller"), ("García", "garcia"), ("Østergaard", "ostergaard"),
    ("van der Berg", "vandenberg"), ("Nowak", "nowak"), ("Smith", "smith"), ("Rossi", "rossi"),
    ("王", "wang"), ("Иванов", "ivanov"), ("Dupont", "dupont"), ("Çelik", "celik"),
    ("Smith-Jones", "smithjones"), ("Kowalczyk", "kowalczyk"), ("Papadopoulos", "papadopoulos"),
    ("Schäfer", "schaefer"), ("Nakamura", "nakamura"), ("Johansson", "johansson"), ("Silva", "silva"),
    ("Fernández", "fernandez"), ("Dubois", "dubois"), ("Ó Súilleabháin", "osullivan"),
]
MAIL_DOMAINS = ["example.com", "example.org", "mail.example.net", "posteo.example", "firma.example.de"]
CUSTOMER_TAGS = ["vip", "business", "student", "returning", "warranty", "no-sms", "Stammkunde", "école",
                 "late-payer", "newsletter"]
NOTES = [
    "Prefers e-mail contact.",
    'Said: "it just stopped working" — twice!',
    "Call back after 17:00\nAsk for Zoë",
    "Tab\tseparated\tnotes",
    "Path C:\\Users\\repair\\backup — don't wipe",
    "Stammkunde 👍 — zahlt bar",
    "O'Brien's second phone",
    "",
    "Multi-line\r\nwindows newline",
    "日本語のメモ：画面交換済み",
    "Backslash-n literal: \\n is not a newline",
    "100% satisfied; promised 10% off next time",
    "Needs invoice for company; VAT-ID DE123456789",
    "Allergic to \"waiting\" 😅",
]
PROBLEMS = [
    "Screen cracked after a drop",
    "Won't charge — tried 3 cables",
    "Battery drains in 2 hours",
    'Customer says: "it makes a clicking noise"',
    "Water damage (fell into the sink)\nDevice off since yesterday",
    "Keyboard keys sticky:\tE, R, T",
    "Display flickers ≈ every 10 s",
    "Lautsprecher knackt bei hoher Lautstärke",
    "L'écran ne s'allume plus",
    "No boot — stuck at logo \\ recovery loop",
    "Camera blurry 📷",
    "Overheats while gaming; fan loud",
    "Touch not responding in the lower 'third'",
    "Back up data first!!! C:\\Users\\Owner\\Documents",
    "Rattling inside, something loose",
    "Face ID unavailable",
]
PROBLEM_DETAILS = [
    "Passcode: given to technician", "Data must be kept!", "Repaired elsewhere before (3rd-party screen)",
    "Kunde wartet im Laden", "Urgent — flight on Friday ✈", "Line 1\nLine 2\n\tindented line 3",
]
DEVICES = [  # (kind, brand, model_name)
    ("phone", "Apple", "iPhone 12"), ("phone", "Apple", "iPhone 13 Pro"), ("phone", "Samsung", "Galaxy S21"),
    ("phone", "Google", "Pixel 7"), ("phone", "Fairphone", "Fairphone 4"), ("phone", "Xiaomi", "Redmi Note 11"),
    ("phone", "OnePlus", "Nord 2T 5G"), ("tablet", "Apple", "iPad Air (5th gen)"),
    ("tablet", "Samsung", "Galaxy Tab S8"), ("laptop", "Lenovo", "ThinkPad X1 Carbon Gen 9"),
    ("laptop", "Apple", 'MacBook Pro 14"'), ("laptop", "Dell", "XPS 13 9310"),
    ("laptop", "ASUS", "ZenBook 14 — UX425"), ("console", "Nintendo", "Switch OLED"),
    ("console", "Sony", "PlayStation 5"), ("watch", "Apple", "Watch Series 7"),
    ("desktop", "HP", "EliteDesk 800 G6"), ("phone", "Nokia", "3310 (2017)"),
]
PARTS = [  # (sku code, name)
    ("SCR", 'Display assembly 6.1" OLED'), ("BAT", "Battery 3240 mAh"), ("CHG", "Charging port (USB-C)"),
    ("CAM", "Rear camera module"), ("KBD", "Keyboard — DE layout (QWERTZ)"), ("FAN", "Cooling fan"),
    ("SSD", "NVMe SSD 512 GB"), ("HNG", "Display hinge, left"), ("SPK", "Loudspeaker"),
    ("GLS", "Back glass"), ("BTN", "Power button flex cable"), ("THM", "Thermal paste 1 g"),
    ("JOY", "Joy-Con stick"), ("HDM", "HDMI port"), ("LCD", 'Écran LCD 10,9" — compatible'),
    ("ADH", "Adhesive strips\\set of 10"), ("SIM", "SIM tray\tgold"), ("MIC", "Mikrofon unten"),
]
SKILLS = ["soldering", "micro-soldering", "screens", "batteries", "water damage", "data recovery",
          "consoles", "laptops", "BGA rework", "diagnostics", "Mikrolöten"]
CHANNELS = ["walk-in", "online", "phone", "partner", "mail-in"]
ACCESSORIES = ["charger", "case", "SIM tray", "stylus", "box", "cable", "Hülle"]
CONDITIONS = ["scratched", "cracked screen", "water damage — Wasserschaden", "like new", "bent frame",
              "missing screws", "écran rayé"]
SUPPLIERS = ["Ersatzteil-Großhandel GmbH", "iParts Ltd.", "Pièces Détachées SARL", "深圳配件", "Parts & Co."]
COUNTRIES = ["DE", "GB", "FR", "CN", "NL", "US"]
SIGNERS = ["Pick-up by spouse", "Courier — DHL", "Colleague (company account)", "Sohn des Kunden"]
LABOUR = "Arbeitszeit / labour — diagnosis & repair"
LABOUR_RATES = ["45.00", "55.00", "65.00", "79.90"]
TAX_RATES = ["0.1900", "0.2000", "0.0770", "0.0810", "0.0000", "0.2100"]
CURRENCIES = ["EUR", "EUR", "EUR", "EUR", "CHF", "GBP", "USD", "PLN"]
PATH = ["received", "diagnosing", "in_repair", "ready", "delivered"]
PATH_WAITED = ["received", "diagnosing", "waiting_parts", "in_repair", "ready", "delivered"]
PATH_CANCELLED = ["received", "diagnosing", "cancelled"]
RECENT_STATUSES = ["received", "diagnosing", "waiting_parts", "in_repair", "ready", "delivered"]


NOISE_BYTES = 16384  # signature images are cut out of this many seeded bytes
CATALOG = 256  # estimate line item arrays per seed
META_VARIANTS = 64  # repair metadata objects per seed and (parts ordered?, delivered?)


@functools.cache
def _vocabulary() -> dict:
    """Text arrays passed to SQL as parameters (the same for every seed)."""
    return {
        "fn": [d for d, _ in FIRST_NAMES], "fna": [a for _, a in FIRST_NAMES],
        "ln": [d for d, _ in LAST_NAMES], "lna": [a for _, a in LAST_NAMES],
        "mail": MAIL_DOMAINS, "ctags": CUSTOMER_TAGS, "notes": NOTES, "problems": PROBLEMS,
        "details": PROBLEM_DETAILS, "dkind": [k for k, _, _ in DEVICES], "dbrand": [b for _, b, _ in DEVICES],
        "dmodel": [m for _, _, m in DEVICES], "pcode": [c for c, _ in PARTS], "pname": [n for _, n in PARTS],
        "skills": SKILLS, "signers": SIGNERS, "taxes": TAX_RATES, "curr": CURRENCIES,
        "path": PATH, "path_w": PATH_WAITED, "path_c": PATH_CANCELLED, "recent": RECENT_STATUSES, "t0": T0,
    }


class _Rng:
    """Deterministic choices for the Python-made catalogs: hashlib-based, so the same on every
    Python version (random's integer methods are not guaranteed to be)."""

    def __init__(self, *key) -> None:
        self._key = repr(key).encode()
        self._n = 0

    def below(self, n: int) -> int:
        self._n += 1
        digest = hashlib.blake2b(self._key + self._n.to_bytes(8, "big"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % n

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def some(self, seq, most: int) -> list:
        start = self.below(len(seq))
        return list(seq[start:start + self.below(most + 1)])


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


@functools.lru_cache(maxsize=4)
def _catalogs(seed: int) -> dict:
    """JSON values made once per seed, that rows pick by hash: building or even parsing JSON per
    row costs more than all the other columns together, extracting an element of a jsonb array
    parameter costs next to nothing.

    - meta: repair metadata objects, META_VARIANTS for each (parts ordered?, delivered?) pair,
      in that order (delivered repairs have a rating);
    - items: estimate line item arrays (1 to 4 items, labour first); items_cents their subtotals.
    - noise: bytes that signature images are cut from."""
    rng = _Rng("catalogs", seed)
    meta = []
    for parts_ordered in (False, True):
        for delivered in (False, True):
            for _ in range(META_VARIANTS):
                courier = ({"tracking": f"JJD{rng.below(10 ** 10):010d}",
                            "service": rng.choice(["DHL", "UPS", "La Poste"])} if rng.below(8) == 0 else None)
                meta.append({
                    "channel": rng.choice(CHANNELS),
                    "parts_ordered": parts_ordered,
                    "accessories": rng.some(ACCESSORIES, 3),
                    "intake": {"condition": rng.choice(CONDITIONS), "photos": rng.below(5),
                               "password_provided": rng.below(2) == 1,
                               "checklist": {"powers_on": rng.below(3) > 0, "liquid_indicator": rng.below(6) == 0}},
                    "courier": courier,
                    "rating": (10 + rng.below(41)) / 10 if delivered else None,
                })
    items, items_cents = [], []
    for _ in range(CATALOG):
        hours = Decimal(1 + rng.below(8)) / 2
        rate = Decimal(rng.choice(LABOUR_RATES))
        meta_json = _json({"warranty_months": rng.choice([0, 3, 6, 12, 24]), "supplier": None,
                           "tags": rng.some(CUSTOMER_TAGS, 2)})
        # Rendered by hand: prices keep their two decimals (89.90), as numeric in jsonb.
        lines = [f'{{"position": 1, "kind": "labour", "description": {_json(LABOUR)}, "qty": {hours:.1f}, '
                 f'"unit_price": {rate:.2f}, "meta": {meta_json}}}']
        total = hours * rate
        for position in range(2, 2 + rng.below(4)):
            qty = 1 if rng.below(5) else 2 + rng.below(3)
            price = Decimal(250 + rng.below(45000)) / 100
            name = rng.choice(PARTS)[1] + (" for " + rng.choice(DEVICES)[2] if rng.below(2) else "")
            supplier = None if rng.below(3) == 0 else {"name": rng.choice(SUPPLIERS), "country": rng.choice(COUNTRIES)}
            meta_json = _json({"warranty_months": rng.choice([0, 3, 6, 12, 24]), "supplier": supplier,
                               "tags": rng.some(CUSTOMER_TAGS, 2)})
            lines.append(f'{{"position": {position}, "kind": "part", "description": {_json(name)}, "qty": {qty}, '
                         f'"unit_price": {price:.2f}, "meta": {meta_json}}}')
            total += qty * price
        items.append("[" + ", ".join(lines) + "]")
        items_cents.append(int((total * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)))
    return {"meta": _json(meta), "items": "[" + ", ".join(items) + "]", "items_cents": items_cents,
            "noise": hashlib.shake_256(f"seed_demo noise {seed}".encode()).digest(NOISE_BYTES)}


# --- SQL expression helpers -----------------------------------------------------------------
# Generated SQL text holds only code: values are %(name)s parameters, tables @model@ tokens.
_MASK = "9223372036854775807"


def _rnd(n, k: int, over: str = "g", salt: str = "s") -> str:
    """SQL: a deterministic integer in [0, n) for row `over` (n: SQL text, e.g. 10 or %(C)s)."""
    return f"mod(hashint8extended({over}, %({salt})s::bigint + {k}) & {_MASK}, {n})"


def _pick(array: str, k: int, over: str = "g", salt: str = "s", size: int | None = None) -> str:
    """SQL: a deterministic element of the text[] parameter `array`."""
    n = size or len(_vocabulary()[array])
    return f"(%({array})s::text[])[1 + {_rnd(n, k, over, salt)}]"


def _slice(array: str, k: int, max_len: int, over: str = "g", salt: str = "s") -> str:
    """SQL: 0..max_len consecutive elements of the text[] parameter `array` (may be empty)."""
    n = len(_vocabulary()[array])
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


_GENERATORS = {
    "Employee": _employee, "Customer": _customer, "Device": _device, "SparePart": _sparepart,
    "Repair": _repair, "RepairStatusHistory": _history, "RepairPart": _repairpart,
    "CostEstimate": _costestimate, "Signature": _signature,
}
_CHILDREN = ["RepairStatusHistory", "RepairPart", "CostEstimate", "Signature"]
_MASTERS = ["Employee", "Customer", "Device", "SparePart"]


# --- Models and tables -------------------------------------------------------------------------
def shop_models() -> list:
    """The shop app's models, parents before children (by their foreign keys)."""
    models = list(apps.get_app_config("shop").get_models())
    ordered, seen = [], set()

    def visit(model):
        if model in seen:
            return
        seen.add(model)
        for f in model._meta.concrete_fields:
            target = f.related_model if f.is_relation else None
            if target is not None and target in models and target is not model:
                visit(target)
        ordered.append(model)

    for model in sorted(models, key=lambda m: m._meta.db_table):
        visit(model)
    return ordered


def shop_tables() -> list[str]:
    return [m._meta.db_table for m in shop_models()]


def _pg(conn):
    """The psycopg connection behind a Django connection (or the psycopg connection itself)."""
    if hasattr(conn, "ensure_connection"):
        conn.ensure_connection()
        return conn.connection
    return conn


def tenant_row_counts(connection, tenant_id: int) -> dict[str, int]:
    """Rows per shop table (db_table -> count) of one tenant, in one query.

    `connection` is a Django connection (its search_path applies) or a psycopg connection."""
    parts = [sql.SQL("SELECT {name}, count(*) FROM {table} WHERE tenant_id = %(t)s").format(
        name=sql.Literal(table), table=sql.Identifier(table)) for table in shop_tables()]
    query = sql.SQL(" UNION ALL ").join(parts)
    if hasattr(connection, "ensure_connection"):
        with connection.cursor() as cursor:  # Django's cursor: sets the tenant's search_path
            cursor.execute(query.as_string(_pg(connection)), {"t": tenant_id})
            rows = cursor.fetchall()
    else:
        with connection.cursor() as cursor:
            cursor.execute(query, {"t": tenant_id})
            rows = cursor.fetchall()
    return {table: count for table, count in rows}


# --- Planning ----------------------------------------------------------------------------------
def demo_tenant_names(n: int) -> list[tuple[str, str]]:
    """(slug, name) of the n demo tenants, in rank order (rank 0 is the largest)."""
    out = []
    for i in range(n):
        slug, name = _BASE_TENANTS[i % len(_BASE_TENANTS)]
        lap = i // len(_BASE_TENANTS)
        out.append((f"{slug}_{lap + 1}", f"{name} {lap + 1}") if lap else (slug, name))
    return out


def plan(tenants: int = 20, largest: int = 200_000) -> list[tuple[str, str, int]]:
    """(slug, name, target rows) per tenant: Zipf-like, largest first, at least MIN_TENANT_ROWS."""
    if tenants < 1:
        raise SeedError("--tenants must be at least 1")
    if largest < 1:
        raise SeedError("--largest must be at least 1")
    floor = min(MIN_TENANT_ROWS, largest)
    return [(slug, name, max(floor, math.ceil(largest / (rank + 1) ** SKEW)))
            for rank, (slug, name) in enumerate(demo_tenant_names(tenants))]


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


# --- Existing demo tenants ---------------------------------------------------------------------
def demo_tenants():
    """Tenants made by seed(), by slug."""
    from tenancy.models import Tenant

    return Tenant.objects.filter(settings__has_key=DEMO_MARKER).order_by("slug")


def _domain(slug: str) -> str:
    return tenant_host(slug)


def _check_resettable(tenants) -> None:
    for tenant in tenants:
        if tenant.placement != "shared":
            raise SeedError(f"cannot reset: demo tenant {tenant.slug} is in {tenant.placement} placement, "
                            "no longer in the shared database; move it back or delete it first")
        if tenant.status == "migrating":
            raise SeedError(f"cannot reset: demo tenant {tenant.slug} is being moved (status migrating)")


def _reset(cur, tenants) -> list[str]:
    """Delete the demo tenants' shop rows and the tenants (after _check_resettable and under an
    ACCESS EXCLUSIVE lock of the shop tables). TRUNCATE when the tables hold no other rows."""
    ids = [t.id for t in tenants]
    tables = shop_tables()
    others = sql.SQL(" UNION ALL ").join(
        sql.SQL("(SELECT 1 FROM {} WHERE tenant_id <> ALL(%(ids)s) LIMIT 1)").format(sql.Identifier(t))
        for t in tables)
    cur.execute(sql.SQL("SELECT EXISTS ({})").format(others), {"ids": ids})
    if not cur.fetchone()[0]:
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in tables)))
    else:
        for table in reversed(tables):  # children first
            cur.execute(sql.SQL("DELETE FROM {} WHERE tenant_id = ANY(%s)").format(sql.Identifier(table)), [ids])
    model, using = type(tenants[0]), tenants[0]._state.db
    try:
        with transaction.atomic(using=using):
            # One collector for all: no schema is dropped (pooled tenants have none), domains go too.
            model.objects.using(using).filter(id__in=ids).delete()
    except (ProtectedError, RestrictedError) as exc:
        blocking = getattr(exc, "protected_objects", None) or getattr(exc, "restricted_objects", ())
        slugs = {t.id: t.slug for t in tenants}
        named = sorted({slugs[getattr(obj, f.attname)] for obj in blocking for f in obj._meta.concrete_fields
                        if f.is_relation and f.related_model is model and getattr(obj, f.attname) in slugs})
        kinds = sorted({str(type(obj)._meta.verbose_name_plural) for obj in blocking})
        raise SeedError(f"cannot reset: demo tenant {', '.join(named) or '?'} is still referenced by "
                        f"{', '.join(kinds)}; delete those first") from exc
    return [t.slug for t in tenants]


# --- Seeding -----------------------------------------------------------------------------------
def _insert(cur, model, params: dict) -> int:
    exprs, source = _GENERATORS[model.__name__]()
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


def _fix_sequence(cur, table: str, column: str = "id") -> None:
    """Move the table's id sequence past its max id (never backwards)."""
    cur.execute(sql.SQL(
        "SELECT setval(s.seq, greatest(m.max_id, coalesce(pg_sequence_last_value(s.seq), 0))) "
        "FROM (SELECT pg_get_serial_sequence(%s, %s)::regclass AS seq) s, "
        "(SELECT max({col}) AS max_id FROM {table}) m WHERE s.seq IS NOT NULL AND m.max_id IS NOT NULL").format(
        col=sql.Identifier(column), table=sql.Identifier(table)),
        [sql.Identifier(table).as_string(cur.connection), column])


def _seed_tenant(cur, rank: int, tenant: TenantSeed, seed: int, next_id: dict, progress: Progress | None):
    models = _by_name()
    vocab = _vocabulary()

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
    tbl = {name: models[name]._meta.db_table for name in _GENERATORS}
    common = {"t": tenant.tenant_id, "domain": f"{tenant.slug.replace('_', '-')}.example",
              "s_rep": _salt(seed, rank, tbl["Repair"]), "s_dev": _salt(seed, rank, tbl["Device"]),
              "s_cus": _salt(seed, rank, tbl["Customer"]), "s_par": _salt(seed, rank, tbl["SparePart"]),
              "ebase": next_id[tbl["Employee"]], "E": masters["Employee"],
              "cbase": next_id[tbl["Customer"]], "C": masters["Customer"],
              "dbase": next_id[tbl["Device"]], "D": masters["Device"],
              "pbase": next_id[tbl["SparePart"]], "P": masters["SparePart"],
              "R": repairs, "span": SPAN_US, **_catalogs(seed)}
    for name in _MASTERS:
        run(name, {"n": masters[name]})
    for table in tbl.values():
        tenant.rows.setdefault(table, 0)

    done, todo = 0, repairs
    while True:
        while done < todo:
            lo, hi = done + 1, min(todo, done + CHUNK)
            chunk = {"lo": lo, "hi": hi, "rbase": next_id[tbl["Repair"]]}
            run("Repair", chunk)
            for name in _CHILDREN:
                run(name, chunk)
            done = hi
        missing = tenant.target_rows - tenant.total_rows
        if missing <= 0:
            break
        todo += max(1, math.ceil(missing / ROWS_PER_REPAIR))  # top up: rare, estimates are conservative


@dataclass
class _Secondary:
    """An index or constraint of a shop table that is dropped during a bulk load and rebuilt after."""
    table: sql.Composable
    name: sql.Composable
    definition: str  # from pg_get_indexdef / pg_get_constraintdef
    kind: str  # "index", "constraint" (unique) or "fk"

    def drop(self) -> sql.Composable:
        if self.kind == "index":
            return sql.SQL("DROP INDEX {}").format(self.name)
        return sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(self.table, self.name)

    def create(self) -> sql.Composable:
        if self.kind == "index":
            return sql.SQL(self.definition)  # a complete CREATE INDEX, quoted by PostgreSQL
        return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(self.table, self.name) + sql.SQL(self.definition)


def _secondaries(cur, tables: list[str], indexes: bool) -> list[_Secondary]:
    """What a load drops: the foreign keys of and to the shop tables (checking them once at the
    end costs far less than a trigger per row), then if `indexes` their indexes, primary keys and
    unique constraints (except those backing a foreign key from elsewhere). Re-create in reverse
    order."""
    regs = [sql.Identifier(t).as_string(cur.connection) for t in tables]
    cur.execute("""
        SELECT n.nspname, c.relname, con.conname, pg_get_constraintdef(con.oid), 'fk', 0
          FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE con.contype = 'f' AND (con.conrelid = ANY(%(t)s::text[]::regclass[])
                                      OR con.confrelid = ANY(%(t)s::text[]::regclass[]))
        UNION ALL
        SELECT n.nspname, c.relname, coalesce(con.conname, ic.relname),
               CASE WHEN con.oid IS NULL THEN pg_get_indexdef(i.indexrelid) ELSE pg_get_constraintdef(con.oid) END,
               CASE WHEN con.oid IS NULL THEN 'index' ELSE 'constraint' END,
               CASE WHEN con.contype = 'p' THEN 3 WHEN con.oid IS NOT NULL THEN 2 ELSE 1 END
          FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
               AND con.contype IN ('p', 'u', 'x')
         WHERE i.indrelid = ANY(%(t)s::text[]::regclass[])
           AND (con.oid IS NULL OR con.contype IN ('p', 'u'))
           AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = i.indexrelid
                           AND NOT f.conrelid = ANY(%(t)s::text[]::regclass[]))
         ORDER BY 6, 1, 2, 3""", {"t": regs})
    rows = [row for row in cur.fetchall() if indexes or row[4] == "fk"]
    # Drop order: foreign keys, indexes, unique constraints, primary keys (re-created reversed).
    return [_Secondary(table=sql.Identifier(schema, table),
                       name=sql.Identifier(schema, name) if kind == "index" else sql.Identifier(name),
                       definition=definition, kind=kind)
            for schema, table, name, definition, kind, _ in rows]


def _analyze() -> sql.Composable:
    """A quick ANALYZE of the shop tables so that the first queries after the seed plan well: run
    with a small statistics target (set by seed(), about 3,000 sampled rows a table instead of
    30,000) and without the JSON columns (statistics of jsonb sort every sampled value).

    Every table is named with an explicit column list on purpose: PostgreSQL then keeps the
    tables' change counters, so autovacuum still runs a full ANALYZE of them soon after."""
    targets = [sql.SQL("{} ({})").format(
        sql.Identifier(model._meta.db_table),
        sql.SQL(", ").join(sql.Identifier(f.column) for f in model._meta.concrete_fields
                           if not isinstance(f, JSONField)))
        for model in shop_models()]
    return sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(targets))


def _use_bulk_load(cur, tables: list[str], planned_rows: int, replaced_tenants: list[int]) -> bool:
    """Rebuilding indexes (instead of maintaining them row by row) pays while the rows that stay
    (those of tenants other than the ones replaced) are fewer than about twice the rows added."""
    regs = [sql.Identifier(t).as_string(cur.connection) for t in tables]
    cur.execute("SELECT coalesce(sum(greatest(reltuples, 0)), 0) FROM pg_class "
                "WHERE oid = ANY(%s::text[]::regclass[])", [regs])
    if cur.fetchone()[0] <= 2 * planned_rows:  # statistics, cheap: a fresh or demo-only database
        return True
    others = sql.SQL(" + ").join(
        sql.SQL("(SELECT count(*) FROM {} WHERE tenant_id <> ALL(%(ids)s))").format(sql.Identifier(t))
        for t in tables)
    cur.execute(sql.SQL("SELECT {}").format(others), {"ids": replaced_tenants})
    return cur.fetchone()[0] <= 2 * planned_rows


def seed(tenants: int = 20, largest: int = 200_000, seed: int = 42, *, reset: bool = False,
         progress: Progress | None = None, using: str = "default") -> SeedResult:
    """Create `tenants` demo tenants in shared placement with their shop rows, in one transaction.

    Refuses (SeedError) when demo tenants exist, unless `reset`, which first deletes them and
    their rows (only when all are still in shared placement). Returns per-tenant row counts.

    The shop tables are locked meanwhile (ACCESS EXCLUSIVE). Their foreign keys are dropped and
    re-added at the end, in the same transaction, and when the tables hold few other rows (a
    fresh or demo-only database) so are all their indexes and unique constraints: much faster
    than maintaining them row by row, and PostgreSQL still checks every foreign key and unique
    constraint when they are re-added.
    """
    from tenancy.models import Domain, Tenant

    connection = connections[using]
    planned = plan(tenants, largest)
    tables = shop_tables()
    tenant_table = Tenant._meta.db_table
    started = time.monotonic()
    phases = {}
    clock = [started]

    def lap(name):
        now = time.monotonic()
        phases[name] = phases.get(name, 0.0) + now - clock[0]
        clock[0] = now

    with transaction.atomic(using=using):
        connection.set_schema_to_public()
        with connection.cursor():  # makes django-tenants set the search_path
            pass
        pg = _pg(connection)
        with pg.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            cur.execute("SET LOCAL work_mem = '64MB'")
            cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
            cur.execute("SET LOCAL jit = off")

            existing = list(demo_tenants().select_for_update())
            if existing and not reset:
                names = ", ".join(t.slug for t in existing[:5]) + (" ..." if len(existing) > 5 else "")
                raise SeedError(f"{len(existing)} demo tenant(s) already exist ({names}); "
                                "run with --reset to delete them and seed again")
            _check_resettable(existing)
            existing_slugs = {t.slug for t in existing}
            clash = Tenant.objects.filter(
                Q(slug__in=[slug for slug, _, _ in planned])
                | Q(schema_name__in=[f"{settings.TENANT_SCHEMA_PREFIX}{slug}" for slug, _, _ in planned])) \
                .exclude(slug__in=existing_slugs).first()
            if clash is not None:
                raise SeedError(f"tenant {clash.slug} (schema name {clash.schema_name}) already exists and was "
                                "not made by seed_demo; delete or rename it first")
            taken = Domain.objects.filter(domain__in=[_domain(slug) for slug, _, _ in planned]) \
                .exclude(tenant__in=existing).select_related("tenant").first()
            if taken is not None:
                raise SeedError(f"domain {taken.domain} already belongs to tenant {taken.tenant.slug}, "
                                "which was not made by seed_demo; delete or change it first")

            # No one may take ids from the sequences while ids are assigned here, and foreign keys
            # (maybe indexes) are dropped until the end: the shop tables are locked meanwhile.
            try:
                cur.execute("SET LOCAL lock_timeout = '60s'")
                cur.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(tenant_table)))
                cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(t) for t in tables)))
                cur.execute("SET LOCAL lock_timeout = 0")
            except psycopg.errors.LockNotAvailable as exc:
                raise SeedError("the shop tables stayed in use by other sessions for 60 s; try again later") from exc
            lap("lock wait")
            bulk = _use_bulk_load(cur, tables, sum(target for _, _, target in planned), [t.id for t in existing])
            secondaries = _secondaries(cur, tables, indexes=bulk)
            for item in secondaries:
                cur.execute(item.drop())
            lap("prepare")
            reset_slugs = _reset(cur, existing) if existing else []
            lap("reset")

            cur.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(sql.Identifier(tenant_table)))
            next_tenant_id = cur.fetchone()[0] + 1
            next_id = {}
            for table in tables:
                cur.execute(sql.SQL("SELECT coalesce(max(id), 0) + 1 FROM {}").format(sql.Identifier(table)))
                next_id[table] = cur.fetchone()[0]

            results = []
            for rank, (slug, name, target) in enumerate(planned):
                tenant = Tenant(id=next_tenant_id + rank, slug=slug, name=name, placement="shared",
                                status="active", settings={DEMO_MARKER: {"seed": seed, "rank": rank}})
                tenant.save(force_insert=True)
                Domain.objects.create(domain=_domain(slug), tenant=tenant, is_primary=True)
                results.append(TenantSeed(slug=slug, name=name, tenant_id=tenant.id, target_rows=target))
            _fix_sequence(cur, tenant_table)
            lap("tenants")
            for rank, result in enumerate(results):
                _seed_tenant(cur, rank, result, seed, next_id, progress)
            lap("rows")
            if progress is not None:
                progress("", "rebuilding indexes and foreign keys" if bulk else "checking foreign keys", 0)
            for item in reversed(secondaries):  # indexes first, then the foreign keys
                cur.execute(item.create())
                lap("indexes" if item.kind != "fk" else "foreign keys")
            for table in tables:
                _fix_sequence(cur, table)
            if progress is not None:
                progress("", "analyzing", 0)
            cur.execute("SET LOCAL default_statistics_target = 10")
            cur.execute(_analyze())
            cur.execute("RESET default_statistics_target")
            lap("analyze")
    # Deferred foreign keys (if any) are checked at commit, which is part of the time.
    lap("commit")
    return SeedResult(seed=seed, tenants=results, seconds=time.monotonic() - started, reset_tenants=reset_slugs,
                      bulk_load=bulk, phases=phases)
