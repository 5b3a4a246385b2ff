"""manage.py seed_demo / benchmarks.seeding: sizes, consistency, variety, determinism, refusals.

The seeder commits (and drops / re-creates indexes), so these tests use transaction=True.
Sizes are small: a few thousand rows per run."""
import io
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Value
from django.db.models.functions import Concat
from psycopg import sql

from benchmarks import seeding
from migration_jobs.engine import templates
from shop.models import Customer, Device, Repair
from tenancy.models import Domain, Tenant, tenant_host
from tenancy.shared_db import shared_conninfo

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = {"tenants": 4, "largest": 5000}


def _query(query, params=None):
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall()


def _scalar(query, params=None):
    return _query(query, params)[0][0]


def _digests(tenant_ids=None):
    """md5 of every shop table's rows (as text, ordered by id), per table."""
    out = {}
    for table in seeding.shop_tables():
        where = sql.SQL("WHERE tenant_id = ANY(%s)") if tenant_ids is not None else sql.SQL("")
        query = sql.SQL("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM {} t {}").format(
            sql.Identifier(table), where)
        out[table] = _scalar(query.as_string(connection.connection),
                             [list(tenant_ids)] if tenant_ids is not None else None)
    return out


def _schema_objects():
    """Names of the indexes and constraints of the shop tables, with their definitions."""
    tables = seeding.shop_tables()
    return set(_query("""
        SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint
         WHERE conrelid::regclass::text = ANY(%s)
        UNION ALL
        SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid), indisvalid FROM pg_index
         WHERE indrelid::regclass::text = ANY(%s)""", [tables, tables]))


def test_sizes_follow_the_plan_and_match_the_database():
    result = seeding.seed(seed=7, **SMALL)

    assert [t.slug for t in result.tenants] == ["acme_repairs", "fixit_berlin", "phone_doctor", "pixel_clinic"]
    totals = [t.total_rows for t in result.tenants]
    assert totals[0] >= SMALL["largest"]
    assert totals == sorted(totals, reverse=True) and totals[0] > 3 * totals[-1]  # skewed: few large, many small
    for tenant, (_, _, target) in zip(result.tenants, seeding.plan(**SMALL)):
        assert tenant.target_rows == target and tenant.total_rows >= target
        counts = seeding.tenant_row_counts(connection, tenant.tenant_id)
        assert counts == tenant.rows
        assert set(counts) == set(seeding.shop_tables())
        assert all(n > 0 for n in counts.values()), counts
        # Repairs and their history are the bulk.
        assert counts["shop_repair"] + counts["shop_repairstatushistory"] > sum(counts.values()) / 2
    assert result.total_rows == sum(totals) == sum(
        _scalar(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)).as_string(connection.connection))
        for t in seeding.shop_tables())
    assert result.rows_per_second > 0 and result.seconds > 0

    tenants = list(Tenant.objects.order_by("id"))
    assert [t.slug for t in tenants] == [t.slug for t in result.tenants]
    assert all(t.placement == "shared" and t.status == "active" for t in tenants)
    # No tenant schema (the engine's template schema, which moves clone, is not one).
    assert not _scalar("SELECT count(*) FROM pg_namespace WHERE starts_with(nspname, %s) AND NOT starts_with(nspname, %s)",
                       [settings.TENANT_SCHEMA_PREFIX, templates.template_prefix(settings.TENANT_SCHEMA_PREFIX)])
    for tenant in tenants:
        domain = Domain.objects.get(tenant=tenant)
        assert domain.domain == tenant_host(tenant.slug) and domain.is_primary


def test_tenant_row_counts_takes_a_psycopg_connection_too():
    result = seeding.seed(tenants=2, largest=1000)
    with psycopg.connect(**shared_conninfo(connection.settings_dict["NAME"])) as conn:
        assert seeding.tenant_row_counts(conn, result.tenants[1].tenant_id) == result.tenants[1].rows
    assert set(seeding.tenant_row_counts(connection, 999999).values()) == {0}


