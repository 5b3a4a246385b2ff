"""Every error raised on purpose derives from `TenantMoveError`; its message is one line
and never holds a secret. Entry points map the classes to exit or HTTP statuses.
"""


class TenantMoveError(Exception):
    """Base of every error raised on purpose by tenancy, migration_jobs and api."""


class DecryptionError(TenantMoveError):
    """A token that no key of the keyring can open (wrong key, tampered, or not a token)."""


class TenantWriteRefused(TenantMoveError):
    """A write for a tenant whose status does not accept writes."""


class CrossTenantAccess(TenantMoveError):
    """Code running for one tenant touched a row of another."""
