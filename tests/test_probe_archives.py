"""Hostile archives, probed as an attacker would write them (beyond test_hostile_archives and
test_archive): what reading a tar file's headers costs (pax records, GNU long names, the
number of members, sparse members), manifests that are valid JSON only in name (nested
thousands deep, numbers of thousands of digits, fields of the wrong kind) and a manifest
naming another primary key. Each is refused in one line (exit status 2, API 422) with
memory bounded, or restored with the sequences past every restored key."""
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
import tracemalloc

import pytest
from django.conf import settings
from django.test import Client
from psycopg import sql

from migration_jobs.engine.archive import COPY_SIGNATURE
from migration_jobs.engine import archive_read
from migration_jobs.engine.archive_read import validate_archive
from migration_jobs.engine.places import shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.exceptions import ArchiveError
from tenancy.models import Tenant
from tests.helpers import delete_tenant, make_token, rewrite, run_cmd, schema_exists, shared_state, staff_user

SEEDED = {"largest": 200, "seed": 3}  # the conftest `seeded` tenant, small: these tests need few rows

# An empty binary COPY stream: signature, flags, header extension length, trailer.
EMPTY_COPY = COPY_SIGNATURE + b"\0\0\0\0" + b"\0\0\0\0" + b"\xff\xff"
MEMBER = "data/shop_customer.copy.gz"


def manifest_doc(**changes) -> dict:
    """A manifest of the right shape: one empty table (enough to pass validate_archive)."""
    raw = gzip.compress(EMPTY_COPY, mtime=0)
    doc = {"format": "tenant-archive", "format_version": 2, "tenant": {"id": 424242, "slug": "probe_tenant"},
           "migrations": {}, "sequences": {}, "source": {"label": "probe"},
           "tables": [{"name": "shop_customer", "member": MEMBER, "sha256": hashlib.sha256(raw).hexdigest(),
                       "compressed_bytes": len(raw), "rows": 0, "checksum": "0:0000000000000000",
                       "columns": [{"name": "id", "type": "bigint"}, {"name": "tenant_id", "type": "bigint"}]}]}
    doc.update(changes)
    return doc


def write_tar(path, members, *, head: bytes = b""):
    """A tar file of (name, bytes) members, after `head` (raw header blocks written first)."""
    with open(path, "wb") as out:
        out.write(head)
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def archive_members(manifest: bytes, data: bytes | None = None):
    """The members of an archive: its table member, manifest.sha256 and manifest.json."""
    data = gzip.compress(EMPTY_COPY, mtime=0) if data is None else data
    return [(MEMBER, data), ("manifest.sha256", f"{hashlib.sha256(manifest).hexdigest()}  manifest.json\n".encode()),
            ("manifest.json", manifest)]


def refused(path, *args, kind="invalid archive"):
    """The one `error:` line of `restore_tenant FILE --check` (exit status 2)."""
    code, out, err = run_cmd("restore_tenant", str(path), *(args or ["--check"]))
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {kind}"), err
    return err


def peak_bytes(func) -> int:
    """The peak of Python allocations while `func` runs."""
    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def refused_within(path, limit: int) -> str:
    """validate_archive's ArchiveError, allocating less than `limit` bytes on the way."""
    message = []

    def check():
        with pytest.raises(ArchiveError) as exc:
            validate_archive(path)
        message.append(str(exc.value))

    peak = peak_bytes(check)
    assert peak < limit, (peak, message)
    return message[0]


# --- the manifest: JSON that only looks like one ----------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("manifest, message", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    (b'{"format": "tenant-archive", "format_version": ' + b"9" * 5000 + b"}", "not valid JSON"),
])
def test_a_manifest_nested_too_deeply_or_with_a_huge_number_is_refused_in_one_line(tmp_path, manifest, message):
    """Before: RecursionError / ValueError escaped validate_archive (a traceback, exit 1; the
    API answered 500)."""
    path = write_tar(tmp_path / "bad.tar", archive_members(manifest))
    assert message in refused(path)


@pytest.mark.django_db
def test_a_manifest_whose_source_is_not_an_object_is_refused_in_one_line(tmp_path):
    """Before: AttributeError ('str' object has no attribute 'get') after the plan."""
    manifest = json.dumps(manifest_doc(source="somewhere")).encode()
    path = write_tar(tmp_path / "bad.tar", archive_members(manifest))
    assert "source not an object" in refused(path)


ESCAPE = "\x1b]0;owned\x07\x1b[2J"  # a terminal title and a cleared screen, if printed as they are


def with_escapes(doc):
    doc["tables"][0]["columns"].append({"name": ESCAPE + "c" * 100_000, "type": "text"})