def test_foreign_keys_stay_within_the_tenant_and_constraints_come_back():
    before = _schema_objects()
    result = seeding.seed(seed=3, **SMALL)
    assert result.bulk_load  # empty tables: indexes and foreign keys were dropped and re-created
    assert _schema_objects() == before
    assert all(valid for _, _, valid in before)

    # A repair's customer owns the repair's device.
    assert _scalar("""SELECT count(*) FROM shop_repair r JOIN shop_device d ON d.id = r.device_id
                       WHERE d.customer_id <> r.customer_id""") == 0
    # Every foreign key between shop tables points at a row of the same tenant.
    for model in seeding.shop_models():
        for field in model._meta.concrete_fields:
            if not field.is_relation or field.related_model not in seeding.shop_models():
                continue
            query = sql.SQL(
                "SELECT count(*) FROM {} c JOIN {} p ON p.id = c.{} WHERE p.tenant_id <> c.tenant_id").format(
                sql.Identifier(model._meta.db_table), sql.Identifier(field.related_model._meta.db_table),
                sql.Identifier(field.column))
            assert _scalar(query.as_string(connection.connection)) == 0, (model, field.name)
            nulls = sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(
                sql.Identifier(model._meta.db_table), sql.Identifier(field.column))
            assert _scalar(nulls.as_string(connection.connection)) > 0
    # The first signature of a repair is by its customer; parts cost what the catalogue says (or 10% off).
    assert _scalar("""SELECT count(*) FROM (SELECT DISTINCT ON (s.repair_id) s.signed_by, c.first_name, c.last_name
                        FROM shop_signature s JOIN shop_repair r ON r.id = s.repair_id
                        JOIN shop_customer c ON c.id = r.customer_id ORDER BY s.repair_id, s.id) x
                       WHERE signed_by <> first_name || ' ' || last_name""") == 0
    assert _scalar("""SELECT count(*) FROM shop_repairpart rp JOIN shop_sparepart p ON p.id = rp.part_id
                       WHERE rp.unit_price NOT IN (p.unit_price, round(p.unit_price * 0.9, 2))""") == 0
    # Histories follow the repair: first change at reception, last one to its current status.
    assert _scalar("""SELECT count(*) FROM shop_repair r WHERE NOT EXISTS (
                        SELECT 1 FROM shop_repairstatushistory h WHERE h.repair_id = r.id AND h.from_status IS NULL
                           AND h.to_status = 'received' AND h.changed_at = r.received_at)
                        OR r.status <> (SELECT to_status FROM shop_repairstatushistory h WHERE h.repair_id = r.id
                                        ORDER BY h.changed_at DESC, h.id DESC LIMIT 1)""") == 0
    # Estimates add up.
    assert _scalar("""SELECT count(*) FROM shop_costestimate e WHERE e.subtotal <> (
                        SELECT round(sum((i->>'qty')::numeric * (i->>'unit_price')::numeric), 2)
                          FROM jsonb_array_elements(e.line_items) i)
                        OR e.total <> round(e.subtotal * (1 + e.tax_rate), 2)""") == 0
    # Sequences are past the ids: the ORM can insert.
    tenant = Tenant.objects.get(slug="pixel_clinic")
    customer = Customer.unscoped.create(tenant=tenant, first_name="Neu", last_name="Kunde",
                                        created_at="2024-01-01T00:00:00Z")
    assert customer.id > _scalar("SELECT max(id) FROM shop_customer WHERE id <> %s", [customer.id])
    device = Device.unscoped.create(tenant=tenant, customer=customer, kind="phone", brand="X", model_name="Y",
                                    serial_number="NEW-1")
    repair = Repair.unscoped.create(tenant=tenant, customer=customer, device=device, ticket_number=1,
                                    problem="p", received_at="2024-01-01T00:00:00Z")
    assert repair.id > 1
    assert Tenant.objects.create(slug="later_tenant", name="Later").id > max(t.tenant_id for t in result.tenants)


