"""Printing of the plan commands (not a command: the leading underscore keeps Django from
listing it). No business logic: fleet.services decides and computes."""
from __future__ import annotations

from fleet import services
from migration_jobs.management.commands._progress import table
from migration_jobs.services import human_duration


def describe(plan) -> str:
    servers = ", ".join(s.name for s in plan.servers.all()) if plan.target == "database" else ""
    window = ""
    if plan.window_start or plan.window_end:
        window = f", window {services.human_time(plan.window_start)} .. {services.human_time(plan.window_end)}"
    return (f"to {plan.target}{f' on {servers}' if servers else ''}, {'online' if plan.online else 'offline'}, "
            f"{plan.max_parallel} at once, {plan.get_order_display().lower()}{window}, on failure: "
            f"{plan.on_failure}")


def estimate_table(rows) -> str:
    """rows: (tenant, rows, seconds, extra...) tuples."""
    return table([[slug, count, human_duration(seconds), *extra] for slug, count, seconds, *extra in rows],
                 ["tenant", "rows", "estimated time"] + (["status", "run", "note"] if rows and len(rows[0]) > 3
                                                         else []))


def print_draft(cmd, draft) -> None:
    cmd.stdout.write(f"plan (dry run, nothing created): {draft.name}: {len(draft.items)} tenants to {draft.target}"
                     f"{' on ' + ', '.join(s.name for s in draft.servers) if draft.servers else ''}, "
                     f"{'online' if draft.online else 'offline'}, {draft.max_parallel} at once, "
                     f"{draft.order.replace('_', ' ')}, on failure: {draft.on_failure}")
    cmd.stdout.write(estimate_table([(i.tenant.slug, i.rows, i.seconds) for i in draft.items]))
    cmd.stdout.write(f"total: {draft.total_rows:,} rows, {human_duration(draft.serial_seconds)} one at a time, "
                     f"~{human_duration(draft.wall_seconds)} with {draft.max_parallel} at once "
                     f"(rate: {draft.rate.describe()})")
    if draft.window_start or draft.window_end:
        cmd.stdout.write(f"window: {services.human_time(draft.window_start)} .. "
                         f"{services.human_time(draft.window_end)}")


def print_plan(cmd, plan) -> None:
    figures = services.progress(plan)
    counts = figures["counts"]
    cmd.stdout.write(f"plan {plan.pk} {plan.status}: {plan.name} ({describe(plan)})")
    rate = f"{figures['rows_per_second']:,.0f} rows/s" if figures["rows_per_second"] else "-"
    eta = human_duration(figures["eta_seconds"]) if figures["eta_seconds"] is not None else "-"
    cmd.stdout.write(f"{figures['progress']} done {counts['done']}, running {counts['running']}, waiting "
                     f"{counts['waiting']}, failed {counts['failed']}, skipped {counts['skipped']}, cancelled "
                     f"{counts['cancelled']}; rows moved {figures['rows_moved']:,} of {figures['rows_to_move']:,}, "
                     f"rate {rate}, ETA {eta}")
    rows = [(e.item.tenant.slug, e.rows, e.seconds, e.item.status, e.item.run_id,
             " ".join(e.item.error.split())[:100]) for e in services.estimate(plan)]
    cmd.stdout.write(estimate_table(rows))
    if plan.error:
        cmd.stdout.write(f"note: {' '.join(plan.error.split())}")