@pytest.mark.django_db
@pytest.mark.parametrize("change, members, args, message", [
    (lambda d: d.update(format=ESCAPE + "x" * 100_000), [], (), "not a tenant archive (format"),
    (lambda d: d["migrations"].update(shop=ESCAPE + "x" * 100_000), [], (), "archive was written at migration"),
    (lambda d: d["tenant"].update(slug=ESCAPE + "x" * 100_000), [], (), "invalid tenant slug"),
    (None, [(ESCAPE + "y" * 5000, b"")], (), "members the manifest does not list"),
    (with_escapes, [], ("--into", "shared"), "is in the archive but not in"),
], ids=["format", "migration", "slug", "member", "column"])
def test_values_from_the_archive_are_quoted_escaped_and_short_in_errors(tmp_path, change, members, args, message):
    """Before: quoted whole and raw: a 100 kB error line (up to the 16 MiB a manifest may hold,
    also the API's answer) carrying terminal escape sequences to the operator's terminal."""
    doc = manifest_doc()
    if change:
        change(doc)
    path = write_tar(tmp_path / "noisy.tar", members + archive_members(json.dumps(doc).encode()))
    err = refused(path, *args, kind="")
    assert message in err and "\x1b" not in err and "\x07" not in err and len(err) < 800, err[:300]


@pytest.mark.django_db(transaction=True)
def test_the_api_answers_422_for_a_deeply_nested_manifest_and_leaves_no_upload_behind(tmp_path):
    path = write_tar(tmp_path / "bad.tar", archive_members(b"[" * 100_000 + b"]" * 100_000))
    token = make_token(staff_user("prober", superuser=True))
    before = shared_state(), set(os.listdir(tempfile.gettempdir()))
    response = Client().post("/api/admin/tenants/restore", path.read_bytes(), content_type="application/x-tar",
                             headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 422, response.content
    assert "nested too deeply" in response.json()["error"]
    assert not {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("tenant-restore-")} - before[1]
    assert shared_state() == before[0]


# --- tar headers: read with bounded memory ------------------------------------------------

def pax_header(size: int) -> bytes:
    """A pax extended header of `size` bytes of distinct records (tarfile parses each into a
    dict entry), padded to whole blocks."""
    body, i = io.BytesIO(), 0
    while body.tell() < size:
        record = f" k{i}=v\n"
        length = len(record) + len(str(len(record)))
        length = len(record) + len(str(length))  # the length counts its own digits
        body.write(f"{length}{record}".encode())
        i += 1
    data = body.getvalue()
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def gnu_long_name(size: int) -> bytes:
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, size
    return info.tobuf(tarfile.GNU_FORMAT) + b"a" * size + bytes(-size % tarfile.BLOCKSIZE)


@pytest.mark.parametrize("head", [pax_header, gnu_long_name], ids=["pax", "gnu-long-name"])
def test_extended_tar_headers_are_refused_before_they_are_read_whole(tmp_path, head):
    """Before: tarfile read a 24 MiB header whole into memory (a 150 MiB pax header of distinct
    records took 1.9 GB and 40 s; uploads may be 512 MiB)."""
    path = write_tar(tmp_path / "big-header.tar", archive_members(json.dumps(manifest_doc()).encode()),
                     head=head(24 << 20))
    assert "extended tar headers larger than" in refused_within(path, 4 << 20)


def test_the_number_of_members_is_bounded_while_the_headers_are_read(tmp_path):
    """Before: every header was read and kept (1M empty members, a 488 MiB file: 556 MB, 38 s)."""
    limit = getattr(archive_read, "MAX_MEMBERS", 1000)
    junk = b"".join(tarfile.TarInfo(f"junk/{i}").tobuf(tarfile.USTAR_FORMAT) for i in range(limit * 20))
    path = write_tar(tmp_path / "many.tar", archive_members(json.dumps(manifest_doc()).encode()), head=junk)
    assert f"more than {limit} members" in refused_within(path, 4 << 20)


def sparse_member(version: str, data: bytes, realsize: int) -> bytes:
    """A sparse MEMBER (GNU pax formats 0.1 and 1.0): `data` then holes up to `realsize` bytes,
    which a reader expands to zeros."""
    info = tarfile.TarInfo(MEMBER)
    if version == "0.1":
        info.pax_headers = {"GNU.sparse.map": f"0,{len(data)}", "GNU.sparse.realsize": str(realsize)}
        stored = data
    else:
        info.name = "GNUSparseFile.0/shop_customer.copy.gz"
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": MEMBER,
                            "GNU.sparse.realsize": str(realsize)}
        sparse_map = f"1\n0\n{len(data)}\n".encode()
        stored = sparse_map + bytes(-len(sparse_map) % tarfile.BLOCKSIZE) + data
    info.size = len(stored)
    return info.tobuf(tarfile.PAX_FORMAT) + stored + bytes(-len(stored) % tarfile.BLOCKSIZE)


