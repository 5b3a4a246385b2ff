"""The tenants the seeder makes: their names and planned sizes (Zipf-like: a few large, many
small), the marker that says a tenant is demo data, and the reset that deletes them again."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import ProtectedError, RestrictedError
from psycopg import sql

from tenancy.models import Tenant

from .tables import shop_tables

# Tenant.settings key that marks a tenant as made by the seeder.
DEMO_MARKER = "seed_demo"
SKEW = 1.2  # Zipf exponent of tenant sizes: target(rank k) = largest / k**SKEW
MIN_TENANT_ROWS = 300


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


# --- Existing demo tenants ---------------------------------------------------------------------
def demo_tenants():
    """Tenants made by seed(), by slug."""
    return Tenant.objects.filter(settings__has_key=DEMO_MARKER).order_by("slug")


def check_resettable(tenants) -> None:
    for tenant in tenants:
        if tenant.placement != "shared":
            raise SeedError(f"cannot reset: demo tenant {tenant.slug} is in {tenant.placement} placement, "
                            "no longer in the shared database; move it back or delete it first")
        if tenant.status == "migrating":
            raise SeedError(f"cannot reset: demo tenant {tenant.slug} is being moved (status migrating)")


def reset(cur, tenants) -> list[str]:
    """Delete the demo tenants' shop rows and the tenants (after check_resettable and under an
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

