"""The copy engine against real PostgreSQL: a tenant whose rows cover every column type and
edge value is copied into a dedicated schema and a dedicated database, and every row of
every table is compared with the source; verify, deferral, sequences, resume and failure
handling are checked on the same real places."""
import datetime as dt
import hashlib
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from django.db import connection
from psycopg import sql

from migration_jobs.engine import provision
from migration_jobs.engine.copy import CopyCancelled, TableCopy, copy_table, copy_tenant
from migration_jobs.engine.deferral import drop_secondary, restore_secondary, secondary_objects, table_objects
from migration_jobs.engine.places import database_place, schema_place, shared_place
from migration_jobs.engine.sequences import sequence_positions, set_sequences
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.engine.verify import fingerprint, foreign_rows, verify_tenant
from shop.models import (CostEstimate, Customer, Device, Employee, Repair, RepairPart, RepairStatusHistory,
                         SparePart, Signature)
from tests.helpers import drop_places

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt.timezone.utc
NASTY = "Zoë 'single' \"double\" back\\slash \\N\nnew line\ttab\r ☃ 𝄞 %s {} -- ;"


def _populate(tenant, n, *, edge, tag="a"):
    """About 12 * n rows of `tenant` in every table; `edge` adds the extreme values."""
    t = tenant
    ts = dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
    employees = Employee.unscoped.bulk_create(
        [Employee(tenant=t, full_name=f"emp {i} {NASTY}" if i % 3 == 0 else f"emp {i}",
                  email=f"e{i}{tag}@{t.slug}.test",
                  role="clerk" if i % 2 else "owner", hired_on=dt.date(2000, 1, 1) + dt.timedelta(days=i),
                  is_active=bool(i % 2), hourly_rate=Decimal(f"{i}.{i % 100:02d}"),
                  skills=[] if i % 2 else ["a,b", 'with "quote"', "NULL", "", "{brace}", "ünï"])
         for i in range(n)]
        + ([Employee(tenant=t, full_name="", email="max@x.test", hired_on=dt.date(9999, 12, 31),
                     hourly_rate=Decimal("999999.99"), skills=["x" * 40, None]),
            Employee(tenant=t, full_name="\\", email="min@x.test", hired_on=dt.date(1, 1, 1),
                     hourly_rate=Decimal("-999999.99"))] if edge else []))
    customers = Customer.unscoped.bulk_create(
        [Customer(tenant=t, first_name=f"first {i}", last_name=NASTY if i % 4 == 0 else f"last {i}",
                  email=None if i % 5 == 0 else f"c{i}{tag}@{t.slug}.test", phone="" if i % 2 else "+33 1 23 45 67 89",
                  notes=None if i % 3 == 0 else ("" if i % 3 == 1 else NASTY * 3), loyalty_points=i * 7 - 50,
                  tags=[] if i % 2 else ["vip", "ünïcode", "comma,inside", ""],
                  created_at=ts - dt.timedelta(days=i, microseconds=i))
         for i in range(n)]
        + ([Customer(tenant=t, first_name="max", last_name="max", loyalty_points=2147483647,
                     created_at=dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
            Customer(tenant=t, first_name="min", last_name="min", loyalty_points=-2147483648,
                     created_at=dt.datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC))] if edge else []))
    devices = Device.unscoped.bulk_create(
        [Device(tenant=t, customer=customers[i % len(customers)], kind="phone", brand="Brand\t\"B\"",
                model_name=f"model {i}", serial_number=f"SN-{tag}{i}", imei=None if i % 2 else f"{i:015d}",
                purchased_on=None if i % 3 == 0 else dt.date(2020, 1, 1) + dt.timedelta(days=i))
         for i in range(n + n // 2)])
    parts = SparePart.unscoped.bulk_create(
        [SparePart(tenant=t, sku=f"SKU-{tag}{i}", name=f"part {i} ‘curly’",
                   unit_price=Decimal(f"{i * 3}.{i % 100:02d}"),
                   stock=i - 5, reorder_level=i % 7, compatible_models=[] if i % 2 else [f"model {i}", "all"],
                   is_discontinued=i % 5 == 0)
         for i in range(max(4, n // 3))]
        + ([SparePart(tenant=t, sku="MAX", name="max", unit_price=Decimal("99999999.99"), stock=2147483647,
                      reorder_level=32767),
            SparePart(tenant=t, sku="MIN", name="min", unit_price=Decimal("-99999999.99"), stock=-2147483648,
                      reorder_level=-32768)] if edge else []))
    metadata = [{}, {"k": "v"}, {"nested": {"list": [1, 2.5, None, True, False, "ü\n\"x\"\\"],
                                            "deep": {"a": {"b": []}}},
                                 "empty": "", "uni": "日本語 🎉", "float": 0.1}]
    repairs = Repair.unscoped.bulk_create(
        [Repair(tenant=t, device=devices[i % len(devices)], customer=customers[i % len(customers)],
                assigned_to=None if i % 4 == 0 else employees[i % len(employees)],
                ticket_number=1000 + i if tag == "a" else 100000 + i,
                status="ready" if i % 2 else "received", problem=NASTY if i % 2 else f"problem {i}",
                priority=i % 3, received_at=ts + dt.timedelta(hours=i, microseconds=7 * i),
                due_on=None if i % 2 else dt.date(2025, 1, 1), completed_at=None if i % 3 else ts,
                labour_minutes=i * 15, metadata=metadata[i % 3])
         for i in range(2 * n)]
        + ([Repair(tenant=t, device=devices[0], customer=customers[0], ticket_number=9223372036854775807,
                   problem="max", received_at=ts, labour_minutes=-9223372036854775808, priority=32767,
                   metadata=[None, [], {}, "", 0, -1.5e-300, 1e300]),
            Repair(tenant=t, device=devices[0], customer=customers[0], ticket_number=-9223372036854775808,
                   problem="min", received_at=ts, labour_minutes=9223372036854775807, priority=-32768,
                   metadata="just a string")] if edge else []))
    if edge:  # numbers in jsonb beyond float precision (json.dumps cannot write them)
        with connection.cursor() as cursor:
            cursor.execute("UPDATE shop_repair SET metadata = %s::jsonb WHERE id = %s",
                           ['{"big": 12345678901234567890.123456789012345678901234567890, '
                            '"neg": -0.000000000000000000001, "e": 1e-400, "arr": [[], {}, null]}', repairs[3].pk])
    RepairStatusHistory.unscoped.bulk_create(
        [RepairStatusHistory(tenant=t, repair=repairs[i % len(repairs)], from_status=None if i % 2 else "received",
                             to_status="ready", changed_at=ts + dt.timedelta(microseconds=i),
                             changed_by=None if i % 3 else employees[0], note="" if i % 2 else NASTY)
         for i in range(3 * n)])
    RepairPart.unscoped.bulk_create(
        [RepairPart(tenant=t, repair=repairs[i], part=parts[i % len(parts)], quantity=0 if i == 0 else i,
                    unit_price=Decimal("-0.01") if i % 4 == 0 else Decimal(f"{i}.99"))
         for i in range(len(repairs))]
        + ([RepairPart(tenant=t, repair=repairs[1], part=parts[-1], quantity=2147483647,
                       unit_price=Decimal("99999999.99"))] if edge else []))
    CostEstimate.unscoped.bulk_create(
        [CostEstimate(tenant=t, repair=repairs[i % len(repairs)],
                      line_items=[] if i % 2 else [{"part": "x", "qty": i, "price": "1.10"}, [1, [2, [3]]]],
                      subtotal=Decimal(f"{i * 100}.10"), tax_rate=Decimal("0.1234") if i % 2 else Decimal("-9.9999"),
                      total=Decimal("-9999999999.99") if i == 0 else Decimal(f"{i * 123}.45"),
                      currency="€$¥"[i % 3] * 3, valid_until=dt.date(2030, 12, 31),
                      accepted=[None, True, False][i % 3], created_at=ts - dt.timedelta(microseconds=999999))
         for i in range(n)])
    images = [b"", b"\x00", b"\x00\x01\x02\x00\xff" * 50, bytes(range(256)) * 4, "☃\\x00'\n".encode()]
    Signature.unscoped.bulk_create(
        [Signature(tenant=t, repair=repairs[i % len(repairs)], signed_by=NASTY, signed_at=ts,
                   image=images[i % len(images)], sha256=hashlib.sha256(images[i % len(images)]).hexdigest())
         for i in range(n)])


@pytest.fixture
def tenants(make_tenant):
    mover, other = make_tenant("mover"), make_tenant("bystander")
    _populate(other, 5, edge=False)
    _populate(mover, 25, edge=True)   # ids interleave with the other tenant's
    _populate(other, 5, edge=False, tag="b")
    return mover, other


@pytest.fixture
def targets(db):
    """Make empty (freshly migrated) dedicated schemas and databases; drop them afterwards."""
    from tenancy.servers import ensure_default_server

    made = []

    def make(kind, tenant, suffix=""):
        if kind == "schema":
            schema = f"{tenant.schema_name}{suffix}"
            made.append(("schema", schema))
            provision.ensure_schema(schema)
            return schema_place(schema)
        server = ensure_default_server()
        database = f"{tenant.database_name}{suffix}"
        role = provision.role_name(database)
        made.append(("database", server, database, role))
        provision.provision_database(server, database, role, provision.new_password())
        return database_place(server, database)

    yield make
    drop_places(made)


def _rows(place, table, tenant_id=None):
    """Every row (typed tuples, and their text form) of the table, ordered by pk."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)
    where = sql.SQL("WHERE tenant_id = %s") if tenant_id is not None else sql.SQL("")
    params = (tenant_id,) if tenant_id is not None else ()
    with place.connect() as conn:
        typed = conn.execute(sql.SQL("SELECT {} FROM {} {} ORDER BY {}").format(
            cols, place.table(table.name), where, sql.Identifier(table.pk)), params).fetchall()
        text = conn.execute(sql.SQL("SELECT ROW({})::text FROM {} {} ORDER BY {}").format(
            cols, place.table(table.name), where, sql.Identifier(table.pk)), params).fetchall()
    return typed, text


def _catalog(place, names):
    """Every index and constraint of the tables (name, definition, flags), as migrations left them."""
    with place.connect(autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', quote_ident(%s), false)", (place.schema,))
        indexes = conn.execute(
            """SELECT c.relname, ic.relname, pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary,
                      i.indisvalid, i.indimmediate
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %s AND c.relname = ANY(%s) ORDER BY 1, 2""", (place.schema, names)).fetchall()
        constraints = conn.execute(
            """SELECT c.relname, co.conname, co.contype, pg_get_constraintdef(co.oid), co.condeferrable,
                      co.condeferred, co.convalidated, ic.relname
                 FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_class ic ON ic.oid = co.conindid
                WHERE n.nspname = %s AND c.relname = ANY(%s) ORDER BY 1, 2""", (place.schema, names)).fetchall()
    schema_prefix = f" ON {place.schema}."
    return ([row[:2] + (row[2].replace(schema_prefix, " ON <schema>."),) + row[3:] for row in indexes], constraints)


def _assert_same_rows(source, target, tables, tenant_id):
    for table in tables:
        src_typed, src_text = _rows(source, table, tenant_id)
        dst_typed, dst_text = _rows(target, table)  # the whole target table: nothing else is there
        assert len(src_typed) > 0, table.name
        assert dst_typed == src_typed, table.name
        assert dst_text == src_text, table.name


def _move(source, target, tenant, tables, *, workers=2):
    """drop secondary objects, copy, restore, set sequences: what a run does."""
    with target.connect(autocommit=True) as conn:
        objects = table_objects(conn, target, [t.name for t in tables])
        drop_secondary(conn, target, objects)
    done = {}
    result = copy_tenant(source, target, tenant.pk, tables, workers=workers,
                         on_table_done=lambda name, copied: done.__setitem__(name, copied))
    with target.connect(autocommit=True) as conn:
        restore_secondary(conn, target, objects, workers=2)
    with source.connect() as conn:
        floor = sequence_positions(conn, source, tables)
    with target.connect(autocommit=True) as conn:
        sequences = set_sequences(conn, target, tables, floor)
    return objects, result, done, floor, sequences


@pytest.mark.parametrize("kind", ["schema", "database"])
def test_copy_is_exact_and_verify_catches_every_difference(tenants, targets, kind):
    mover, other = tenants
    tables = tenant_tables()
    names = [t.name for t in tables]
    source = shared_place()
    target = targets(kind, mover)
    fresh = _catalog(target, names)
    with target.connect() as conn:
        fresh_objects = table_objects(conn, target, names)
    with source.connect() as conn:  # the shared tables were made by the same migrations
        assert table_objects(conn, source, names) == [
            {**o, "definition": o["definition"].replace(f" ON {target.schema}.", " ON public.")}
            for o in fresh_objects]

    objects, result, done, floor, sequences = _move(source, target, mover, tables)

    # Every row of every table, identical; nothing of the other tenant.
    assert set(result) == set(names) == set(done)
    assert all(isinstance(c, TableCopy) and c.bytes > 0 for c in result.values())
    _assert_same_rows(source, target, tables, mover.pk)
    with source.connect() as conn:
        for table in tables:
            assert result[table.name].rows == fingerprint(conn, source, table, mover.pk).rows
    with target.connect() as conn:
        assert all(foreign_rows(conn, target, t, mover.pk) == 0 for t in tables)

    # Secondary indexes and FKs are back, exactly as the migrations made them.
    assert objects == fresh_objects and any(o["kind"] == "constraint" and o["contype"] == "f" for o in objects)
    assert _catalog(target, names) == fresh
    with target.connect(autocommit=True) as conn:
        assert restore_secondary(conn, target, objects) == []  # twice is harmless
        assert drop_secondary(conn, target, objects[:1]) == [objects[0]["name"]]
        assert drop_secondary(conn, target, objects[:1]) == []
        assert restore_secondary(conn, target, objects) == [objects[0]["name"]]
    assert _catalog(target, names) == fresh

    # Sequences: past the copied ids and past the source's sequence.
    with target.connect() as conn:
        for table in tables:
            max_pk = conn.execute(sql.SQL("SELECT max(id) FROM {}").format(target.table(table.name))).fetchone()[0]
            assert sequences[table.name] == max(max_pk, floor[table.name])
            assert floor[table.name] >= max_pk
            next_id = conn.execute("SELECT nextval(pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), "
                                   "'id'))", (target.schema, table.name)).fetchone()[0]
            assert next_id == sequences[table.name] + 1
        conn.rollback()

    # Verify: ok now; then one changed value, one missing row, one foreign row.
    report = verify_tenant(source, target, mover.pk, tables)
    assert report.ok, report.summary()
    assert report.as_dict()["tables"]["shop_repair"]["source_rows"] == 52
    with target.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {} SET notes = notes || 'x' WHERE id = (SELECT min(id) FROM {} WHERE notes "
                             "IS NOT NULL)").format(target.table("shop_customer"), target.table("shop_customer")))
    report = verify_tenant(source, target, mover.pk, tables)
    assert report.mismatches == ["shop_customer"]
    customer = next(t for t in tables if t.name == "shop_customer")
    with source.connect() as src, target.connect() as dst:  # fingerprints of some rows only
        ids = [row[0] for row in src.execute("SELECT id FROM shop_customer WHERE tenant_id = %s ORDER BY id",
                                             (mover.pk,)).fetchall()]
        changed = dst.execute(sql.SQL("SELECT min(id) FROM {} WHERE notes IS NOT NULL").format(
            target.table("shop_customer"))).fetchone()[0]
        unchanged = [i for i in ids if i != changed]
        assert fingerprint(src, source, customer, mover.pk, unchanged) == fingerprint(
            dst, target, customer, mover.pk, unchanged)
        assert fingerprint(src, source, customer, mover.pk, [changed]) != fingerprint(
            dst, target, customer, mover.pk, [changed])
        assert fingerprint(src, source, customer, mover.pk, []).rows == 0
    assert report.tables["shop_customer"]["problems"] == ["same row count, different content"]
    assert report.tables["shop_customer"]["source_rows"] == report.tables["shop_customer"]["target_rows"]

    with target.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = (SELECT max(id) FROM {})").format(
            target.table("shop_signature"), target.table("shop_signature")))
        row = conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(target.table("shop_sparepart"))).fetchone()
    report = verify_tenant(source, target, mover.pk, tables)
    assert set(report.mismatches) == {"shop_customer", "shop_signature"}
    signature = report.tables["shop_signature"]
    assert signature["target_rows"] == signature["source_rows"] - 1 and not signature["ok"]

    with target.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("INSERT INTO {} (tenant_id, sku, name, unit_price, stock, reorder_level, "
                             "compatible_models, is_discontinued) VALUES (%s, 'FOREIGN', 'x', 1, 1, 1, '{{}}', "
                             "false)").format(target.table("shop_sparepart")), (other.pk,))
    report = verify_tenant(source, target, mover.pk, tables)
    assert set(report.mismatches) == {"shop_customer", "shop_sparepart", "shop_signature"}
    assert report.tables["shop_sparepart"]["foreign_rows"] == 1
    assert report.tables["shop_sparepart"]["target_rows"] == report.tables["shop_sparepart"]["source_rows"]
    assert row is not None
    # Not a dedicated target: other tenants' rows are allowed.
    report = verify_tenant(source, target, mover.pk, tables, target_is_dedicated=False)
    assert set(report.mismatches) == {"shop_customer", "shop_signature"}
    assert report.as_dict()["ok"] is False


def test_fk_order_copy_and_resume_with_skip(tenants, targets):
    """Without deferral (FKs in place) tables go one by one in FK order; a resumed copy
    redoes only the tables not marked done, emptying them first."""
    mover, _ = tenants
    tables = tenant_tables()
    source, target = shared_place(), targets("database", mover)
    order = []
    copy_tenant(source, target, mover.pk, tables, workers=4, on_table_done=lambda name, c: order.append(name))
    assert order == [t.name for t in tables]  # FKs present: sequential, parents first
    _assert_same_rows(source, target, tables, mover.pk)

    # Crash after some tables: a leaf table half-filled, a parent table with children.
    with target.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE id % 2 = 0").format(target.table("shop_signature")))
        conn.execute(sql.SQL("UPDATE {} SET first_name = 'stale'").format(target.table("shop_customer")))
    redo = {"shop_signature", "shop_customer"}
    order.clear()
    result = copy_tenant(source, target, mover.pk, tables, skip={t.name for t in tables} - redo, workers=2,
                         on_table_done=lambda name, c: order.append(name))
    assert set(result) == redo and sorted(order) == sorted(redo)
    _assert_same_rows(source, target, tables, mover.pk)
    assert verify_tenant(source, target, mover.pk, tables).ok
    assert copy_tenant(source, target, mover.pk, tables, skip={t.name for t in tables}) == {}


def test_resume_after_crash_with_deferral(tenants, targets):
    mover, other = tenants
    tables = tenant_tables()
    source, target = shared_place(), targets("schema", mover)
    with target.connect(autocommit=True) as conn:
        objects = table_objects(conn, target, [t.name for t in tables])
        drop_secondary(conn, target, objects)
        assert drop_secondary(conn, target, objects) == []  # a resumed run drops again: nothing to do
    copy_tenant(source, target, mover.pk, tables, workers=3)
    with target.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(target.table("shop_repair")))  # FKs are gone: plain TRUNCATE
    copied = []
    progress = []
    copy_tenant(source, target, mover.pk, tables, skip={t.name for t in tables} - {"shop_repair"},
                on_table_done=lambda name, c: copied.append((name, c.rows)), on_progress=progress.append)
    assert copied == [("shop_repair", 52)]
    with target.connect(autocommit=True) as conn:
        restore_secondary(conn, target, objects)
    _assert_same_rows(source, target, tables, mover.pk)
    assert verify_tenant(source, target, mover.pk, tables).ok

    # copy_table by itself, reading through libpq or through psycopg's Copy.read(), in small
    # blocks; a cancelled copy aborts both COPYs and leaves both connections usable.
    signature = next(t for t in tables if t.name == "shop_signature")
    for fast_read in (True, False):
        with source.connect(autocommit=True) as src, target.connect() as dst:
            src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            dst.execute(sql.SQL("TRUNCATE {}").format(target.table(signature.name)))
            reported = []
            copied = copy_table(src, dst, source, target, signature, mover.pk, reported.append, freeze=True,
                                block_size=1000, fast_read=fast_read)
            dst.commit()
            assert copied.rows == 25 and sum(reported) == copied.bytes > 5000
            cancel = threading.Event()
            cancel.set()
            dst.execute(sql.SQL("DELETE FROM {}").format(target.table(signature.name)))
            with pytest.raises(CopyCancelled):
                copy_table(src, dst, source, target, signature, mover.pk, cancel=cancel, block_size=1000,
                           fast_read=fast_read)
            dst.rollback()
            assert src.execute("SELECT 1").fetchone() == (1,)
            assert dst.execute(sql.SQL("SELECT count(*) FROM {}").format(
                target.table(signature.name))).fetchone() == (25,)
    _assert_same_rows(source, target, [signature], mover.pk)

    # And back: into the live shared tables only the tenant's rows are replaced, nothing is
    # truncated and no index is dropped there.
    with target.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {} SET first_name = 'changed in the schema'").format(
            target.table("shop_customer")))
    others = {t.name: _rows(source, t, other.pk) for t in tables}
    with pytest.raises(ValueError):
        copy_tenant(source, shared_place(), mover.pk, tables)
    with source.connect() as conn, pytest.raises(ValueError):
        drop_secondary(conn, source, table_objects(conn, source, ["shop_customer"]))
    copy_tenant(target, source, mover.pk, tables, workers=2)
    report = verify_tenant(target, source, mover.pk, tables, target_is_dedicated=False)
    assert report.ok, report.summary()
    assert {t.name: _rows(source, t, other.pk) for t in tables} == others
    with source.connect() as conn:
        assert conn.execute("SELECT count(*) FROM shop_customer WHERE tenant_id = %s AND first_name = "
                            "'changed in the schema'", (mover.pk,)).fetchone()[0] == 27


def test_a_failing_table_stops_every_worker_and_raises(tenants, targets):
    mover, _ = tenants
    tables = tenant_tables()
    source, target = shared_place(), targets("schema", mover)
    with target.connect(autocommit=True) as conn:
        drop_secondary(conn, target, table_objects(conn, target, [t.name for t in tables]))
        conn.execute(sql.SQL("DROP TABLE {}").format(target.table("shop_device")))
    baseline = threading.active_count()
    with pytest.raises(psycopg.errors.UndefinedTable):
        copy_tenant(source, target, mover.pk, tables, workers=3)
    assert threading.active_count() == baseline
    with source.connect(autocommit=True) as conn:
        for _ in range(50):  # a closed session's backend leaves pg_stat_activity a moment later
            sessions = conn.execute("SELECT application_name, state, query FROM pg_stat_activity "
                                    "WHERE application_name LIKE 'tenant-move%%' AND datname = current_database() "
                                    "AND pid <> pg_backend_pid()").fetchall()
            if not sessions:
                break
            time.sleep(0.1)
    assert sessions == []

    # The missing table is reported, never looked up in public through the search_path.
    report = verify_tenant(source, target, mover.pk, tables)
    assert "shop_device" in report.mismatches
    assert report.tables["shop_device"]["problems"] == [f"missing in {target}"]
    assert report.tables["shop_device"]["target_rows"] is None


def test_secondary_objects_keep_constraint_indexes_as_constraints(db):
    source = shared_place()
    with source.connect() as conn:
        objects = secondary_objects(conn, source, "shop_customer")
    by_name = {o["name"]: o for o in objects}
    assert by_name["customer_email_per_tenant"] == {
        "kind": "constraint", "name": "customer_email_per_tenant", "table": "shop_customer",
        "definition": "UNIQUE (tenant_id, email)", "contype": "u"}
    assert by_name["customer_name_idx"]["kind"] == "index"
    assert by_name["customer_name_idx"]["definition"] == (
        "CREATE INDEX customer_name_idx ON public.shop_customer USING btree (tenant_id, last_name, first_name)")
    assert "shop_customer_pkey" not in by_name
    with source.connect() as conn:
        repair_part = {o["name"]: o for o in secondary_objects(conn, source, "shop_repairpart")}
    assert "shop_repairpart_quantity_check" not in repair_part  # CHECK stays in place
    assert repair_part["shop_repairpart_repair_id_b53e8c63_fk_shop_repair_id"]["definition"] == (
        "FOREIGN KEY (repair_id) REFERENCES shop_repair(id) DEFERRABLE INITIALLY DEFERRED")


@pytest.mark.django_db
def test_engine_snapshots_really_are_repeatable_read():
    """psycopg begins a transaction by itself; a BEGIN sent after it would be ignored with a
    mere warning and leave READ COMMITTED. Place.connect sets the level the right way."""
    from migration_jobs.engine.places import shared_place

    with shared_place().connect(repeatable_read=True, read_only=True) as conn:
        assert conn.execute("SHOW transaction_isolation").fetchone()[0] == "repeatable read"
        assert conn.execute("SHOW transaction_read_only").fetchone()[0] == "on"
