"""A move's archive is made from its copy's stream (engine/archive.py PartWriter, the copy
step's tee, the backup step's assembly): the source is read once, and the archive is as valid
as an export (validate_archive, restore round trips), after a killed worker too, offline and
online; where the copy gave no usable stream the backup step exports as before."""
import gzip
import hashlib
import json
import os
import stat

import pytest
from django.conf import settings
from django.utils import timezone

from migration_jobs import services
from migration_jobs.engine import provision
from migration_jobs.engine.archive import PartWriter, parts_dir
from migration_jobs.engine.archive_read import validate_archive
from migration_jobs.engine.places import place_of, shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.models import RunStatus
from migration_jobs.runs import executor
from migration_jobs.runs.plans import MOVE_STEPS, ONLINE_MOVE_STEPS
from shop.models import Customer
from tenancy.context import tenant_context
from tenancy.models import Tenant
from tests.helpers import crash_move, fingerprints, run_cmd, snapshot

pytestmark = pytest.mark.django_db(transaction=True)

SEEDED = {"largest": 2500, "seed": 13}


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def archive_of(run):
    backup = run.steps.get(name="backup")
    return backup, backup.details["path"]


def restored_copy(path, cleanup, slug="tee_copy"):
    """The archive restored as a new tenant in a fresh schema: its rows, without tenant_id."""
    cleanup(slug)
    code, out, err = run_cmd("restore_tenant", str(path), "--as", slug, "--into", "schema")
    assert code == 0, err
    copy = Tenant.objects.get(slug=slug)
    return snapshot(place_of(copy), copy.pk, without_tenant=True)


def without_tenant(rows_by_table):
    out = {}
    for spec in tenant_tables():
        keep = [i for i, c in enumerate(spec.columns) if c != "tenant_id"]
        out[spec.name] = [tuple(row[i] for i in keep) for row in rows_by_table[spec.name]]
    return out


def test_the_backup_comes_after_the_copy_in_moves_out():
    names = [s.name for s in MOVE_STEPS]
    assert names.index("backup") > names.index("verify") > names.index("copy")
    assert names.index("backup") < names.index("switch")
    online = [s.name for s in ONLINE_MOVE_STEPS]
    assert online.index("copy") < online.index("backup") < online.index("catch_up")


