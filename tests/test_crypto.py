"""Encryption of stored secrets: tokens, startup checks of the key, and key rotation."""
import os
import stat
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from tenancy import crypto
from tenancy.management.commands.rotate_encryption_key import read_env_keys
from tenancy.models import DatabaseCredential, DatabaseServer, Tenant

KEY_A = crypto.generate_key()
KEY_B = crypto.generate_key()
SERVER_SECRET = "server-pw-Zq81"
CREDENTIAL_SECRET = "cred-pw-Hk27"


def keys(current, *old):
    return override_settings(TENANT_ENCRYPTION_KEY=current, TENANT_ENCRYPTION_OLD_KEYS=list(old))


@pytest.fixture(autouse=True)
def settings_untouched():
    before = (settings.TENANT_ENCRYPTION_KEY, list(settings.TENANT_ENCRYPTION_OLD_KEYS))
    yield
    crypto._keyring.cache_clear()
    assert (settings.TENANT_ENCRYPTION_KEY, list(settings.TENANT_ENCRYPTION_OLD_KEYS)) == before


def run(*args):
    """call_command, returning (exit code, stdout + error message)."""
    from io import StringIO

    out = StringIO()
    try:
        call_command(*args, stdout=out)
        return 0, out.getvalue()
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)


# --- Tokens -------------------------------------------------------------------------------

def test_round_trip():
    token = crypto.encrypt("s3cret é", context=crypto.CREDENTIAL_CONTEXT)
    assert token.startswith(f"v1:{crypto.current_key_id()}:")
    assert "s3cret" not in token
    assert crypto.decrypt(token, context=crypto.CREDENTIAL_CONTEXT) == "s3cret é"
    # A fresh nonce each time: equal secrets do not give equal tokens.
    assert crypto.encrypt("s3cret é", context=crypto.CREDENTIAL_CONTEXT) != token


def test_token_under_another_key_fails_without_leaking():
    with keys(KEY_A):
        token = crypto.encrypt(CREDENTIAL_SECRET, context=crypto.CREDENTIAL_CONTEXT)
    with keys(KEY_B):
        with pytest.raises(crypto.DecryptionError) as info:
            crypto.decrypt(token, context=crypto.CREDENTIAL_CONTEXT)
    message = str(info.value)
    assert crypto.key_id(KEY_A) in message  # says which key it needs...
    for leak in (CREDENTIAL_SECRET, KEY_A, KEY_B, token, token.split(":")[2]):
        assert leak not in message  # ...but no secret, key or token


def test_tampered_token_fails():
    token = crypto.encrypt(CREDENTIAL_SECRET, context=crypto.CREDENTIAL_CONTEXT)
    prefix, body = token.rsplit(":", 1)
    flipped = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    with pytest.raises(crypto.DecryptionError) as info:
        crypto.decrypt(f"{prefix}:{flipped}", context=crypto.CREDENTIAL_CONTEXT)
    assert body not in str(info.value) and flipped not in str(info.value)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt("plain text", context=crypto.CREDENTIAL_CONTEXT)


def test_token_is_bound_to_its_context():
    token = crypto.encrypt(CREDENTIAL_SECRET, context=crypto.CREDENTIAL_CONTEXT)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(token, context=crypto.SERVER_CONTEXT)


# --- Startup ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["", "abc", "g" * 64])
def test_missing_or_malformed_key_stops_startup(value):
    # settings read .env without overwriting: an explicitly set (empty or bad) value wins.
    env = {**os.environ, "TENANT_ENCRYPTION_KEY": value}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=settings.BASE_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "TENANT_ENCRYPTION_KEY" in result.stderr
    assert "secrets.token_hex(32)" in result.stderr  # tells how to make one
    if value:
        assert "malformed" in result.stderr
        assert value not in result.stderr or value == "abc"  # "abc" is too short to grep for
    else:
        assert "is not set" in result.stderr


# --- Rotation -----------------------------------------------------------------------------

@pytest.fixture
def rows_under_a(db):
    """A server and a credential encrypted under key A, and no other stored secret."""
    DatabaseCredential.objects.all().delete()
    DatabaseServer.objects.update(admin_password_encrypted="")
    with keys(KEY_A):
        server = DatabaseServer(name="rot", host="db.example", admin_user="postgres")
        server.set_admin_password(SERVER_SECRET)
        server.save()
        tenant = Tenant(slug="rot", name="Rotation")
        tenant.save()
        credential = DatabaseCredential(tenant=tenant, server=server, database="tenant_rot", role="tenant_rot")
        credential.set_password(CREDENTIAL_SECRET)
        credential.save()
    return server, credential


