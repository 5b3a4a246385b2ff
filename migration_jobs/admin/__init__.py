"""Staff admin of tenant moves.

- Actions on the tenant list (appended to tenancy.admin.TenantAdmin.actions, which is left
  empty for this): move to a dedicated schema / database, move back to shared, verify,
  suspend, reactivate. Moves and suspension go through a confirmation page first (like
  Django's delete confirmation); on `confirm=yes` the request goes to migration_jobs.services
  (which refuses bad requests, one tenant at a time, changing nothing) and the run is handed
  to django-q2. The user gets a link to each new run.
- Run history (MigrationRun) is read-only: nobody adds, edits or deletes a run here. Its
  page (admin/run_page.py) is live: header, buttons, steps as a timeline, a chart, the report folded.

Nothing secret is rendered: runs and steps hold none, and credential objects are never shown.
"""
from migration_jobs.admin.common import confirmation_page
from migration_jobs.admin.health import move_health  # the tenant list's "health" column
from migration_jobs.admin.runs import MigrationRunAdmin
from migration_jobs.admin.servers import ServerChangeList
from migration_jobs.admin.tenant_actions import TENANT_ACTIONS

__all__ = ["MigrationRunAdmin", "ServerChangeList", "TENANT_ACTIONS", "confirmation_page", "move_health"]
