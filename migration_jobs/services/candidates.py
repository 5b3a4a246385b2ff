"""Which tenants should move (the fleet's candidates): shared tenants over
TENANT_DEDICATED_THRESHOLD_ROWS rows, and tenants whose dedicated reason (their own
infrastructure, compliance) asks for a dedicated database they do not have yet.

Rows and sizes come from PostgreSQL's statistics unless `exact` (engine/sizes.py); each
look records a TenantSizeSample per tenant (at most one an hour), and "growth" compares
with the newest sample at least an hour old, so looking twice in a row does not reset it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from migration_jobs.engine import sizes
from migration_jobs.engine.places import place_of, shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.models import TenantSizeSample
from tenancy.models import DedicatedReason, Placement, Tenant

SAMPLE_EVERY = timedelta(hours=1)
# A dedicated database being read for its size answers within this or is "unreachable".
PLACE_TIMEOUT = 3
SAMPLE_LOCK = 74_212  # advisory lock: two looks at once record one sample per tenant
# Printed under a list with estimates (the command, the admin page).
FOOTNOTE = ("≈ estimated from PostgreSQL's statistics (pg_class, pg_stats of tenant_id; as fresh as the last "
            "ANALYZE, scaled to the tables' current size); exact counts (--exact) read every row.")


@dataclass
class Candidate:
    tenant: Tenant
    placement: str                      # "shared", "schema tenant_x", "database tenant_x on default"
    rows: int | None                    # None: could not be read (see `problem`)
    size_bytes: int | None
    estimated: bool                     # rows and size come from PostgreSQL's statistics
    reason: str = ""                    # why it should move; "" when it need not
    growth_rows: int | None = None      # since the sample at `growth_since`
    growth_percent: float | None = None
    growth_since: datetime | None = None
    problem: str = ""                   # e.g. "unreachable" (never a message that may hold a secret)
    tables: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def should_move(self) -> bool:
        return bool(self.reason)

    def as_dict(self) -> dict:
        return {"tenant_id": self.tenant.pk, "tenant": self.tenant.slug, "name": self.tenant.name,
                "placement": self.tenant.placement, "where": self.placement, "rows": self.rows,
                "size_bytes": self.size_bytes, "estimated": self.estimated,
                "growth_rows": self.growth_rows, "growth_percent": self.growth_percent,
                "growth_since": self.growth_since.isoformat() if self.growth_since else None,
                "reason": self.reason, "should_move": self.should_move, "problem": self.problem or None}


def threshold_rows() -> int:
    return int(settings.TENANT_DEDICATED_THRESHOLD_ROWS)


def reasons(tenant: Tenant, rows: int | None, threshold: int) -> str:
    """Why the tenant should move, "; "-joined; "" when it need not."""
    found = []
    if tenant.placement == Placement.SHARED and rows is not None and rows > threshold:
        found.append(f"over {threshold:,} rows")
    if tenant.dedicated_reason and tenant.placement != Placement.DATABASE:
        label = ("needs dedicated infrastructure" if tenant.dedicated_reason == DedicatedReason.INFRASTRUCTURE
                 else "compliance")
        note = " ".join(tenant.dedicated_note.split())
        found.append(f"{label}: {note}" if note else label)
    return "; ".join(found)


def where(tenant: Tenant) -> str:
    if tenant.placement == Placement.SCHEMA:
        return f"schema {tenant.schema_name}"
    if tenant.placement == Placement.DATABASE:
        credential = getattr(tenant, "credential", None)
        return f"database {credential.database} on {credential.server.name}" if credential else "database"
    return "shared"


def _figures(tenants: list[Tenant], exact: bool) -> dict[int, sizes.Figures | str]:
    """{tenant id: Figures, or a one-word problem} for every tenant, each where it lives."""
    names = [t.name for t in tenant_tables()]
    shared = [t.pk for t in tenants if t.placement == Placement.SHARED]
    out: dict[int, sizes.Figures | str] = {}
    with shared_place().connect(autocommit=True, application_name="tenant-candidates") as conn:
        if shared:
            out.update(sizes.shared_figures(conn, "public", names, shared, exact=exact,
                                            known_ids=Tenant.objects.values_list("pk", flat=True)))
        for tenant in tenants:
            if tenant.placement == Placement.SCHEMA:
                out[tenant.pk] = sizes.place_figures(conn, place_of(tenant), names, tenant.pk, exact=exact)
    for tenant in tenants:
        if tenant.placement != Placement.DATABASE:
            continue
        try:
            place = place_of(tenant)
            with psycopg.connect(**{**place.conninfo, "connect_timeout": PLACE_TIMEOUT}, autocommit=True,
                                 application_name="tenant-candidates") as conn:
                out[tenant.pk] = sizes.place_figures(conn, place, names, tenant.pk, exact=exact)
        except Tenant.credential.RelatedObjectDoesNotExist:
            out[tenant.pk] = "no credential"
        except psycopg.Error:
            out[tenant.pk] = "unreachable"  # the class of error only: its text may quote the conninfo
    return out


def _record(figures: dict[int, sizes.Figures], now: datetime) -> dict[int, TenantSizeSample]:
    """Record a sample for each tenant without one in the last hour; return the baseline of
    each (its newest sample at least an hour old)."""
    cutoff = now - SAMPLE_EVERY
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SAMPLE_LOCK])
        recent = set(TenantSizeSample.objects.filter(tenant_id__in=figures, taken_at__gt=cutoff)
                     .values_list("tenant_id", flat=True))
        TenantSizeSample.objects.bulk_create(
            TenantSizeSample(tenant_id=tid, taken_at=now, rows=fig.rows, size_bytes=fig.size_bytes,
                             estimated=fig.estimated)
            for tid, fig in figures.items() if tid not in recent)
    baselines = (TenantSizeSample.objects.filter(tenant_id__in=figures, taken_at__lte=cutoff)
                 .order_by("tenant_id", "-taken_at").distinct("tenant_id"))
    return {s.tenant_id: s for s in baselines}


def candidates(exact: bool = False, *, include_all: bool = False, record: bool = True) -> list[Candidate]:
    """The tenants that should move, biggest first (with `include_all`, every tenant, those
    that should move first). `exact`: count rows instead of reading statistics. `record`:
    keep this look as the tenants' size samples (at most one per tenant an hour)."""
    threshold = threshold_rows()
    tenants = Tenant.objects.select_related("credential__server").order_by("slug")
    if not include_all:
        # Dedicated tenants are candidates only by their reason (a schema tenant that needs a
        # database); their rows are not read.
        tenants = tenants.exclude(placement=Placement.DATABASE).exclude(
            placement=Placement.SCHEMA, dedicated_reason="")
    tenants = list(tenants)
    figures = _figures(tenants, exact)
    measured = {tid: fig for tid, fig in figures.items() if isinstance(fig, sizes.Figures)}
    baselines = _record(measured, timezone.now()) if record and measured else {}
    found = []
    for tenant in tenants:
        fig = figures.get(tenant.pk)
        if not isinstance(fig, sizes.Figures):
            found.append(Candidate(tenant, where(tenant), None, None, False, reasons(tenant, None, threshold),
                                   problem=fig or "not measured"))
            continue
        item = Candidate(tenant, where(tenant), fig.rows, fig.size_bytes, fig.estimated,
                         reasons(tenant, fig.rows, threshold), tables=fig.tables)
        base = baselines.get(tenant.pk)
        if base is not None:
            item.growth_rows = fig.rows - base.rows
            item.growth_percent = round(100.0 * item.growth_rows / base.rows, 1) if base.rows else None
            item.growth_since = base.taken_at
        found.append(item)
    if not include_all:
        found = [c for c in found if c.should_move]
    found.sort(key=lambda c: (not c.should_move, -(c.rows if c.rows is not None else -1), c.tenant.slug))
    return found


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def human_growth(c: Candidate) -> str:
    if c.growth_rows is None:
        return "-"
    percent = f" ({c.growth_percent:+.1f}%)" if c.growth_percent is not None else ""
    return f"{c.growth_rows:+,}{percent}"
