"""The steps only an online run has: capture the tenant's changes while it keeps working,
catch up, cut over in a sub-second freeze (engine/cutover.py), remove the capture."""
from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from migration_jobs.engine import capture, fences
from migration_jobs.engine.cutover import freeze_and_switch
from migration_jobs.exceptions import StepFailed
from migration_jobs.models import MigrationRun
from migration_jobs.runs.health import after_switch
from migration_jobs.runs.steps.base import Parked, Step, set_tenant, switch_placement
from tenancy.models import Status


class StartCapture(Step):
    name, label = "capture", "Start capturing the tenant's changes"

    def run(self, ctx, step):
        tenant = ctx.refresh_tenant()
        with ctx.source.connect() as conn:
            capture.start_capture(conn, ctx.source, ctx.run.pk, tenant.pk, ctx.tables,
                                  drain_timeout=settings.MIGRATION_DRAIN_TIMEOUT)
        # The guard the capture installed also fences: the cutover's freeze is a row insert.
        return f"the guard on {len(ctx.tables)} tables of {ctx.source} logs the tenant's changes"

    def rollback(self, ctx, step):
        with ctx.source.connect() as conn:
            capture.stop_capture(conn, ctx.source, ctx.run.pk, ctx.tables)
            if ctx.refresh_tenant().placement == ctx.run.source_placement:
                capture.remove_fence(conn, ctx.source, ctx.run.tenant_id, ctx.tables)
        return "capture stopped, change log removed"


def _record_lag(ctx) -> capture.Lag:
    with ctx.source.connect() as conn:
        lag = capture.lag(conn, ctx.source, ctx.run.pk)
    MigrationRun.objects.filter(pk=ctx.run.pk).update(lag_changes=lag.changes, lag_seconds=lag.oldest_seconds,
                                                      heartbeat_at=timezone.now())
    ctx.run.lag_changes, ctx.run.lag_seconds = lag.changes, lag.oldest_seconds
    ctx.record_sample(lag_changes=lag.changes)  # the run page's lag curve
    return lag


def _apply_round(ctx, number: int, *, compare: bool = False) -> capture.Round:
    """One catch-up round; with `compare`, every table is also compared at that point."""
    result = capture.apply_round(ctx.source, ctx.target, ctx.run.pk, ctx.tenant.pk, ctx.tables, number,
                                 compare=compare)
    if compare and result.mismatches:
        raise StepFailed(f"source and target diverge in {', '.join(result.mismatches)}")
    return result


class CatchUp(Step):
    name, label = "catch_up", "Apply captured changes until the lag is small"

    def run(self, ctx, step):
        number = step.details.get("round", 0)
        applied = step.details.get("applied", 0)
        deadline = time.monotonic() + settings.MIGRATION_CATCHUP_TIMEOUT
        while True:
            number += 1
            result = _apply_round(ctx, number)
            applied += result.changes
            lag = _record_lag(ctx)
            ctx.save_details(step, round=number, applied=applied, last_round=result.changes)
            ctx.checkpoint("catch_up:round")
            hold, read_percent = MigrationRun.objects.values_list("hold_cutover", "read_percent").get(pk=ctx.run.pk)
            if hold:
                number = _keep_in_sync(ctx, step, number)
                # A queue worker waits in the database, not in the worker, between rounds (the
                # scheduler's ~30 s pace). Not while reads are served from the target: those must
                # stay as fresh as a round every MIGRATION_CATCHUP_INTERVAL keeps them.
                if ctx.park_when_held and not read_percent:
                    raise Parked(timezone.now() + timedelta(seconds=settings.MIGRATION_HELD_ROUND_INTERVAL))
                time.sleep(settings.MIGRATION_CATCHUP_INTERVAL)
                continue
            if lag.changes <= settings.MIGRATION_CUTOVER_MAX_CHANGES:
                break
            if time.monotonic() > deadline:
                raise StepFailed(f"lag did not shrink below {settings.MIGRATION_CUTOVER_MAX_CHANGES} changes in "
                                 f"{settings.MIGRATION_CATCHUP_TIMEOUT:.0f}s (now {lag.changes})")
            if result.changes < settings.MIGRATION_CUTOVER_MAX_CHANGES:
                time.sleep(settings.MIGRATION_CATCHUP_INTERVAL)
        # A full comparison before the freeze; the freeze then only compares what changed since.
        number += 1
        _apply_round(ctx, number, compare=True)
        verified = number
        # The comparison took a while and changes piled up: catch up again, so that the freeze
        # has only the last few to apply.
        for _ in range(50):
            number += 1
            applied += _apply_round(ctx, number).changes
            if _record_lag(ctx).changes <= settings.MIGRATION_CUTOVER_MAX_CHANGES:
                break
        ctx.save_details(step, round=number, verified_round=verified)
        step.rows = applied
        return f"{applied} changes applied in {number} rounds; all tables compared at round {number}"


def _moment(details: dict, key: str):
    value = details.get(key)
    return datetime.fromisoformat(value) if value else None