@pytest.mark.parametrize("target", ["database", "schema"])
def test_an_offline_move_archives_the_copys_stream_and_the_archive_restores(seeded, made_places, cleanup, target):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    run = services.execute(services.request_move(tenant, target))
    assert run.status == RunStatus.SUCCEEDED, run.error
    made_places.append(("schema", run.target_schema) if target == "schema" else
                       ("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    cleanup(tenant)
    backup, path = archive_of(run)
    assert backup.details["made"] == "from the copy's stream", backup.details
    assert "not_from_copy" not in backup.details
    assert not parts_dir(path).exists()  # assembled, then removed
    assert mode(path) == 0o600
    manifest = validate_archive(path)
    verified = run.report["verify"]["tables"]
    copied = run.steps.get(name="copy").details["tables"]
    for entry in manifest["tables"]:
        assert entry["rows"] == verified[entry["name"]]["target_rows"] == len(before[entry["name"]])
        assert entry["checksum"] == verified[entry["name"]]["target_checksum"]
        assert entry["sha256"] == copied[entry["name"]]["part"]["sha256"]
    assert [t["name"] for t in manifest["tables"]] == [t.name for t in tenant_tables()]
    assert manifest["tenant"]["id"] == tenant.pk and manifest["migrations"] == {"shop": "0001_initial"}
    assert restored_copy(path, cleanup) == without_tenant(before)  # every row, value for value


def test_a_worker_killed_in_the_copy_keeps_finished_parts_and_the_resumed_archive_restores(
        seeded, made_places, cleanup):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    run = crash_move(tenant, "database", "copy:shop_device")
    made_places.append(("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    cleanup(tenant)
    folder = parts_dir(settings.BACKUP_DIR / f"{tenant.slug}-run{run.pk}.tar")
    assert mode(folder) == 0o700
    copied = run.steps.get(name="copy").details["tables"]
    assert "shop_device" in copied  # the kill came right after it committed
    kept = {}
    for name, entry in copied.items():
        part = entry["part"]
        assert mode(part["path"]) == 0o600
        with open(part["path"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == part["sha256"]
        kept[name] = part["sha256"]
    assert not list(folder.glob("*.partial"))  # the killed table's part was never half-kept

    resumed = services.execute(services.resumable_run(tenant), resume=True)
    assert resumed.status == RunStatus.SUCCEEDED, resumed.error
    backup, path = archive_of(resumed)
    assert backup.details["made"] == "from the copy's stream"
    after = resumed.steps.get(name="copy").details["tables"]
    assert {name: after[name]["part"]["sha256"] for name in kept} == kept  # not copied again
    assert {e["part"]["attempt"] for e in after.values()} == {1, 2}
    validate_archive(path)
    assert restored_copy(path, cleanup) == without_tenant(before)


def test_an_online_move_archives_the_rows_copied_not_the_changes_caught_up_later(seeded, made_places, cleanup):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    run = crash_move(tenant, "database", "after:copy", online=True)
    made_places.append(("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    cleanup(tenant)
    # The tenant keeps writing (online): after the copy, before the archive is made.
    with tenant_context(tenant):
        Customer.objects.create(first_name="After", last_name="Copy", created_at=timezone.now())
    resumed = services.execute(services.resumable_run(tenant), resume=True)
    assert resumed.status == RunStatus.SUCCEEDED, resumed.error
    backup, path = archive_of(resumed)
    assert backup.details["made"] == "from the copy's stream", backup.details
    # The archive holds exactly what was copied, its checksums those rows'.
    assert restored_copy(path, cleanup) == without_tenant(before)
    tenant.refresh_from_db()
    with tenant_context(tenant):  # and the move itself lost nothing (catch-up applied the change)
        assert Customer.objects.filter(first_name="After", last_name="Copy").count() == 1


def test_an_online_copy_resumed_from_another_snapshot_is_exported_instead(seeded, made_places, cleanup):
    tenant = seeded
    run = crash_move(tenant, "schema", "copy:shop_device", online=True)
    made_places.append(("schema", run.target_schema))
    cleanup(tenant)
    resumed = services.execute(services.resumable_run(tenant), resume=True)
    assert resumed.status == RunStatus.SUCCEEDED, resumed.error
    backup, path = archive_of(resumed)
    assert "different snapshots" in backup.details["not_from_copy"]
    assert backup.details["made"].startswith("read from")
    assert not parts_dir(path).exists()
    manifest = validate_archive(path)
    fps = fingerprints(shared_place(), tenant.pk)  # nothing wrote meanwhile
    assert {t["name"]: t["checksum"] for t in manifest["tables"]} == {n: fp.checksum for n, fp in fps.items()}


def test_a_damaged_part_means_a_fresh_export(seeded, made_places, cleanup):
    tenant = seeded
    before = snapshot(shared_place(), tenant.pk)
    run = crash_move(tenant, "database", "after:verify")
    made_places.append(("database", run.target_server, run.target_database, provision.role_name(run.target_database)))
    cleanup(tenant)
    part = run.steps.get(name="copy").details["tables"]["shop_customer"]["part"]
    with open(part["path"], "r+b") as f:  # same size, other bytes
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(bytes([byte[0] ^ 0xFF]))
    resumed = services.execute(services.resumable_run(tenant), resume=True)
    assert resumed.status == RunStatus.SUCCEEDED, resumed.error
    backup, path = archive_of(resumed)
    assert "SHA-256" in backup.details["not_from_copy"] and backup.details["made"].startswith("read from")
    assert not os.path.exists(str(path) + ".partial")
    validate_archive(path)
    assert restored_copy(path, cleanup) == without_tenant(before)


def test_a_failed_move_removes_its_parts(seeded):
    tenant = seeded
    from migration_jobs.runs.faults import Faults

    run = executor.execute(services.request_move(tenant, "schema").pk, faults=Faults({"after:copy": RuntimeError}))
    assert run.status == RunStatus.ROLLED_BACK, run.error
    assert not parts_dir(settings.BACKUP_DIR / f"{tenant.slug}-run{run.pk}.tar").exists()
    assert "archive parts removed" in run.steps.get(name="copy").message


def test_a_part_is_the_gzip_of_what_it_was_given_and_an_aborted_one_leaves_nothing(tmp_path):
    blocks = [os.urandom(1000) + bytes(300_000) for _ in range(7)]
    part = PartWriter(tmp_path / "p", "shop_x")
    for block in blocks:
        part.write(bytearray(block))
    result = part.finish()
    data = open(result["path"], "rb").read()
    assert gzip.decompress(data) == b"".join(blocks)
    assert result["sha256"] == hashlib.sha256(data).hexdigest() and result["compressed_bytes"] == len(data)
    assert mode(tmp_path / "p") == 0o700 and mode(result["path"]) == 0o600

    aborted = PartWriter(tmp_path / "p", "shop_y")
    for block in blocks:
        aborted.write(bytearray(block))
    aborted.abort()
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["shop_x.copy.gz"]
    json.dumps(result)  # recorded in the step's details as it is
