"""AES-256-GCM encryption of stored secrets under TENANT_ENCRYPTION_KEY.

A token is `v1:<key id>:<base64(nonce + ciphertext + tag)>`; the key id names the key that
made it (rotation), and a context string bound as associated data ties it to one field.
Error messages never hold a secret, a key or a token.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from tenancy.exceptions import DecryptionError

KEY_SETTING = "TENANT_ENCRYPTION_KEY"
OLD_KEYS_SETTING = "TENANT_ENCRYPTION_OLD_KEYS"
VERSION = "v1"
CREDENTIAL_CONTEXT = "tenancy.DatabaseCredential.password"
SERVER_CONTEXT = "tenancy.DatabaseServer.admin_password"
HOW_TO_MAKE_ONE = ('generate one with: python -c "import secrets; print(secrets.token_hex(32))" '
                   "and put it in the environment or in .env")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def generate_key() -> str:
    return secrets.token_hex(32)


def key_id(hex_key: str) -> str:
    return hashlib.sha256(bytes.fromhex(hex_key)).hexdigest()[:8]


def validate_key(value: str, name: str = KEY_SETTING) -> bytes:
    if not value:
        raise ImproperlyConfigured(f"{name} is not set; it must be 64 hex characters (32 bytes). {HOW_TO_MAKE_ONE}")
    if not _HEX64.match(value.strip()):
        raise ImproperlyConfigured(
            f"{name} is malformed: it must be exactly 64 hex characters (0-9, a-f; 32 bytes), "
            f"got {len(value.strip())} characters. {HOW_TO_MAKE_ONE}")
    return bytes.fromhex(value.strip())


@lru_cache(maxsize=8)
def _keyring(current: str, old: tuple[str, ...]) -> tuple[tuple[str, AESGCM], dict[str, AESGCM]]:
    current_raw = validate_key(current)  # before key_id(): fromhex would fail first, naming nothing
    primary = (key_id(current), AESGCM(current_raw))
    by_id = {primary[0]: primary[1]}
    for index, value in enumerate(old):
        raw = validate_key(value, f"{OLD_KEYS_SETTING}[{index}]")
        by_id.setdefault(key_id(value.strip()), AESGCM(raw))
    return primary, by_id


def keyring():
    """(current key id, cipher), {key id: cipher} from settings; raises ImproperlyConfigured."""
    return _keyring(settings.TENANT_ENCRYPTION_KEY.strip(),
                    tuple(k.strip() for k in settings.TENANT_ENCRYPTION_OLD_KEYS if k.strip()))


def current_key_id() -> str:
    return keyring()[0][0]


def encrypt(plaintext: str, *, context: str) -> str:
    (kid, cipher), _ = keyring()
    nonce = os.urandom(12)
    sealed = cipher.encrypt(nonce, plaintext.encode("utf-8"), context.encode())
    return f"{VERSION}:{kid}:{base64.b64encode(nonce + sealed).decode('ascii')}"


def token_key_id(token: str) -> str | None:
    parts = token.split(":", 2)
    return parts[1] if len(parts) == 3 and parts[0] == VERSION else None


def decrypt(token: str, *, context: str) -> str:
    kid = token_key_id(token)
    if kid is None:
        raise DecryptionError(f"not an encrypted value of format {VERSION}")
    _, by_id = keyring()
    cipher = by_id.get(kid)
    if cipher is None:
        raise DecryptionError(f"value was encrypted with key {kid}, which is neither {KEY_SETTING} "
                              f"nor in {OLD_KEYS_SETTING}")
    try:
        raw = base64.b64decode(token.split(":", 2)[2], validate=True)
        return cipher.decrypt(raw[:12], raw[12:], context.encode()).decode("utf-8")
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError(f"value under key {kid} failed authentication (tampered or wrong field)") from exc


def needs_rotation(token: str) -> bool:
    return bool(token) and token_key_id(token) != current_key_id()