def _keep_in_sync(ctx, step, number: int) -> int:
    """A held run after a round: give up past MIGRATION_HOLD_MAX_SECONDS since its first held
    round, and compare every table every MIGRATION_DIVERGENCE_INTERVAL (a difference fails the
    run), both counted in the step's details so they hold across parks. The last round's number."""
    now = timezone.now()
    held_since = _moment(step.details, "held_since")
    if held_since is None:
        held_since = now
        ctx.save_details(step, held_since=now.isoformat())
    if (now - held_since).total_seconds() > settings.MIGRATION_HOLD_MAX_SECONDS:
        raise StepFailed(f"cutover held for more than {settings.MIGRATION_HOLD_MAX_SECONDS:.0f}s")
    compared = _moment(step.details, "compared_at") or held_since
    if (now - compared).total_seconds() >= settings.MIGRATION_DIVERGENCE_INTERVAL:
        # Kept in sync for the gradual read switch: compare now and then.
        number += 1
        _apply_round(ctx, number, compare=True)
        ctx.save_details(step, round=number, compared_at_round=number, compared_at=timezone.now().isoformat(),
                         comparisons=step.details.get("comparisons", 0) + 1)
    return number


class Cutover(Step):
    name, label = "cutover", "Freeze, drain, apply the rest, verify, switch"
    point_of_no_return = True

    def run(self, ctx, step):
        """Records around engine/cutover.py: the tenant's status and the freeze's timings."""
        run, tenant = ctx.run, ctx.refresh_tenant()
        if tenant.placement == run.target_placement:
            # Resumed after a worker died between the switch's commit and this step's end: the
            # tenant has lived and written there since. Freezing and comparing again would find
            # those writes "missing" from the fenced source; only make sure the old rows stay fenced.
            fences.close(ctx.source, tenant.pk, slug=tenant.slug,
                         reason=f"legacy rows: tenant moved to {run.target_placement} by run {run.pk}")
            ctx.save_details(step, switched_before_resume=True)
            return (f"the switch had committed before the worker died: placement {run.target_placement}, "
                    "old rows fenced")
        catch_up = ctx.step("catch_up")
        previous = run.previous_status or tenant.status
        if not run.previous_status:
            run.previous_status = previous
            run.save(update_fields=["previous_status"])

        def freeze_requests():
            ctx.save_details(step, frozen=True)  # before the freeze: a rollback knows to undo it
            set_tenant(tenant.pk, status=Status.MIGRATING)  # requests: 503 + Retry-After

        with connection.cursor() as drain:
            result = freeze_and_switch(
                ctx.source, ctx.target, run.pk, tenant.pk, ctx.tables,
                last_round=catch_up.details.get("round", 0),
                verified_round=catch_up.details.get("verified_round", 0),
                reason=f"cutover of run {run.pk}", slug=tenant.slug,
                sequence_margin=settings.MIGRATION_SEQUENCE_MARGIN,
                drain_timeout=settings.MIGRATION_DRAIN_TIMEOUT,
                freeze_max_changes=settings.MIGRATION_FREEZE_MAX_CHANGES, drain=drain,
                freeze_requests=freeze_requests,
                unfreeze_requests=lambda: set_tenant(tenant.pk, status=previous),
                switch=lambda source_conn: switch_placement(ctx, status=previous, source_conn=source_conn),
                checkpoint=ctx.checkpoint)
        run.freeze_seconds, run.freeze_started_at, run.freeze_ended_at = (
            result.seconds, result.frozen_at, result.ended_at)
        run.save(update_fields=["freeze_seconds", "freeze_started_at", "freeze_ended_at"])
        ctx.save_details(step, freeze_seconds=result.seconds, final_round=result.final_round,
                         phases_ms=result.phases_ms, final_rounds=result.final_rounds)
        smoke = after_switch(ctx, result.ended_at)  # past the point of no return: never raises
        return f"writes frozen for {result.seconds * 1000:.0f} ms; placement now {run.target_placement}; {smoke}"

    def rollback(self, ctx, step):
        """Only a worker killed in the freeze leaves something: the fence closed and the
        tenant `migrating` in its old place (a failure there undoes both itself)."""
        if not step.details.get("frozen"):
            return "nothing to undo"
        run, tenant = ctx.run, ctx.refresh_tenant()
        if tenant.placement != run.source_placement:
            return f"the switch committed: the tenant lives in {tenant.placement}"
        fences.reopen(ctx.source, tenant.pk)
        previous = run.previous_status or Status.ACTIVE
        set_tenant(tenant.pk, status=previous)
        return f"writes allowed again in {run.source_placement}, status restored to {previous}"


class StopCapture(Step):
    name, label = "cleanup", "Remove the capture objects"

    def run(self, ctx, step):
        with ctx.source.connect() as conn:
            capture.stop_capture(conn, ctx.source, ctx.run.pk, ctx.tables)
        return "capture stopped, change log removed; the old rows stay fenced"