@pytest.mark.django_db
@pytest.mark.parametrize("version", ["0.1", "1.0"])
def test_a_sparse_member_is_refused_without_expanding_its_holes(tmp_path, version):
    """Before: a few KiB whose member declared 1 TB of holes was read (zeros hashed, gzip padding
    skipped byte by byte: ~0.4 s per MB, days of CPU for one upload)."""
    data = gzip.compress(EMPTY_COPY, mtime=0)
    realsize = 4 << 20
    manifest = manifest_doc()
    manifest["tables"][0].update(compressed_bytes=realsize,
                                 sha256=hashlib.sha256(data + bytes(realsize - len(data))).hexdigest())
    raw = json.dumps(manifest).encode()
    path = write_tar(tmp_path / "sparse.tar", archive_members(raw)[1:], head=sparse_member(version, data, realsize))
    started = time.monotonic()
    assert "sparse member" in refused(path)
    assert time.monotonic() - started < 1


# --- the manifest names the primary key: not trusted ----------------------------------------

POSITION = "SELECT coalesce(pg_sequence_last_value(%s::regclass), 0)"

@pytest.mark.django_db(transaction=True)
def test_a_manifest_naming_another_primary_key_does_not_keep_sequences_behind_restored_keys(exported, tmp_path):
    """A leaf row's key is one the shared sequence has not handed out yet. Restored with an
    honest manifest, the sequence is set past it. Before: a manifest saying `"pk": "tenant_id"`
    for that table (digest recomputed) made the restore check max(tenant_id) and find no
    sequence, so the shared sequence stayed behind the key and other tenants' inserts would
    collide with it."""
    tenant, path, _ = exported
    leaf = next(t for t in reversed(tenant_tables()) if not any(t.name in o.parents for o in tenant_tables()))
    place = shared_place()
    with place.connect() as conn:
        seq = conn.execute("SELECT pg_get_serial_sequence(%s, %s)", (f"public.{leaf.name}", leaf.pk)).fetchone()[0]
        ahead = conn.execute(POSITION, (seq,)).fetchone()[0] + 50
        conn.execute(sql.SQL("UPDATE {t} SET {pk} = %s WHERE {pk} = (SELECT min({pk}) FROM {t} WHERE tenant_id = %s)"
                             ).format(t=place.table(leaf.name), pk=sql.Identifier(leaf.pk)), (ahead, tenant.pk))
        conn.commit()
    exported_path = tmp_path / "ahead.tar"
    code, _, err = run_cmd("export_tenant", tenant.slug, "-o", str(exported_path))
    assert code == 0, err
    hostile = rewrite(exported_path, tmp_path / "pk-lie.tar", manifest=lambda m: next(
        t for t in m["tables"] if t["name"] == leaf.name).update(pk="tenant_id"))
    delete_tenant(tenant)
    code, _, err = run_cmd("restore_tenant", str(hostile))
    assert code == 0, err
    with place.connect() as conn:
        position = conn.execute(POSITION, (seq,)).fetchone()[0]
    assert position >= ahead


# --- gzip members: strict and fast ---------------------------------------------------------

def archive_with_member(tmp_path, name: str, raw: bytes):
    doc = manifest_doc()
    doc["tables"][0].update(sha256=hashlib.sha256(raw).hexdigest(), compressed_bytes=len(raw))
    return write_tar(tmp_path / name, archive_members(json.dumps(doc).encode(), raw))


@pytest.mark.django_db
def test_zero_padding_after_a_gzip_member_is_refused_without_reading_it_byte_by_byte(tmp_path):
    """Before: Python's gzip skipped the zeros one read(1) at a time (~0.3 s per MB: minutes of
    CPU for a 512 MiB upload, twice: validation, then the restore) and accepted the member."""
    padded = archive_with_member(tmp_path, "padded.tar", gzip.compress(EMPTY_COPY, mtime=0) + bytes(4 << 20))
    started = time.monotonic()
    assert "data after the end of the gzip stream" in refused(padded)
    assert time.monotonic() - started < 1
    # Concatenated members are still one gzip stream (what `cat a.gz b.gz` or pigz may give).
    split = gzip.compress(EMPTY_COPY[:5], mtime=0) + gzip.compress(b"", mtime=0) + gzip.compress(EMPTY_COPY[5:])
    assert validate_archive(archive_with_member(tmp_path, "members.tar", split))["tables"][0]["rows"] == 0
    for damaged in (gzip.compress(EMPTY_COPY, mtime=0)[:-3], b"PGCOPY not gzip", b""):
        with pytest.raises(ArchiveError, match="is damaged|not a binary COPY"):
            validate_archive(archive_with_member(tmp_path, "damaged.tar", damaged))


