"""The one entry point to tenant moves: the admin, the management commands, the HTTP API and
the django-q2 tasks call these functions and nothing below them.

- validation: looking up tenants, runs and servers; checking ids, placements, booleans.
- moves: asking for a move / move back / retirement, executing or enqueueing a run, resuming,
  rolling back (a queued run is cancelled), the read switch, the cutover, a tenant's status.
- archives: export, archive checks, restore.
- tenants: changing a tenant's name, settings and (through a run) placement.
- reports: a run as a dict, durations for humans, verifying a tenant in place, leftovers.
- candidates: the tenants that should move, with their sizes and growth.
- capacity: how full each database server is; the least loaded one; refusing a full one.

Every refusal is a `migration_jobs.exceptions` class (all `TenantMoveError`); nothing is
changed when one is raised before a run exists.
"""
from migration_jobs.exceptions import BadRequest, NotFound, Refused, StepFailed
from migration_jobs.services.archives import (archive_filename, archive_summary, export_tenant, export_to_spool,
                                              restore, restore_options, tenant_table_count,
                                              validate_archive)
from migration_jobs.services.moves import (active_run, cancel, check_move, check_move_back, check_retire,
                                           enqueue, enqueue_rollback, execute, interrupted_runs, is_parked,
                                           legacy_of, release_cutover, request_move, request_move_back,
                                           request_placement, request_retire, resumable_run, roll_back,
                                           rollback_unfinished, set_read_share, set_status, undo_move,
                                           why_not_cancel, why_waiting, worker_connections, worker_count)
from migration_jobs.services.capacity import capacities, check_room, least_loaded
from migration_jobs.services.reports import (FULL, REF, ROW, human_duration, human_refusal, leftovers, one_line,
                                             run_dict, run_history, run_report, run_state, run_steps, step_labels,
                                             verify, verify_via_cluster, writes_refused)
from migration_jobs.services.tenants import change_tenant, check_tenant_change
from migration_jobs.services.validation import (PLACEMENT_ALIASES, READ_SHARES, TARGETS, boolean, check_reachable,
                                                get_run, get_server, get_tenant, known_fields, placement,
                                                server_name, tenant_by_id, tenant_id)

__all__ = [
    "BadRequest", "NotFound", "Refused", "StepFailed",
    "archive_filename", "archive_summary", "export_tenant", "export_to_spool", "restore", "restore_options",
    "tenant_table_count", "validate_archive",
    "active_run", "cancel", "check_move", "check_move_back", "check_retire", "enqueue", "enqueue_rollback",
    "execute", "interrupted_runs", "is_parked", "legacy_of", "why_waiting", "worker_count", "release_cutover",
    "request_move",
    "request_move_back", "request_placement", "request_retire", "resumable_run", "roll_back",
    "rollback_unfinished", "set_read_share", "set_status", "undo_move", "why_not_cancel", "worker_connections",
    "FULL", "REF", "ROW", "human_duration", "human_refusal", "leftovers", "one_line", "run_dict", "run_state",
    "run_history", "run_report", "run_steps", "step_labels",
    "verify", "verify_via_cluster", "writes_refused",
    "PLACEMENT_ALIASES", "READ_SHARES", "TARGETS", "boolean", "check_reachable", "get_run", "get_server",
    "get_tenant", "known_fields", "placement", "server_name", "tenant_by_id", "tenant_id",
    "change_tenant", "check_tenant_change",
    "capacities", "check_room", "least_loaded",
]
