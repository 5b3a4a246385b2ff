"""Hostile archives (issue 10, findings 3, 7, 8 and the gzip bomb of 13): an archive is
input from outside. Its manifest's digest is trivial to recompute, so nothing in it is
trusted beyond what the data proves: sequence positions are clamped to the keys restored,
rows pointing at another tenant's rows are refused, the expanded size is capped while it
streams; and every archive the project writes is readable by its owner only."""
import gzip
import io
import json
import os
import stat

import pytest
from django.utils import timezone
from psycopg import sql

from migration_jobs.engine.archive import COPY_SIGNATURE, write_archive
from migration_jobs.engine.archive_read import open_archive, open_table_stream, validate_archive
from migration_jobs.exceptions import ArchiveError
from migration_jobs.engine.places import place_of, shared_place
from migration_jobs.engine.references import reference_problems
from migration_jobs.engine.tables import tenant_tables
from shop.models import Customer
from tenancy.context import tenant_context
from tenancy.models import Tenant
from tests.helpers import delete_tenant, rewrite, run_cmd, shared_state, snapshot

pytestmark = pytest.mark.django_db(transaction=True)

SEEDED = {"largest": 2000, "seed": 11}  # the conftest `seeded` tenant (as in test_archive)

BIGINT_MAX = 2 ** 63 - 1


def sequence_values():
    """table -> last value of its shared pk sequence (0 when none handed out yet)."""
    out = {}
    with shared_place().connect() as conn:
        for spec in tenant_tables():
            value, called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
                sql.SQL(conn.execute("SELECT pg_get_serial_sequence(%s, %s)",
                                     (f"public.{spec.name}", spec.pk)).fetchone()[0]))).fetchone()
            out[spec.name] = int(value) if called else 0
    return out


def max_keys(tenant_id=None):
    with shared_place().connect() as conn:
        where = sql.SQL(" WHERE tenant_id = %s") if tenant_id is not None else sql.SQL("")
        return {spec.name: int(conn.execute(sql.SQL("SELECT coalesce(max({}), 0) FROM {}{}").format(
            sql.Identifier(spec.pk), shared_place().table(spec.name), where),
            (tenant_id,) if tenant_id is not None else ()).fetchone()[0]) for spec in tenant_tables()}


def other_tenant(tenant):
    return Tenant.objects.exclude(pk=tenant.pk).order_by("pk").first()


def one_line_refusal(code, out, err):
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err


# --- finding 3: sequence positions are a hint ---------------------------------------------

def test_manifest_sequences_at_bigint_max_do_not_stop_other_tenants(exported, tmp_path, settings):
    """The reproduction: every sequence in the manifest set to 2^63-1, the digest recomputed.
    Restore clamps each to the highest key restored + the margin; others keep inserting."""
    settings.TENANT_RESTORE_SEQUENCE_MARGIN = 1000
    tenant, path, before = exported
    hostile = rewrite(path, tmp_path / "hostile.tar",
                      manifest=lambda m: m["sequences"].update({k: BIGINT_MAX for k in m["sequences"]}))
    validate_archive(hostile)  # the file itself is well-formed: only its values lie
    delete_tenant(tenant)
    earlier = sequence_values()  # earlier tests in this database may have moved them on already
    code, out, err = run_cmd("restore_tenant", str(hostile))
    assert code == 0, err
    assert snapshot(shared_place(), tenant.pk) == before
    values, highest = sequence_values(), max_keys()
    for name, value in values.items():
        assert value < BIGINT_MAX // 2, name
        # Never past the restored keys + the margin; never backwards either (so where an
        # earlier test left a sequence higher, it stays where it was).
        assert value <= max(highest[name] + 1000, earlier[name]), name
    with tenant_context(other_tenant(tenant)):
        Customer.objects.create(first_name="Still", last_name="Works", created_at=timezone.now())


def test_a_restore_never_moves_a_sequence_backwards(exported, tmp_path):
    tenant, path, _ = exported
    low = rewrite(path, tmp_path / "low.tar", manifest=lambda m: m["sequences"].update({k: 1 for k in m["sequences"]}))
    with tenant_context(other_tenant(tenant)):  # the sequence moves on after the export
        for i in range(3):
            Customer.objects.create(first_name="Later", last_name=str(i), created_at=timezone.now())
    delete_tenant(tenant)
    before = sequence_values()
    code, out, err = run_cmd("restore_tenant", str(low))
    assert code == 0, err
    after = sequence_values()
    assert all(after[name] >= before[name] for name in before), (before, after)


