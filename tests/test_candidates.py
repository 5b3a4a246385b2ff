"""Candidates (issue 12, 1): which tenants should move, their rows and sizes from PostgreSQL's
statistics (checked against exact counts on seeded data), the reasons, growth between two
looks, `manage.py tenant_candidates` and the admin page. Real PostgreSQL throughout; the
tests commit (statistics and counts are read over connections of their own)."""
import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from psycopg import sql

from benchmarks.seeding import shop_tables, tenant_row_counts
from django.db import connection
from migration_jobs.admin import candidates as candidates_admin
from migration_jobs.engine.places import shared_place
from migration_jobs.models import TenantSizeSample
from migration_jobs.services.candidates import candidates
from shop.models import Customer
from tenancy.context import tenant_context
from tenancy.models import Tenant
from tests.helpers import fill, run_cmd, staff_user

pytestmark = pytest.mark.django_db(transaction=True)

# After ANALYZE, statistics of these small tables cover every row: estimates are this close.
ROWS_TOLERANCE = 0.02
SIZE_TOLERANCE = 0.05
PAGE = reverse("admin:tenancy_tenant_candidates")


def analyze():
    with shared_place().connect(autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in shop_tables())))


def by_slug(items):
    return {c.tenant.slug: c for c in items}


def test_estimates_are_close_to_exact_counts_after_analyze(seeded):
    analyze()
    estimated = by_slug(candidates(include_all=True, record=False))
    exact = by_slug(candidates(exact=True, include_all=True, record=False))

    shared = Tenant.objects.filter(placement="shared")
    assert set(estimated) == set(exact) == {t.slug for t in shared} and len(exact) == 3
    for tenant in shared:
        counted = sum(tenant_row_counts(connection, tenant.pk).values())  # engine.tables.row_counts
        est, ex = estimated[tenant.slug], exact[tenant.slug]
        assert ex.rows == counted and not ex.estimated
        assert est.estimated
        assert abs(est.rows - counted) <= ROWS_TOLERANCE * counted, (tenant.slug, est.rows, counted)
        assert abs(est.size_bytes - ex.size_bytes) <= SIZE_TOLERANCE * ex.size_bytes
        assert ex.size_bytes > 0
    # Biggest first.
    assert [c.rows for c in exact.values()] == sorted((c.rows for c in exact.values()), reverse=True)


def test_reasons_and_the_threshold_setting(seeded, make_tenant, place_tenant, settings):
    small = make_tenant("small_plain")
    fill(small, 2)
    rules = make_tenant("rules")
    rules.dedicated_reason, rules.dedicated_note = "compliance", "BaFin:\n data stays in its own database"
    rules.save()
    infra = place_tenant(make_tenant("infra"), "schema")
    infra.dedicated_reason = "infrastructure"
    infra.save()
    placed = place_tenant(make_tenant("placed"), "database")
    placed.dedicated_reason = "compliance"
    placed.save()
    largest = seeded

    settings.TENANT_DEDICATED_THRESHOLD_ROWS = 100_000
    found = by_slug(candidates(exact=True))
    assert set(found) == {"rules", "infra"}  # nothing over 100,000 rows; the database tenant is there already
    assert found["rules"].reason == "compliance: BaFin: data stays in its own database"
    assert found["infra"].reason == "needs dedicated infrastructure"
    assert found["infra"].placement == f"schema {infra.schema_name}" and found["infra"].rows == 0

    settings.TENANT_DEDICATED_THRESHOLD_ROWS = 1000
    found = by_slug(candidates(exact=True))
    big = {t.slug for t in Tenant.objects.filter(placement="shared")
           if sum(tenant_row_counts(connection, t.pk).values()) > 1000}
    assert largest.slug in big and "small_plain" not in big
    assert set(found) == big | {"rules", "infra"}
    assert found[largest.slug].reason == "over 1,000 rows"

    everyone = by_slug(candidates(exact=True, include_all=True))
    assert set(everyone) == set(Tenant.objects.values_list("slug", flat=True))
    assert everyone["small_plain"].reason == "" and not everyone["small_plain"].should_move
    assert everyone["placed"].reason == "" and everyone["placed"].placement.startswith("database ")
    assert everyone["placed"].rows == 0 and everyone["placed"].problem == ""
    order = list(everyone.values())
    assert [c.should_move for c in order] == sorted((c.should_move for c in order), reverse=True)


