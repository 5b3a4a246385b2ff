"""What generated rows are made of: word lists (passed to SQL as text[] parameters) and, per
seed, JSON catalogs that rows pick from by hash.

Everything here is deterministic: the same seed gives the same catalogs on every Python
version (choices come from blake2b, not from `random`).
"""
from __future__ import annotations

import functools
import hashlib
import json
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal

T0 = datetime(2021, 1, 1, tzinfo=timezone.utc)
SPAN_US = 5 * 365 * 86400 * 1_000_000  # repairs are spread over five years after T0

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
def vocabulary() -> dict:
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
def catalogs(seed: int) -> dict:
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