def test_values_exercise_every_column_type():
    seeding.seed(seed=5, **SMALL)
    # NULLs in every nullable column, and non-NULL values too.
    for model in seeding.shop_models():
        for field in model._meta.concrete_fields:
            if field.null:
                query = sql.SQL("SELECT count(*) FILTER (WHERE {c} IS NULL), count({c}) FROM {t}").format(
                    c=sql.Identifier(field.column), t=sql.Identifier(model._meta.db_table))
                nulls, values = _query(query.as_string(connection.connection))[0]
                assert nulls > 0 and values > 0, (model, field.name)
    texts = "SELECT string_agg(notes, '') FROM shop_customer UNION ALL SELECT string_agg(problem, '') FROM shop_repair"
    blob = "".join(t for (t,) in _query(texts))
    for needle in ("\n", "\t", "\\", '"', "'", "ë", "ä", "日", "😅", "\r\n"):
        assert needle in blob, needle
    assert _scalar("SELECT count(*) FROM shop_customer WHERE notes = ''") > 0  # empty, not NULL
    assert _scalar("SELECT count(*) FROM shop_customer WHERE cardinality(tags) = 0") > 0
    assert _scalar("SELECT count(*) FROM shop_customer WHERE cardinality(tags) > 1") > 0
    assert _scalar("SELECT count(*) FROM shop_sparepart WHERE cardinality(compatible_models) = 0") > 0
    assert _scalar("SELECT count(*) FROM shop_employee WHERE cardinality(skills) > 1") > 0
    # jsonb: nested line items with unicode, empty and nested metadata, JSON nulls.
    assert _scalar("""SELECT count(*) FROM shop_costestimate
                       WHERE jsonb_array_length(line_items) > 1 AND line_items::text LIKE '%%—%%'
                         AND jsonb_typeof(line_items->1->'meta'->'supplier') IN ('object', 'null')""") > 0
    assert _scalar("SELECT count(*) FROM shop_repair WHERE metadata = '{}'::jsonb") > 0
    assert _scalar("SELECT count(*) FROM shop_repair "
                   "WHERE jsonb_typeof(metadata->'intake'->'checklist') = 'object'") > 0
    # bytea of varied sizes, some stored out of line, with their sha256.
    small, large = _query("SELECT min(length(image)), max(length(image)) FROM shop_signature")[0]
    assert small < 1000 and large > 4000
    assert _scalar("SELECT count(*) FROM shop_signature WHERE sha256 <> encode(sha256(image), 'hex')") == 0
    assert _scalar("SELECT count(DISTINCT sha256) = count(*) FROM shop_signature")
    # numeric with decimals, bigint beyond int4, uuid, timestamps with microseconds, dates.
    assert _scalar("SELECT count(*) FROM shop_costestimate WHERE total <> trunc(total)") > 0
    assert _scalar("SELECT count(DISTINCT public_id) = count(*) FROM shop_customer")
    assert _scalar("SELECT count(*) FROM shop_repair "
                   "WHERE extract(microseconds FROM received_at)::int % 1000000 <> 0") > 0
    assert _scalar("SELECT count(*) FROM shop_repair WHERE due_on IS NOT NULL") > 0


def test_same_seed_same_bytes_other_seed_other_bytes():
    first = seeding.seed(seed=11, **SMALL)
    digests = _digests()
    again = seeding.seed(seed=11, reset=True, **SMALL)
    assert again.reset_tenants == sorted(t.slug for t in first.tenants)
    def summary(result):
        return [(t.slug, t.tenant_id, t.rows) for t in result.tenants]

    assert summary(again) == summary(first)
    assert _digests() == digests

    other = seeding.seed(seed=12, reset=True, **SMALL)
    changed = _digests()
    assert all(changed[table] != digests[table] for table in digests), changed
    assert [t.slug for t in other.tenants] == [t.slug for t in first.tenants]


def test_reset_keeps_other_tenants_rows_with_or_without_index_rebuild(make_tenant):
    outsider = make_tenant("outsider")
    Customer.unscoped.create(tenant=outsider, first_name="Stay", last_name="Here", created_at="2024-01-01T00:00:00Z")
    seeding.seed(tenants=3, largest=4000, seed=1)
    # Few other rows: indexes are rebuilt, but the tables are not truncated under the outsider.
    big = seeding.seed(tenants=3, largest=4000, seed=1, reset=True)
    assert big.bulk_load and big.reset_tenants == ["acme_repairs", "fixit_berlin", "phone_doctor"]
    assert Customer.unscoped.filter(tenant=outsider).count() == 1
    assert sum(t.total_rows for t in big.tenants) + 1 == sum(
        _scalar(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)).as_string(connection.connection))
        for t in seeding.shop_tables())

    # Make them ordinary tenants: now the tables hold many more rows than a small seed adds, so
    # indexes are maintained row by row, and a reset DELETEs.
    Tenant.objects.filter(settings__has_key=seeding.DEMO_MARKER).update(
        settings={}, slug=Concat(Value("old_"), "slug"),
        schema_name=Concat(Value(settings.TENANT_SCHEMA_PREFIX + "old_"), "slug"))
    with pytest.raises(seeding.SeedError, match=r"domain acme-repairs\.\S+ already belongs to tenant old_acme_repairs"):
        seeding.seed(tenants=2, largest=400, seed=1)
    Domain.objects.filter(tenant__slug__startswith="old_").update(domain=Concat(Value("old-"), "domain"))
    others = [t.tenant_id for t in big.tenants] + [outsider.id]
    before = _digests(others)
    before_objects = _schema_objects()
    first = seeding.seed(tenants=2, largest=400, seed=1)
    small = seeding.seed(tenants=2, largest=400, seed=1, reset=True)
    assert not first.bulk_load and not small.bulk_load
    assert small.reset_tenants == ["acme_repairs", "fixit_berlin"]
    assert _digests(others) == before
    assert _schema_objects() == before_objects
    assert Tenant.objects.count() == 6
    for tenant in small.tenants:
        assert seeding.tenant_row_counts(connection, tenant.tenant_id) == tenant.rows
    assert _scalar("""SELECT count(*) FROM shop_repair r JOIN shop_device d ON d.id = r.device_id
                       WHERE d.customer_id <> r.customer_id OR d.tenant_id <> r.tenant_id""") == 0