def test_restored_keys_past_half_a_sequences_range_are_refused(seeded, tmp_path):
    """The data can lie too: a row whose key is near 2^63 would drag the shared sequence
    there. Refused in one line, nothing changed."""
    tenant = seeded
    with shared_place().connect() as conn:  # a leaf table (no row points at it)
        leaf = next(t for t in reversed(tenant_tables()) if not any(t.name in o.parents for o in tenant_tables()))
        conn.execute(sql.SQL("UPDATE {t} SET {pk} = %s WHERE {pk} = (SELECT min({pk}) FROM {t} WHERE tenant_id = %s)"
                             ).format(t=shared_place().table(leaf.name), pk=sql.Identifier(leaf.pk)),
                     (BIGINT_MAX - 5, tenant.pk))
        conn.commit()
    path = tmp_path / "huge-key.tar"
    code, _, err = run_cmd("export_tenant", tenant.slug, "-o", str(path))
    assert code == 0, err
    delete_tenant(tenant)
    before = shared_state()
    err = one_line_refusal(*run_cmd("restore_tenant", str(path)))
    assert f"{leaf.name}.{leaf.pk}" in err and str(BIGINT_MAX - 5) in err and "half the range" in err
    assert shared_state() == before


def test_a_tenant_id_at_bigint_max_is_not_kept(db, tmp_path, make_tenant):
    """The manifest's tenant id is kept only when it is plausible here (at most the tenant
    sequence's position + the margin): kept at 2^63-1, it would set the tenant sequence there
    and no tenant could be created afterwards. (A manifest that only claims such an id is
    refused anyway: its rows carry another tenant id.)"""
    from tenancy.models import Domain, tenant_host

    far = Tenant(id=BIGINT_MAX, slug="far_away", name="Far away", placement="shared", status="active")
    far.save(force_insert=True)
    Domain.objects.create(domain=tenant_host(far.slug), tenant=far, is_primary=True)
    with tenant_context(far):
        Customer.objects.create(first_name="Far", last_name="Away", created_at=timezone.now())
    path = tmp_path / "far.tar"
    code, _, err = run_cmd("export_tenant", far.slug, "-o", str(path))
    assert code == 0, err
    delete_tenant(far)
    code, out, err = run_cmd("restore_tenant", str(path), "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["tenant_id_rewritten"] and report["tenant_id"] < BIGINT_MAX // 2
    assert make_tenant("created_after").pk < BIGINT_MAX // 2


def test_a_normal_round_trip_sets_sequences_from_the_data_and_the_manifest(exported, settings):
    """Export -> restore of a tenant whose newest rows were deleted after it was exported:
    the manifest's positions (within the margin) still keep the sequence past ids handed
    out, and the next insert gets a fresh id."""
    settings.TENANT_RESTORE_SEQUENCE_MARGIN = 1000
    tenant, path, before = exported
    manifest = validate_archive(path)
    loaded = max_keys(tenant.pk)
    delete_tenant(tenant)
    code, _, err = run_cmd("restore_tenant", str(path))
    assert code == 0, err
    assert snapshot(shared_place(), tenant.pk) == before
    values = sequence_values()
    for name, position in manifest["sequences"].items():
        assert values[name] >= min(position, loaded[name] + 1000), name
        assert values[name] >= loaded[name], name
    restored = Tenant.objects.get(pk=tenant.pk)
    with tenant_context(restored):
        new = Customer.objects.create(first_name="After", last_name="Restore", created_at=timezone.now())
    assert new.pk > max(row[0] for row in before["shop_customer"])


# --- finding 7: cross-tenant references ---------------------------------------------------

def _point_a_device_at(tenant, victim):
    """In the shared tables: one of the tenant's devices now points at the victim's customer.
    Returns (device id, customer id)."""
    with shared_place().connect() as conn:
        device = conn.execute("SELECT min(id) FROM shop_device WHERE tenant_id = %s", (tenant.pk,)).fetchone()[0]
        customer = conn.execute("SELECT min(id) FROM shop_customer WHERE tenant_id = %s", (victim.pk,)).fetchone()[0]
        conn.execute("UPDATE shop_device SET customer_id = %s WHERE id = %s", (customer, device))
        conn.commit()
    return device, customer


def test_verify_reports_a_cross_tenant_reference(seeded):
    tenant, victim = seeded, other_tenant(seeded)
    assert reference_problems(place_of(tenant), tenant.pk, tenant_tables()) == []
    device, customer = _point_a_device_at(tenant, victim)
    problems = reference_problems(place_of(tenant), tenant.pk, tenant_tables())
    assert len(problems) == 1
    assert "shop_device.customer_id" in problems[0] and f"key {device}" in problems[0]
    assert f"shop_customer key {customer} of tenant {victim.pk}" in problems[0]


def test_restore_refuses_an_archive_with_a_cross_tenant_reference(seeded, tmp_path):
    tenant, victim = seeded, other_tenant(seeded)
    device, customer = _point_a_device_at(tenant, victim)
    path = tmp_path / "cross.tar"
    code, _, err = run_cmd("export_tenant", tenant.slug, "-o", str(path))  # export does not judge
    assert code == 0, err
    delete_tenant(tenant)
    before = shared_state()
    err = one_line_refusal(*run_cmd("restore_tenant", str(path)))
    assert "shop_device.customer_id" in err and f"shop_device key {device}" in err, err
    assert f"of tenant {victim.pk}" in err and "nothing was restored" in err
    assert shared_state() == before
    assert not Tenant.objects.filter(slug=tenant.slug).exists()


# --- finding 8: modes --------------------------------------------------------------------

def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_export_is_0600_even_over_an_existing_world_readable_file(seeded, tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "acme.tar"
        path.write_bytes(b"old")
        path.chmod(0o644)
        code, _, err = run_cmd("export_tenant", seeded.slug, "-o", str(path))
        assert code == 0, err
        assert mode(path) == 0o600
        validate_archive(path)
    finally:
        os.umask(old_umask)


def test_archive_folders_the_project_makes_are_0700(seeded, tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "new" / "nested" / "acme.tar"
        write_archive(place_of(seeded), seeded, tenant_tables(), path)
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    finally:
        os.umask(old_umask)


def test_a_moves_backup_is_0600_in_a_0700_backup_folder(seeded, settings, cleanup):
    from migration_jobs import services

    old_umask = os.umask(0o022)
    try:
        settings.BACKUP_DIR.mkdir(parents=True, exist_ok=True)
        settings.BACKUP_DIR.chmod(0o755)  # as an older version left it
        cleanup(seeded)
        run = services.request_move(seeded, "schema")
        services.execute(run)
        run.refresh_from_db()
        assert run.status == "succeeded", run.error
        backup = settings.BACKUP_DIR / f"{seeded.slug}-run{run.pk}.tar"
        assert mode(backup) == 0o600
        assert mode(settings.BACKUP_DIR) == 0o700
    finally:
        os.umask(old_umask)


# --- finding 13: the expanded size is capped while streaming --------------------------------

def _bomb(expanded: int) -> bytes:
    """A gzip member starting like a binary COPY stream and expanding to `expanded` bytes,
    made chunk by chunk (never whole in memory)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(COPY_SIGNATURE)
        chunk = bytes(1 << 20)
        left = expanded - len(COPY_SIGNATURE)
        while left > 0:
            gz.write(chunk[:left])
            left -= len(chunk)
    return out.getvalue()


def _with_member(path, out_path, raw: bytes):
    """The archive with its last table's member replaced by `raw` (manifest size and SHA-256
    recomputed: it passes every check but the expansion cap)."""
    import hashlib

    member = validate_archive(path)["tables"][-1]["member"]

    def fix(m):
        entry = next(t for t in m["tables"] if t["member"] == member)
        entry.update(sha256=hashlib.sha256(raw).hexdigest(), compressed_bytes=len(raw))

    return rewrite(path, out_path, members={member: lambda _: raw}, manifest=fix), member


def test_a_gzip_member_expanding_to_a_gib_fails_the_check(exported, tmp_path):
    """The reproduction, with the default settings: ~1 MiB that expands to 1 GiB."""
    _, path, _ = exported
    bomb, member = _with_member(path, tmp_path / "bomb.tar", _bomb(1 << 30))
    err = one_line_refusal(*run_cmd("restore_tenant", str(bomb), "--check"))
    assert f"{member} expands past" in err and "TENANT_ARCHIVE_MAX_EXPANSION_RATIO" in err, err


def test_the_archive_total_expanded_size_is_capped(exported, tmp_path, settings):
    _, path, _ = exported
    with open_archive(path) as tar:  # what the genuine members expand to
        genuine = sum(len(gzip.decompress(tar.extractfile(m).read())) for m in tar.getmembers()
                      if m.name.startswith("data/"))
    settings.TENANT_ARCHIVE_MAX_EXPANDED_BYTES = genuine + (1 << 20)
    validate_archive(path)  # the genuine archive fits
    bomb, _ = _with_member(path, tmp_path / "bomb.tar", _bomb(4 << 20))
    err = one_line_refusal(*run_cmd("restore_tenant", str(bomb), "--check"))
    assert "TENANT_ARCHIVE_MAX_EXPANDED_BYTES" in err, err


def test_restore_streams_are_capped_too(exported, tmp_path, settings):
    """The restore reads each member again: the same cap applies there, while streaming."""
    _, path, _ = exported
    settings.TENANT_ARCHIVE_MAX_EXPANSION_RATIO = 2
    bomb, member = _with_member(path, tmp_path / "bomb.tar", _bomb(200 << 20))
    with open_archive(bomb) as tar:
        stream, _ = open_table_stream(tar, member)
        read = 0
        with pytest.raises(ArchiveError, match="expands past"):
            while chunk := stream.read(1 << 20):
                read += len(chunk)
    assert read <= 64 << 20  # stopped at the allowance, never expanded whole


def test_a_corrupt_bomb_is_still_refused_in_one_line(exported, tmp_path):
    _, path, _ = exported
    raw = _bomb(8 << 20)
    broken = raw[:len(raw) // 2] + bytes(len(raw) - len(raw) // 2)
    bomb, _ = _with_member(path, tmp_path / "broken.tar", broken)
    one_line_refusal(*run_cmd("restore_tenant", str(bomb), "--check"))