def test_growth_between_two_looks(make_tenant):
    tenant = make_tenant("growing")
    fill(tenant, 2)
    [first] = candidates(exact=True, include_all=True)
    assert (first.rows, first.growth_rows) == (12, None)
    assert TenantSizeSample.objects.filter(tenant=tenant).count() == 1

    candidates(exact=True, include_all=True)  # within the hour: no second sample
    assert TenantSizeSample.objects.filter(tenant=tenant).count() == 1

    earlier = TenantSizeSample.objects.get(tenant=tenant)
    earlier.taken_at -= timedelta(hours=2)
    earlier.save()
    with tenant_context(tenant):
        for i in range(3):
            Customer.objects.create(first_name="New", last_name=f"Customer{i}", email=f"new{i}@x.test", tags=[],
                                    created_at=timezone.now())
    [now] = candidates(exact=True, include_all=True)
    assert (now.rows, now.growth_rows, now.growth_percent) == (15, 3, 25.0)
    assert now.growth_since == earlier.taken_at
    assert TenantSizeSample.objects.filter(tenant=tenant).count() == 2

    [again] = candidates(exact=True, include_all=True)  # the same baseline: the look before the last hour
    assert (again.growth_rows, again.growth_since) == (3, earlier.taken_at)
    assert TenantSizeSample.objects.filter(tenant=tenant).count() == 2


def test_command_table_and_json(seeded, settings):
    analyze()
    settings.TENANT_DEDICATED_THRESHOLD_ROWS = 1000

    code, out, err = run_cmd("tenant_candidates")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["tenant", "placement", "rows", "size", "growth", "reason"]
    row = next(line for line in lines if line.startswith(seeded.slug))
    assert "shared" in row and "≈" in row and "over 1,000 rows" in row
    assert any(line.startswith("≈ estimated from PostgreSQL's statistics") for line in lines)

    code, out, err = run_cmd("tenant_candidates", "--json", "--exact", "--all")
    assert code == 0, err
    data = json.loads(out.splitlines()[-1])
    assert data["threshold_rows"] == 1000 and data["exact"] is True
    item = next(t for t in data["tenants"] if t["tenant"] == seeded.slug)
    assert item["rows"] == sum(tenant_row_counts(connection, seeded.pk).values())
    assert item["estimated"] is False and item["should_move"] is True and item["reason"] == "over 1,000 rows"
    assert {"tenant_id", "placement", "size_bytes", "growth_rows", "growth_percent", "growth_since"} <= set(item)
    assert len(data["tenants"]) == Tenant.objects.count()


def test_admin_page_needs_view_permission_and_plans_need_move(client, seeded, settings, monkeypatch):
    settings.TENANT_DEDICATED_THRESHOLD_ROWS = 1000
    nobody = staff_user("nobody")
    client.force_login(nobody)
    assert client.get(PAGE).status_code == 403

    client.force_login(staff_user("viewer", ["tenancy.view_tenant"]))
    page = client.get(PAGE)
    html = page.content.decode()
    assert page.status_code == 200
    assert seeded.slug in html and "over 1,000 rows" in html and "≈" in html
    assert "Plan moves for selected" not in html and 'name="tenant"' not in html
    # The tenant list links here.
    assert f'href="{PAGE}"' in client.get(reverse("admin:tenancy_tenant_changelist")).content.decode()

    mover = staff_user("mover", ["tenancy.view_tenant", "tenancy.move_tenant"])
    client.force_login(mover)
    with_plans = candidates_admin.plan_url() is not None
    assert ("Plan moves for selected" in client.get(PAGE).content.decode()) == with_plans
    # With a plan page (fleet's move plan form, here stood in by the tenant add form), the
    # ticked tenants go there as ?tenants=<ids>.
    monkeypatch.setattr(candidates_admin, "PLAN_URL_NAME", "admin:tenancy_tenant_add")
    html = client.get(PAGE + "?all=1").content.decode()
    assert "Plan moves for selected" in html and f'name="tenant" value="{seeded.pk}"' in html
    others = list(Tenant.objects.exclude(pk=seeded.pk).order_by("pk").values_list("pk", flat=True))
    go = client.get(PAGE, {"plan": "1", "tenant": [seeded.pk, others[0], "x1"]})
    assert go.status_code == 302
    assert go["Location"] == f"{reverse('admin:tenancy_tenant_add')}?tenants={seeded.pk},{others[0]}"
    client.force_login(staff_user("viewer2", ["tenancy.view_tenant"]))
    assert client.get(PAGE, {"plan": "1", "tenant": [seeded.pk]}).status_code == 403


def test_tenant_form_edits_the_dedicated_reason(staff, make_tenant):
    tenant = make_tenant("needs_own")
    url = reverse("admin:tenancy_tenant_change", args=[tenant.pk])
    page = staff.get(url).content.decode()
    assert 'name="dedicated_reason"' in page and 'name="dedicated_note"' in page
    done = staff.post(url, {"name": tenant.name, "status": "active", "settings": "{}",
                            "dedicated_reason": "infrastructure", "dedicated_note": "own SSDs",
                            "domains-TOTAL_FORMS": "0", "domains-INITIAL_FORMS": "0"})
    assert done.status_code == 302, done.content.decode()[:2000]
    tenant.refresh_from_db()
    assert (tenant.dedicated_reason, tenant.dedicated_note) == ("infrastructure", "own SSDs")
    [found] = [c for c in candidates(exact=True) if c.tenant.pk == tenant.pk]
    assert found.reason == "needs dedicated infrastructure: own SSDs"