def test_refuses_to_seed_twice_without_reset():
    call_command("seed_demo", "--tenants", "2", "--largest", "800", "--quiet")
    digests = _digests()
    with pytest.raises(CommandError, match=r"demo tenant\(s\) already exist .*--reset") as refused:
        call_command("seed_demo", "--tenants", "2", "--largest", "800")
    assert refused.value.returncode == 1
    assert _digests() == digests


def test_refuses_when_a_slug_is_taken_by_another_tenant(make_tenant):
    make_tenant("fixit_berlin")
    with pytest.raises(seeding.SeedError,
                       match=r"tenant fixit_berlin \(schema name \w+\) already exists and was not made by seed_demo"):
        seeding.seed(tenants=3, largest=500)
    assert list(Tenant.objects.values_list("slug", flat=True)) == ["fixit_berlin"]
    assert _scalar("SELECT count(*) FROM shop_repair") == 0


@pytest.mark.parametrize("change", [{"placement": "schema"}, {"status": "migrating"}])
def test_reset_refuses_when_a_demo_tenant_left_or_is_leaving_the_shared_database(change):
    seeding.seed(tenants=3, largest=600)
    Tenant.objects.filter(slug="fixit_berlin").update(**change)
    digests = _digests()
    with pytest.raises(CommandError, match="fixit_berlin"):
        call_command("seed_demo", "--tenants", "3", "--largest", "600", "--reset")
    assert _digests() == digests
    assert Tenant.objects.count() == 3


def test_command_output_and_progress():
    out, err = io.StringIO(), io.StringIO()
    call_command("seed_demo", "--tenants", "3", "--largest", "2000", "--seed", "9", "-v", "2", stdout=out, stderr=err)
    text = out.getvalue()
    assert "Seeded 3 tenants" in text and "rows/s" in text and "(seed 9)" in text
    assert "acme_repairs" in text and "phone_doctor" in text
    total = sum(sum(seeding.tenant_row_counts(connection, t.id).values()) for t in Tenant.objects.all())
    assert f"{total:,} rows" in text

    out = io.StringIO()
    call_command("seed_demo", "--tenants", "2", "--largest", "500", "--reset", "--quiet", stdout=out, stderr=out)
    assert out.getvalue() == ""
    assert Tenant.objects.count() == 2

    calls = []
    result = seeding.seed(tenants=2, largest=500, reset=True, progress=lambda *a: calls.append(a))
    assert sum(rows for _, _, rows in calls) == result.total_rows
    assert {(slug, table) for slug, table, rows in calls if rows} == {
        (t.slug, table) for t in result.tenants for table, n in t.rows.items() if n}

    with pytest.raises(CommandError, match="--tenants must be at least 1"):
        call_command("seed_demo", "--tenants", "0")


@pytest.mark.skipif(not getattr(settings, "USING_EMBEDDED_PG", False), reason="needs the embedded cluster")
def test_exit_codes_of_the_real_command():
    """manage.py in a subprocess, against this test database: 0 when seeded, 1 and a message when refused."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings",
           "APP_DATABASE_NAME": connection.settings_dict["NAME"], "TENANT_ROUTE_LISTENER": "false"}
    manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "seed_demo", "--tenants", "2",
              "--largest", "500"]
    done = subprocess.run(manage, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Seeded 2 tenants" in done.stdout
    refused = subprocess.run(manage, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    assert "already exist" in refused.stderr and "--reset" in refused.stderr