# --- binary COPY data the server refuses: an invalid archive, not a conflict ----------------

def with_copy_stream(path, out_path, change):
    """The archive with its last table's COPY stream changed by `change(bytes)` (size and
    SHA-256 recomputed: it passes validate_archive, the server refuses it)."""
    with tarfile.open(path) as tar:
        member = json.load(tar.extractfile("manifest.json"))["tables"][-1]["member"]
        raw = gzip.compress(change(gzip.decompress(tar.extractfile(member).read())), mtime=0)

    def fix(manifest):
        next(t for t in manifest["tables"] if t["member"] == member).update(
            sha256=hashlib.sha256(raw).hexdigest(), compressed_bytes=len(raw))

    return rewrite(path, out_path, members={member: lambda _: raw}, manifest=fix)


HEADER = len(COPY_SIGNATURE) + 8  # signature, flags, header extension length (0)


@pytest.mark.django_db(transaction=True)
def test_copy_data_the_server_refuses_is_an_invalid_archive_for_the_command_and_the_api(exported, tmp_path, cleanup):
    """Before: 'restore failed and was rolled back: row field count is 8, expected 7', answered
    409 Conflict by the API (the archive is bad, not the state here: 422, as README says)."""
    tenant, path, _ = exported
    cleanup("probe_copy")

    def one_more_field(stream):  # the first row says it has one more field than it holds
        count = int.from_bytes(stream[HEADER:HEADER + 2], "big")
        return stream[:HEADER] + (count + 1).to_bytes(2, "big") + stream[HEADER + 2:]

    bad = with_copy_stream(path, tmp_path / "fields.tar", one_more_field)
    trailing = with_copy_stream(path, tmp_path / "trailing.tar", lambda s: s + b"more")
    before = shared_state()
    err = refused(bad, "--as", "probe_copy", "--into", "schema")
    assert "is not valid binary COPY data for" in err and "row field count" in err, err
    token = make_token(staff_user("prober", superuser=True))
    response = Client().post("/api/admin/tenants/restore?as=probe_copy&into=schema", trailing.read_bytes(),
                             content_type="application/x-tar", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 422, response.content
    assert "received copy data after EOF marker" in response.json()["error"]
    assert shared_state() == before and not Tenant.objects.filter(slug="probe_copy").exists()
    assert not schema_exists(f"{settings.TENANT_SCHEMA_PREFIX}probe_copy")


# --- two restores of one archive at once -----------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("into", ["shared", "schema", "database"])
def test_a_restore_planned_before_another_made_the_place_never_drops_it(exported, cleanup, into):
    """Two uploads of one archive as a new tenant, planned at once: both saw no schema or
    database. Before: the second reused the place the first made (resetting the database
    role's password), failed on the first's rows, and dropped the place: the first tenant,
    restored and committed, lived in a schema or database that no longer existed. (Into the
    shared tables, the tenant row refused by the model escaped as a ValidationError: a
    traceback, API 500.)"""
    from migration_jobs.engine import provision
    from migration_jobs.engine.restore import _restore_database, _restore_default
    from migration_jobs.engine.restore_plan import archive_tables, make_plan
    from migration_jobs.exceptions import RestoreConflict
    from migration_jobs.services.validation import reachable_server
    from shop.models import Customer
    from tenancy.context import tenant_context

    tenant, path, before = exported
    cleanup("probe_race")
    if into == "shared":  # the archive's keys are free in the shared tables only once it is gone
        delete_tenant(tenant)
    manifest = validate_archive(path)
    late = make_plan(manifest, into=into, as_slug="probe_race", resolve_server=reachable_server)
    code, _, err = run_cmd("restore_tenant", str(path), "--as", "probe_race", "--into", into)
    assert code == 0, err
    first = Tenant.objects.get(slug="probe_race")
    state = shared_state()
    run = _restore_database if into == "database" else _restore_default
    with pytest.raises(RestoreConflict, match="was made .*meanwhile|already exists"):
        run(late, path, archive_tables(manifest), None)
    assert shared_state() == state
    if into == "database":
        assert provision.database_exists(first.credential.server, first.database_name)
    with tenant_context(Tenant.objects.get(pk=first.pk)):  # its place and its credential still work
        assert Customer.objects.count() == len(before["shop_customer"])
