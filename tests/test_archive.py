"""Tenant archives end to end: a seeded tenant exported from the shared tables and restored
into the shared tables, a fresh schema and a fresh database, every row compared value for
value; every kind of bad archive or request refused with one line, exit status 2, and
nothing changed."""
import gzip
import hashlib
import json
import tarfile

import pytest
from django.conf import settings
from django.utils import timezone
from psycopg import sql

from migration_jobs.engine import provision
from migration_jobs.engine.archive import COPY_SIGNATURE, FORMAT_VERSION
from migration_jobs.engine.archive_read import validate_archive
from migration_jobs.engine.places import place_of, shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.engine.verify import LEGACY_MD5, fingerprint
from shop.models import Customer
from tenancy.context import tenant_context
from tenancy.models import DatabaseCredential, Domain, Tenant
from tenancy.servers import ensure_default_server
from tenancy.models import tenant_host
from tests.helpers import delete_tenant, fingerprints, rewrite, run_cmd, schema_exists, shared_state, snapshot

pytestmark = pytest.mark.django_db(transaction=True)


SEEDED = {"largest": 2000, "seed": 11}  # the conftest `seeded` tenant


def test_export_writes_a_complete_manifest_and_compressed_binary_copy_members(exported):
    tenant, path, before = exported
    manifest = validate_archive(path)
    assert manifest["format"] == "tenant-archive" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["tenant"] == {"id": tenant.pk, "slug": tenant.slug, "name": tenant.name, "placement": "shared",
                                  "status": "active", "settings": tenant.settings}
    assert [t["name"] for t in manifest["tables"]] == [t.name for t in tenant_tables()]  # FK order
    fps = fingerprints(shared_place(), tenant.pk)
    for entry, spec in zip(manifest["tables"], tenant_tables()):
        assert [c["name"] for c in entry["columns"]] == list(spec.columns)
        assert all(c["type"] for c in entry["columns"])
        assert entry["rows"] == len(before[spec.name]) == fps[spec.name].rows
        assert entry["checksum"] == fps[spec.name].checksum
    assert manifest["migrations"] == {"shop": "0001_initial"}
    assert manifest["source"]["server_version"] and manifest["created_at"]
    assert set(manifest["sequences"]) == {t.name for t in tenant_tables()}
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert names[-1] == "manifest.json"
        for entry in manifest["tables"]:
            raw = tar.extractfile(entry["member"]).read()
            assert hashlib.sha256(raw).hexdigest() == entry["sha256"]
            assert gzip.decompress(raw).startswith(COPY_SIGNATURE)
    # The JSON mixes types that lose nothing in binary COPY: json, bytea, arrays, numeric, timestamptz, NULLs.
    kinds = {c["type"] for t in manifest["tables"] for c in t["columns"]}
    assert {"jsonb", "bytea", "numeric(12,2)", "timestamp with time zone", "character varying(30)[]"} <= kinds


def test_restore_check_validates_and_writes_nothing(exported):
    tenant, path, _ = exported
    before = shared_state()
    code, out, err = run_cmd("restore_tenant", str(path), "--as", "copy_check", "--into", "schema", "--check")
    assert code == 0, err
    assert "archive OK" in out and "would create tenant copy_check into schema" in out
    assert shared_state() == before and not schema_exists(f"{settings.TENANT_SCHEMA_PREFIX}copy_check")


# --- round trips --------------------------------------------------------------------------

