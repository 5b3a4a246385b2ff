"""The errors of moves, runs, archives and restores: one module, one base class.

Every class derives from `tenancy.exceptions.TenantMoveError`. Messages are one line and
never hold a secret. Management commands map them to exit statuses (`error:` line,
migration_jobs.management.base), the HTTP API to status codes (api.auth.STATUS_OF); the
classes themselves know nothing of either.
"""
from tenancy.exceptions import TenantMoveError


class Refused(TenantMoveError):
    """Bad input or a state that forbids the request; nothing was changed."""


class BadRequest(Refused):
    """The request itself is malformed: an unknown option, a value of the wrong kind."""


class NotFound(Refused):
    """The tenant, run or server named does not exist. `details` name what was looked for."""

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.details = details


class StepFailed(TenantMoveError):
    """A step of a run found something wrong; the run rolls back."""


class ArchiveError(TenantMoveError, ValueError):
    """The file is not a usable tenant archive; the message says why, in one line."""


class RestoreError(TenantMoveError):
    """A restore refused or failed; nothing was changed. The message is one line."""


class RestoreRefused(RestoreError):
    """Bad request: an option that makes no sense."""


class RestoreConflict(RestoreError):
    """The archive is fine, but the state here forbids the restore as asked."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


class RestoreFailed(RestoreError):
    """The load itself failed (the transaction was rolled back)."""


class CopyCancelled(TenantMoveError):
    """Another copy worker failed: this one stops (never surfaces to the caller of copy_tenant)."""


class CopyBackMismatch(TenantMoveError):
    """Rows differ after copying a tenant back; nothing was committed."""
