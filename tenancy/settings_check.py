"""Tenant settings never hold credentials: a key that names one (password, token, api key,
...) or a string that is a URL with a password is refused wherever settings are written (the
API, the admin's tenant form, a restored archive). Paths are reported, never values."""
from __future__ import annotations

import re

# Keys that would hold credentials: never accepted (credentials are made by provisioning).
# Matched on the key with case and separators removed (`api_key`, `apiKey`, `API-KEY` alike)...
SECRET_KEY_PARTS = ("password", "passwd", "passphrase", "secret", "apikey", "privatekey", "credential",
                    "connectionstring", "accesskey", "authtoken", "accesstoken", "clientsecret")
# ...and on its words (`db_pwd`, `authToken`, `dsn`): whole words, so `max_tokens` or `compass` pass.
SECRET_KEY_WORDS = {"pwd", "pass", "token", "dsn", "secret", "credentials", "creds"}
WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
# A URL with a password in it: scheme://user:password@host
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#@\s:]*:[^/?#@\s]*@", re.I)
def is_secret_key(key) -> bool:
    """True for a settings key that names a credential (password, token, api key, ...)."""
    text = str(key)
    flat = re.sub(r"[^a-z0-9]", "", text.lower())
    return any(part in flat for part in SECRET_KEY_PARTS) or \
        any(word.lower() in SECRET_KEY_WORDS for word in WORDS.findall(text))


def secret_settings(value, path="settings") -> list[str]:
    """Where `value` (tenant settings, at any depth) holds a credential: a key that names one,
    or a string that is a URL with an embedded password. Paths only, never the values."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            if is_secret_key(key):
                found.append(here)
            else:
                found += secret_settings(item, here)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += secret_settings(item, f"{path}[{i}]")
    elif isinstance(value, str) and URL_WITH_PASSWORD.search(value):
        found.append(f"{path} (a URL with a password)")
    return found


def settings_problem(value, path="settings") -> str | None:
    """One line naming every place a credential would be stored, or None."""
    secret = secret_settings(value, path)
    if not secret:
        return None
    return (f"{', '.join(secret)} {'is' if len(secret) == 1 else 'are'} refused: tenant settings may not hold "
            "credentials (passwords, tokens, keys, URLs with a password); a move provisions the database and "
            "its role and stores the password encrypted")