def test_round_trip_into_the_shared_tables(exported):
    tenant, path, before = exported
    name, tenant_settings, pk = tenant.name, tenant.settings, tenant.pk
    delete_tenant(tenant)
    assert snapshot(shared_place(), pk) == {t.name: [] for t in tenant_tables()}
    code, out, err = run_cmd("restore_tenant", str(path), "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["created"] and report["placement"] == "shared" and not report["tenant_id_rewritten"]
    restored = Tenant.objects.get(slug=tenant.slug)
    assert (restored.pk, restored.name, restored.settings, restored.placement) == (pk, name, tenant_settings, "shared")
    assert Domain.objects.filter(tenant=restored, domain=tenant_host(tenant.slug)).exists()
    assert snapshot(shared_place(), pk) == before  # every row, value for value, same ids
    with tenant_context(restored):  # sequences are past the restored ids
        new = Customer.objects.create(first_name="After", last_name="Restore", created_at=timezone.now())
    assert new.pk > max(row[0] for row in before["shop_customer"])


@pytest.mark.parametrize("into", ["schema", "database"])
def test_round_trip_into_a_fresh_dedicated_place_keeps_every_id(exported, cleanup, into):
    tenant, path, before = exported
    pk, slug = tenant.pk, tenant.slug
    cleanup(slug)
    delete_tenant(tenant)
    code, out, err = run_cmd("restore_tenant", str(path), "--into", into)
    assert code == 0, err
    assert f"created tenant {slug} (id {pk}) in {into} placement" in out
    restored = Tenant.objects.get(slug=slug)
    assert restored.pk == pk and restored.placement == into and restored.status == "active"
    assert snapshot(place_of(restored), pk) == before  # byte-for-byte: same tenant id, same keys, same values
    assert snapshot(shared_place(), pk) == {t.name: [] for t in tenant_tables()}
    if into == "database":
        credential = DatabaseCredential.objects.get(tenant=restored)
        assert credential.database == restored.database_name
        assert credential.password() not in out + err
    with tenant_context(restored):  # the router reads the new place, sequences are set
        assert Customer.objects.count() == len(before["shop_customer"])
        Customer.objects.create(first_name="After", last_name="Restore", created_at=timezone.now())


@pytest.mark.parametrize("into", ["schema", "database"])
def test_restore_as_a_new_tenant_rewrites_only_the_tenant_id(exported, cleanup, into):
    tenant, path, before = exported
    cleanup("acme_copy")
    shared_before = fingerprints(shared_place(), tenant.pk)
    code, out, err = run_cmd("restore_tenant", str(path), "--as", "acme_copy", "--into", into, "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    copy = Tenant.objects.get(slug="acme_copy")
    assert report["tenant_id_rewritten"] and copy.pk != tenant.pk and copy.placement == into
    assert "seed_demo" not in copy.settings
    expected = {name: [tuple(v for c, v in zip(spec.columns, row) if c != "tenant_id") for row in rows]
                for spec in tenant_tables() for name, rows in [(spec.name, before[spec.name])]}
    assert snapshot(place_of(copy), copy.pk, without_tenant=True) == expected
    with place_of(copy).connect() as conn:  # no row kept the old tenant id
        for spec in tenant_tables():
            assert conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id <> %s").format(
                place_of(copy).table(spec.name)), (copy.pk,)).fetchone()[0] == 0
    assert fingerprints(shared_place(), tenant.pk) == shared_before  # the original is untouched
    # Restoring over the copy where it lives now replaces its rows (once it is suspended).
    with tenant_context(copy):
        Customer.objects.create(first_name="Only", last_name="In the copy", created_at=timezone.now())
    copy.status = "suspended"
    copy.save()
    code, out, err = run_cmd("restore_tenant", str(path), "--as", "acme_copy", "--replace")
    assert code == 0, err
    assert f"restored tenant acme_copy (id {copy.pk}) in {into} placement" in out and "rows replaced" in out
    assert snapshot(place_of(copy), copy.pk, without_tenant=True) == expected


def test_replace_restores_a_suspended_tenants_rows_exactly(exported):
    tenant, path, before = exported
    with tenant_context(tenant):  # the tenant changes after the export
        Customer.objects.create(first_name="Later", last_name="Row", created_at=timezone.now())
        Customer.objects.filter(pk=before["shop_customer"][0][0]).update(first_name="Changed")
    code, _, err = run_cmd("restore_tenant", str(path), "--replace")
    assert code == 2 and "is active: suspend it" in err
    tenant.status = "suspended"
    tenant.save()
    code, out, err = run_cmd("restore_tenant", str(path), "--replace")
    assert code == 0, err
    assert "rows replaced" in out
    assert snapshot(shared_place(), tenant.pk) == before
    assert Tenant.objects.get(pk=tenant.pk).status == "suspended"  # the status is the operator's to change


# --- refusals -----------------------------------------------------------------------------

def _flip_byte(raw: bytes) -> bytes:
    middle = len(raw) // 2
    return raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1:]


def _first_member(path):
    return validate_archive(path)["tables"][-1]["member"]


def _bad_archive(case, path, tmp_path):
    bad = tmp_path / f"bad-{case}.tar"
    if case == "truncated":
        data = path.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif case == "tampered member":
        rewrite(path, bad, members={_first_member(path): _flip_byte})
    elif case == "wrong member checksum":
        rewrite(path, bad, manifest=lambda m: m["tables"][0].update(sha256="0" * 64))
    elif case == "manifest changed":
        rewrite(path, bad, manifest=lambda m: m["tables"][0].update(rows=m["tables"][0]["rows"] + 1),
                fix_digest=False)
    elif case == "unknown format version":
        rewrite(path, bad, manifest=lambda m: m.update(format_version=99))
    elif case == "migrations ahead":
        rewrite(path, bad, manifest=lambda m: m["migrations"].update(shop="0099_from_the_future"))
    elif case == "not an archive":
        bad.write_bytes(b'{"tenant": "acme", "customers": []}')
    elif case == "empty file":
        bad.write_bytes(b"")
    return bad