def tokens(server, credential):
    server.refresh_from_db()
    credential.refresh_from_db()
    return server.admin_password_encrypted, credential.password_encrypted


def assert_readable(server, credential):
    server.refresh_from_db()
    credential.refresh_from_db()
    assert server.admin_password() == SERVER_SECRET
    assert credential.password() == CREDENTIAL_SECRET


def test_rotation_end_to_end(rows_under_a):
    server, credential = rows_under_a
    with keys(KEY_B, KEY_A):
        code, out = run("rotate_encryption_key", "--check")
        assert code == 1
        assert f"DatabaseServer pk={server.pk}" in out and f"DatabaseCredential pk={credential.pk}" in out

        code, out = run("rotate_encryption_key")
        assert code == 0
        assert "2 secret(s) re-encrypted, 0 already current" in out
        for leak in (SERVER_SECRET, CREDENTIAL_SECRET, KEY_A, KEY_B):
            assert leak not in out
        assert all(crypto.token_key_id(t) == crypto.key_id(KEY_B) for t in tokens(server, credential))
        assert_readable(server, credential)

        assert run("rotate_encryption_key")[1].startswith(f"Key {crypto.key_id(KEY_B)}: 0 secret(s) "
                                                          "re-encrypted, 2 already current")
        assert run("rotate_encryption_key", "--check")[0] == 0
    with keys(KEY_B):  # the old key can go
        assert_readable(server, credential)


def test_rotation_refuses_unreadable_secret_and_changes_nothing(rows_under_a):
    server, credential = rows_under_a
    before = tokens(server, credential)
    with keys(KEY_B):  # A forgotten: nothing can be decrypted
        code, out = run("rotate_encryption_key")
    assert code == 2 and "Nothing was changed" in out and KEY_A not in out  # refused: the contract's 2
    assert tokens(server, credential) == before


def write_env(path, text):
    path.write_text(text)
    path.chmod(0o644)


def test_generate_into_env_file(rows_under_a, tmp_path):
    server, credential = rows_under_a
    env_file = tmp_path / ".env"
    write_env(env_file, f"# keep me\nDJANGO_SECRET_KEY=abc\nexport TENANT_ENCRYPTION_KEY={KEY_A}\nOTHER=1")
    with keys(KEY_A):
        code, out = run("rotate_encryption_key", "--generate-into", str(env_file))
        assert code == 0, out
        assert settings.TENANT_ENCRYPTION_KEY == KEY_A  # the command's keyring did not leak out

    new_key, old_keys = read_env_keys(env_file)
    assert new_key not in (KEY_A, "") and len(new_key) == 64 and old_keys == [KEY_A]
    assert new_key not in out and KEY_A not in out
    lines = env_file.read_text().splitlines()
    assert lines[:2] == ["# keep me", "DJANGO_SECRET_KEY=abc"] and "OTHER=1" in lines
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [".env"]  # no temp file left behind

    assert all(crypto.token_key_id(t) == crypto.key_id(new_key) for t in tokens(server, credential))
    with keys(new_key):
        assert_readable(server, credential)


def test_generate_into_is_crash_safe(rows_under_a, tmp_path, monkeypatch):
    """Dying after the env file is written loses nothing: it holds both keys."""
    server, credential = rows_under_a
    env_file = tmp_path / ".env"
    write_env(env_file, f"TENANT_ENCRYPTION_KEY={KEY_A}\n")

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(crypto, "encrypt", crash)
    with keys(KEY_A), pytest.raises(RuntimeError):
        call_command("rotate_encryption_key", "--generate-into", str(env_file))
    monkeypatch.undo()

    new_key, old_keys = read_env_keys(env_file)
    assert old_keys == [KEY_A]
    with keys(new_key, *old_keys):  # what the next start would load
        assert_readable(server, credential)
        assert run("rotate_encryption_key")[0] == 0
    with keys(new_key):
        assert_readable(server, credential)


def test_generate_into_refuses_a_file_that_is_not_the_key_source(rows_under_a, tmp_path):
    env_file = tmp_path / ".env"
    write_env(env_file, f"TENANT_ENCRYPTION_KEY={KEY_B}\n")
    with keys(KEY_A):
        code, out = run("rotate_encryption_key", "--generate-into", str(env_file))
    assert code == 2 and "Nothing was changed" in out  # refused: the contract's 2
    assert env_file.read_text() == f"TENANT_ENCRYPTION_KEY={KEY_B}\n"
