"""Every error this project raises on purpose derives from `TenantMoveError`.

Its message is one line for humans and never holds a secret. Entry points map the classes
to what their users see: management commands to an `error:` line and an exit status, the
HTTP API to a status code (see `migration_jobs.exceptions` for the classes of a move).
"""


class TenantMoveError(Exception):
    """Base of every error raised on purpose by tenancy, migration_jobs and api."""


class DecryptionError(TenantMoveError):
    """A token that no key of the keyring can open (wrong key, tampered, or not a token)."""


class TenantWriteRefused(TenantMoveError):
    """A write for a tenant whose status does not accept writes."""


class CrossTenantAccess(TenantMoveError):
    """Code running for one tenant touched a row of another."""