BAD_CASES = {
    "truncated": "truncated",
    "tampered member": "checksum mismatch",
    "wrong member checksum": "checksum mismatch",
    "manifest changed": "does not match its checksum",
    "unknown format version": "unknown archive format version 99",
    "migrations ahead": "shop.0099_from_the_future, which this installation does not know",
    "not an archive": "not a tenant archive",
    "empty file": "not a tenant archive",
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_a_bad_archive_is_refused_before_anything_is_written(exported, tmp_path, cleanup, case):
    tenant, path, _ = exported
    cleanup("bad_copy")
    bad = _bad_archive(case, path, tmp_path)
    before = shared_state()
    code, out, err = run_cmd("restore_tenant", str(bad), "--as", "bad_copy", "--into", "schema")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: invalid archive"), err
    assert BAD_CASES[case] in err, err
    assert out == ""
    assert shared_state() == before
    assert not schema_exists(f"{settings.TENANT_SCHEMA_PREFIX}bad_copy")


@pytest.mark.parametrize("into", ["shared", "schema", "database"])
def test_wrong_row_checksum_in_the_manifest_is_found_after_loading_and_rolled_back(exported, tmp_path, cleanup, into):
    """A manifest whose digest was fixed up but whose table checksum is wrong passes the file
    checks; the rows loaded do not match it, so the transaction is rolled back and what the
    restore created (tenant row, schema, database) is gone."""
    tenant, path, _ = exported
    cleanup(tenant.slug)
    bad = rewrite(path, tmp_path / "bad.tar", manifest=lambda m: m["tables"][2].update(checksum="1:0000000000000001"))
    delete_tenant(tenant)
    before = shared_state()
    code, out, err = run_cmd("restore_tenant", str(bad), "--into", into)
    assert code == 2, err
    assert "do not match its manifest" in err or "do not match the archive's checksums" in err, err
    assert shared_state() == before
    assert not Tenant.objects.filter(slug=tenant.slug).exists()
    assert not schema_exists(tenant.schema_name)
    assert not provision.database_exists(ensure_default_server(), tenant.database_name)


def test_existing_rows_are_not_overwritten_without_replace(exported):
    tenant, path, _ = exported
    before = shared_state()
    code, out, err = run_cmd("restore_tenant", str(path))
    assert code == 2
    assert f"tenant {tenant.slug} already has" in err and "--replace" in err
    assert shared_state() == before


def test_restore_as_another_tenant_into_shared_refuses_colliding_keys(exported):
    tenant, path, _ = exported
    before = shared_state()
    code, out, err = run_cmd("restore_tenant", str(path), "--as", "acme_twin", "--into", "shared")
    assert code == 2
    assert "collide with other tenants' rows" in err and "shop_customer.id" in err and "shop_customer.public_id" in err
    assert shared_state() == before
    assert not Tenant.objects.filter(slug="acme_twin").exists()


def test_moving_a_tenant_with_rows_by_restore_is_refused(exported):
    tenant, path, _ = exported
    before = shared_state()
    code, _, err = run_cmd("restore_tenant", str(path), "--into", "schema")
    assert code == 2 and "migrate_tenant" in err
    assert shared_state() == before and not schema_exists(tenant.schema_name)


@pytest.mark.parametrize("args, message", [
    (["--into", "moon"], "unknown target 'moon'"),
    (["--as", "Not A Slug"], "invalid tenant slug"),
    (["--as", "fresh", "--into", "database", "--server", "nowhere"], "unknown database server 'nowhere'"),
])
def test_bad_options_are_refused_in_one_line(exported, args, message):
    _, path, _ = exported
    before = shared_state()
    code, out, err = run_cmd("restore_tenant", str(path), *args)
    assert code == 2 and message in err, err
    assert shared_state() == before


def test_export_of_an_unknown_tenant_is_refused(tmp_path):
    code, out, err = run_cmd("export_tenant", "ghost", "-o", str(tmp_path / "x.tar"))
    assert code == 2 and "unknown tenant 'ghost'" in err
    assert not (tmp_path / "x.tar").exists()


def test_a_format_1_archive_with_md5_checksums_still_restores(exported, tmp_path):
    tenant, path, before = exported
    with shared_place().connect() as conn:
        md5 = {t.name: fingerprint(conn, shared_place(), t, tenant.pk, algorithm=LEGACY_MD5).checksum
               for t in tenant_tables()}

    def as_format_1(checksums):
        def change(manifest):
            manifest["format_version"] = 1
            for table in manifest["tables"]:
                table["checksum"] = checksums.get(table["name"], table["checksum"])
        return change

    old = rewrite(path, tmp_path / "format1.tar", manifest=as_format_1(md5))
    wrong = rewrite(path, tmp_path / "format1-wrong.tar", manifest=as_format_1({}))  # v1 with v2 checksums
    tenant.status = "suspended"
    tenant.save()
    code, _, err = run_cmd("restore_tenant", str(wrong), "--replace")
    assert code == 2 and "do not match" in err
    code, out, err = run_cmd("restore_tenant", str(old), "--replace")
    assert code == 0, err
    assert snapshot(shared_place(), tenant.pk) == before
