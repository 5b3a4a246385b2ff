"""The command contract, for every management command of this project: success exits 0; an
error is ONE line `error: <message>` on stderr and exit status 1 (a failed operation) or 2
(bad input, or a refused request: nothing changed). `exit_statuses` maps error classes to
statuses (the most specific class wins); called through call_command, a CommandError with
that returncode is raised instead of exiting."""
import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from tenancy.exceptions import TenantMoveError


def one_line(text) -> str:
    return " ".join(str(text).split())


class ContractCommand(BaseCommand):
    exit_statuses: dict[type, int] = {TenantMoveError: 2}

    def error_message(self, exc: Exception) -> str:
        """The text of the `error:` line for an exception of exit_statuses."""
        return one_line(exc)

    def exit_status(self, exc: Exception) -> int | None:
        for cls in type(exc).__mro__:
            if cls in self.exit_statuses:
                return self.exit_statuses[cls]
        return None

    def execute(self, *args, **options):
        try:
            try:
                return super().execute(*args, **options)
            except Exception as exc:
                status = self.exit_status(exc)
                if status is None:
                    raise
                raise CommandError(self.error_message(exc), returncode=status) from None
        except CommandError as exc:
            if not getattr(self, "_called_from_command_line", False) or options.get("traceback"):
                raise
            # Django would print "CommandError: ..."; the contract is one line "error: ...".
            self.stderr.write(f"error: {one_line(exc)}")
            connections.close_all()
            sys.exit(exc.returncode)
