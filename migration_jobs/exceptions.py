"""The errors of moves, runs, archives and restores: one module, one base class.

Every class derives from `tenancy.exceptions.TenantMoveError`. Messages are one line and
never hold a secret. Management commands map them to exit statuses (`error:` line), the
HTTP API to status codes; the classes themselves know nothing of either.
"""
from tenancy.exceptions import TenantMoveError


class Refused(TenantMoveError):
    """Bad input or a state that forbids the request; nothing was changed."""


class StepFailed(TenantMoveError):
    """A step of a run found something wrong; the run rolls back."""
