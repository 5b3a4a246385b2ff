"""Fleet benchmark (`manage.py bench_fleet`): a plan moving the biggest tenants of a shared
database to dedicated databases, online, with 1, 2, 4... moves at once, while a tenant that
stays shared writes at a steady pace.

- The shared database: `tenants` tenants `fleet_bench_NNN` of Zipf sizes (benchmarks.seeding's
  sizes and server-side generator, largest `largest` rows), made once.
- Per setting N: a real django-q2 cluster (`manage.py qcluster`, N + 1 worker processes: N moves
  and the plan's advance tasks; benchmarks/workers.py) starts; the staying tenant's writer (a
  process of its own, online_move.PacedWriter) writes for `baseline` seconds with no plan running
  (its baseline in this run), then fleet.services.create_plan(..., start=True) plans the `move`
  biggest tenants, online, biggest first, max_parallel N: as the admin or `plan_moves` start a
  plan. The plan's tasks start the runs, and the runs' end starts the next ones, on that cluster.
  Wall time is the plan's own (started_at to finished_at). Freeze per moved tenant is what the
  run recorded (MigrationRun.freeze_seconds, the run page's "freeze ... ms"); a moved tenant
  counts as verified when its run succeeded having verified (an online move at its cutover)
  and, checked again by the benchmark after the plan, verify_tenant finds every row equal.
- Between settings the moved tenants are put back without copying (bench_tenants.
  put_back_in_shared: their shared rows were never touched by the move, only fenced): every
  setting moves the same rows.
- Then the staying tenant's single-row insert latency with 0 and with `fenced` fenced tenants,
  measured by fence_cost (the bench_fences benchmark) for the engine's guard.
- Everything made is removed at the end (tenants, their databases, runs, plans, the cluster's
  task records) unless `keep`.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from django.db import connection, transaction
from django_q.models import OrmQ, Task
from psycopg import sql

from benchmarks import seeding
from fleet import services as plans
from fleet.models import FINAL_STATUSES, ItemStatus, MovePlan
from migration_jobs.engine.places import database_place, shared_place
from migration_jobs.engine.tables import tenant_tables
from migration_jobs.engine.verify import verify_tenant
from migration_jobs.models import ACTIVE_STATUSES, MigrationRun, RunKind, RunStatus, StepStatus
from tenancy.models import Placement, Tenant
from tenancy.servers import ensure_default_server

from .bench_tenants import BENCH_MARKER, BenchError, drop_bench_tenant, put_back_in_shared
from .fence_cost import run_fence_benchmark
from .online_move import PacedWriter, phase_stats
from .workers import Cluster, broker_label, own_queue, queue_name

MARKER = "bench_fleet"  # Tenant.settings key of the tenants made here (with BENCH_MARKER, for drop_bench_tenant)
SLUG_PREFIX = "fleet_bench_"
SEED_BASE = 8_000_000_000  # generator salts: none of the demo's (42..) nor bench_migration's (7e9 + rows)
POLL = 0.5
Say = Callable[[str], None]


@dataclass
class Setting:
    parallel: int
    workers: int
    plan: int
    status: str = ""
    wall_seconds: float = 0.0
    planned: int = 0
    moved: int = 0
    rows: int = 0
    freezes_ms: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    baseline: dict = field(default_factory=dict)  # the staying tenant's writes/s, p50_ms, p99_ms
    during: dict = field(default_factory=dict)
    staying_refused: int = 0
    writer_error: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.failed or self.unverified or self.writer_error) and self.moved == self.planned

    @property
    def tenants_per_minute(self) -> float:
        return 60.0 * self.moved / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall_seconds if self.wall_seconds else 0.0

    def ratio(self, key: str) -> float | None:
        before, now = self.baseline.get(key), self.during.get(key)
        return now / before if before and now is not None else None


# --- The shared database ----------------------------------------------------------------------

def fleet_tenants():
    return Tenant.objects.filter(settings__has_key=MARKER).order_by("slug")


def remove_fleet(say: Say) -> None:
    """Remove what an earlier or this run left: the plans of its tenants, the tenants (dedicated
    databases, fences, runs, rows: drop_bench_tenant). Refused while one of them is being moved."""
    foreign = Tenant.objects.filter(slug__startswith=SLUG_PREFIX).exclude(settings__has_key=MARKER).first()
    if foreign is not None:
        raise BenchError(f"tenant {foreign.slug} exists and was not made by bench_fleet; rename or delete it first")
    tenants = list(fleet_tenants())
    if not tenants:
        return
    busy = MigrationRun.objects.filter(tenant__in=tenants, status__in=ACTIVE_STATUSES).select_related("tenant").first()
    if busy is not None:
        raise BenchError(f"tenant {busy.tenant.slug} is being moved by run {busy.pk} ({busy.status}); cancel its plan "
                         "or roll the run back before benchmarking again")
    say(f"removing {len(tenants)} fleet benchmark tenant(s) ...")
    plan_ids = list(MovePlan.objects.filter(items__tenant__in=tenants).values_list("pk", flat=True).distinct())
    MovePlan.objects.filter(pk__in=plan_ids).delete()
    for tenant in tenants:
        drop_bench_tenant(tenant)


def seed_fleet(tenants: int, largest: int, say: Say) -> list[tuple[Tenant, int]]:
    """(tenant, rows) largest first: Zipf sizes as seed_demo's, generated server-side, one transaction."""
    sizes = [rows for _, _, rows in seeding.plan(tenants, largest)]
    made = []
    started = time.monotonic()
    with transaction.atomic():
        for rank, rows in enumerate(sizes, 1):
            tenant = Tenant(slug=f"{SLUG_PREFIX}{rank:03d}", name=f"Fleet benchmark {rank}", placement=Placement.SHARED,
                            status="active", settings={BENCH_MARKER: {"rows": rows}, MARKER: {"rank": rank}})
            tenant.save()
            made.append((tenant, sum(seeding.fill_tenant(tenant, rows, SEED_BASE + rank).values())))
    with connection.cursor() as cur:
        cur.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, seeding.shop_tables())))
                    .as_string(seeding.raw_connection(connection)))
    say(f"  {sum(r for _, r in made):,} rows in {len(made)} tenants in {time.monotonic() - started:.1f}s")
    return made


def put_back(tenants: list[Tenant]) -> None:
    """Every tenant in shared placement again, on the same rows (no copy), its dedicated database dropped."""
    for tenant in tenants:
        tenant.refresh_from_db()
        if tenant.placement == Placement.SHARED:
            continue
        run = tenant.migration_runs.filter(kind=RunKind.MOVE, status=RunStatus.SUCCEEDED).order_by("-finished_at").first()
        if run is None:
            raise BenchError(f"tenant {tenant.slug} is in {tenant.placement} placement with no move to undo")
        put_back_in_shared(tenant, run)


# --- One setting ------------------------------------------------------------------------------

def wait_for_plan(plan: MovePlan, cluster: Cluster, timeout: float, say: Say) -> MovePlan:
    """Poll the plan until it ends; print [done/total] as tenants finish. On timeout the plan is
    cancelled (its running moves roll back) and waited for."""
    deadline = time.monotonic() + timeout
    last = None
    cancelled = False
    while True:
        plan.refresh_from_db()
        if plan.status in FINAL_STATUSES:
            return plan
        if cluster.proc.poll() is not None:
            raise RuntimeError(f"the qcluster exited ({cluster.proc.returncode}): {cluster.output()}")
        counts = {}
        for status in plan.items.values_list("status", flat=True):
            counts[status] = counts.get(status, 0) + 1
        finished = sum(n for s, n in counts.items() if s not in (ItemStatus.WAITING, ItemStatus.RUNNING))
        if (finished, counts.get(ItemStatus.RUNNING, 0)) != last:
            last = (finished, counts.get(ItemStatus.RUNNING, 0))
            say(f"    [{finished}/{sum(counts.values())}] {last[1]} running")
        if time.monotonic() > deadline and not cancelled:
            say(f"    plan {plan.pk} did not finish in {timeout:.0f}s: cancelling it")
            plans.cancel(plan)
            cancelled, deadline = True, time.monotonic() + 300
        elif time.monotonic() > deadline:
            raise RuntimeError(f"plan {plan.pk} still {plan.status} after it was cancelled")
        time.sleep(POLL)


def check_moved(run: MigrationRun) -> str:
    """What is wrong with a succeeded move ("" if nothing): its own verification (an online move
    verifies in its cutover, an offline one in its verify step), then, independently, every
    row of the tenant compared between the shared tables and its new database (verify_tenant)."""
    cutover = run.steps.filter(name="cutover", status=StepStatus.SUCCEEDED).first()
    own = "verify" in (cutover.details.get("phases_ms", {}) if cutover else {}) or \
        (run.report or {}).get("verify", {}).get("ok")
    if not own:
        return "the run recorded no successful verification"
    report = verify_tenant(shared_place(), database_place(run.target_server, run.target_database), run.tenant_id,
                           tenant_tables(), target_is_dedicated=True)
    return "" if report.ok else f"verify_tenant: {report.summary()}"


def collect(setting: Setting, plan: MovePlan) -> None:
    setting.status = plan.status
    setting.wall_seconds = (plan.finished_at - plan.started_at).total_seconds()
    for item in plan.items.select_related("tenant", "run").order_by("position"):
        setting.planned += 1
        run = item.run
        if item.status != ItemStatus.DONE or run is None or run.status != RunStatus.SUCCEEDED:
            setting.failed.append(f"{item.tenant.slug}: {item.status} {item.error or (run.error if run else '')}"
                                  .strip())
            continue
        problem = check_moved(run)
        if problem:
            setting.unverified.append(f"{item.tenant.slug}: run {run.pk}: {problem}")
            continue
        setting.moved += 1
        setting.rows += run.rows_copied
        if run.freeze_seconds is not None:
            setting.freezes_ms.append(1000 * run.freeze_seconds)


def run_setting(parallel: int, moving: list[Tenant], staying: Tenant, *, rate: float, baseline: float,
                timeout: float, queue: str, log_dir: Path, say: Say) -> Setting:
    workers = parallel + 1
    say(f"\n{parallel} at once: starting a qcluster of {workers} workers ...")
    with Cluster(queue, workers, log_dir / f"qcluster-{parallel}.log") as cluster:
        writer = PacedWriter(staying.pk, rate, seed=parallel)
        writer.start()
        plan = None
        try:
            base_start = time.time()
            time.sleep(baseline)
            base_end = time.time()
            say(f"  staying tenant's baseline taken ({baseline:.0f}s); planning {len(moving)} moves ...")
            plan = plans.create_plan(tenants=[t.slug for t in moving], target=Placement.DATABASE, online=True,
                                     max_parallel=parallel, on_failure="skip", name=f"bench_fleet {parallel} at once",
                                     start=True)
            plan = wait_for_plan(plan, cluster, timeout, say)
        finally:
            writer.finish()
    setting = Setting(parallel, workers, plan.pk)
    collect(setting, plan)
    began, ended = plan.started_at.timestamp(), plan.finished_at.timestamp()
    setting.baseline = phase_stats(writer.log, base_start, base_end)
    setting.during = phase_stats(writer.log, began, ended)
    setting.staying_refused = sum(1 for at in writer.log.refused_at if base_start <= at <= ended)
    setting.writer_error = writer.error
    say(f"  plan {plan.pk} {plan.status} in {setting.wall_seconds:.1f}s: {setting.moved}/{setting.planned} moved and "
        "verified")
    return setting


# --- The benchmark ----------------------------------------------------------------------------

def run_fleet_benchmark(*, tenants: int = 40, largest: int = 60_000, move: int = 20, parallel=(1, 2, 4),
                        rate: float = 20.0, baseline: float = 15.0, timeout: float = 1800.0, fenced: int = 1000,
                        fence_inserts: int = 2000, keep: bool = False, say: Say = print) -> dict:
    if move < 1 or tenants < move + 1:
        raise BenchError(f"--move must be at least 1 and --tenants more than --move (one tenant stays): "
                         f"got {tenants} tenants, {move} to move")
    if largest < 1 or rate <= 0 or baseline <= 0 or not parallel or min(parallel) < 1 or fenced < 1:
        raise BenchError("--largest, --rate, --baseline and --fenced must be positive, --parallel at least 1 each")
    ensure_default_server()
    remove_fleet(say)
    queue = queue_name()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    settings_done: list[Setting] = []
    try:
        say(f"generating {tenants} tenants (Zipf sizes, largest ~{largest:,} rows) server-side ...")
        made = seed_fleet(tenants, largest, say)
        moving = [t for t, _ in made[:move]]
        staying, staying_rows = made[move]
        with own_queue(queue):
            for n in parallel:
                settings_done.append(run_setting(n, moving, staying, rate=rate, baseline=baseline, timeout=timeout,
                                                 queue=queue, log_dir=log_dir, say=say))
                if not (keep and n == parallel[-1]):
                    put_back(moving)
        say(f"\nfence cost: the staying tenant's single-row inserts with 0 and {fenced:,} fenced tenants ...")
        fences = run_fence_benchmark((0, fenced), inserts=fence_inserts, bulk_rows=1000, bulk_runs=1, rounds=2,
                                     approaches=("guard",))
    finally:
        if not keep:
            Task.objects.filter(cluster=queue).delete()
            OrmQ.objects.filter(key=queue).delete()
            shutil.rmtree(log_dir, ignore_errors=True)
            try:
                remove_fleet(say)
            except Exception as exc:  # noqa: BLE001 - do not hide what went wrong before
                say(f"cleanup failed: {type(exc).__name__}: {exc}; the next bench_fleet removes what is left")
        else:
            say(f"kept: the tenants {SLUG_PREFIX}*, the plans, the last setting's moves; cluster logs in {log_dir}")
    guard = {r["fenced"]: r for r in fences["results"]}
    return {
        "tenants": tenants, "largest": largest, "rows": sum(r for _, r in made), "move": move,
        "moved_rows": sum(r for _, r in made[:move]), "staying": staying.slug, "staying_rows": staying_rows,
        "rate": rate, "baseline_seconds": baseline, "broker": broker_label(),
        "settings": [{**asdict(s), "ok": s.ok, "tenants_per_minute": s.tenants_per_minute,
                      "rows_per_second": s.rows_per_second} for s in settings_done],
        "fences": {"fenced": fenced, "inserts": fences["inserts"] * fences["rounds"],
                   "none_median_ms": guard[0]["median_ms"], "none_p99_ms": guard[0]["p99_ms"],
                   "fenced_median_ms": guard[fenced]["median_ms"], "fenced_p99_ms": guard[fenced]["p99_ms"],
                   "refused": guard[fenced]["refused"]},
        "ok": all(s.ok for s in settings_done),
    }


# --- The table --------------------------------------------------------------------------------

def _x(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def format_report(report: dict) -> str:
    lines = [f"Shared database: {report['tenants']} tenants, {report['rows']:,} rows (Zipf sizes, largest "
             f"{report['largest']:,}). Plan: the {report['move']} biggest ({report['moved_rows']:,} rows) to dedicated "
             f"databases, online, biggest first, auto cut-over. Staying tenant {report['staying']} "
             f"({report['staying_rows']:,} rows) writes ~{report['rate']:g}/s; its baseline: the "
             f"{report['baseline_seconds']:g}s before each plan, no plan running.",
             "Runs executed by a real django-q2 cluster: one `manage.py qcluster` per setting, N+1 worker processes "
             f"(N moves + the plan's advance tasks), {report['broker']}. Wall time: the plan's started_at to "
             "finished_at.",
             "",
             "| at once | wall (s) | tenants/min | rows/s | staying writes/s: baseline -> during | x | staying p99 ms: "
             "baseline -> during | x | freeze per tenant ms (median / max) | moved + verified | staying refused |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for s in report["settings"]:
        by[s["parallel"]] = s
        base, during = s["baseline"], s["during"]
        freezes = s["freezes_ms"]
        freeze = f"{statistics.median(freezes):.0f} / {max(freezes):.0f}" if freezes else "-"
        rate_x = during["writes_per_s"] / base["writes_per_s"] if base.get("writes_per_s") else None
        p99_x = during["p99_ms"] / base["p99_ms"] if base.get("p99_ms") and during.get("p99_ms") else None
        lines.append(f"| {s['parallel']} | {s['wall_seconds']:.1f} | {s['tenants_per_minute']:.1f} | "
                     f"{s['rows_per_second']:,.0f} | {base.get('writes_per_s', 0):.1f} -> {during.get('writes_per_s', 0):.1f} "
                     f"| {_x(rate_x)} | {_ms(base.get('p99_ms'))} -> {_ms(during.get('p99_ms'))} | {_x(p99_x)} | {freeze} "
                     f"| {s['moved']}/{s['planned']}{'' if s['ok'] else ' FAIL'} | {s['staying_refused']} |")
    for s in report["settings"]:
        for what in ("failed", "unverified"):
            for line in s[what]:
                lines.append(f"{s['parallel']} at once, {what}: {line}")
        if s["writer_error"]:
            lines.append(f"{s['parallel']} at once, the staying tenant's writer failed: {s['writer_error']}")
    lines.append("")
    if 1 in by and 2 in by:
        one, two = by[1], by[2]
        wall = two["wall_seconds"] / one["wall_seconds"] if one["wall_seconds"] else float("nan")
        kept = two["during"].get("writes_per_s", 0) / two["baseline"]["writes_per_s"] \
            if two["baseline"].get("writes_per_s") else float("nan")
        lines.append(f"2 at once vs 1 at once: wall time {wall:.2f}x (goal: below 1); the staying tenant kept "
                     f"{kept:.2f}x of its baseline write rate (goal: at least 0.8)")
    f = report["fences"]
    lines.append(f"staying tenant's single-row insert (fence_cost, guard): {f['none_median_ms']:.3f} ms median "
                 f"(p99 {f['none_p99_ms']:.3f}) with no fenced tenant, {f['fenced_median_ms']:.3f} ms (p99 "
                 f"{f['fenced_p99_ms']:.3f}) with {f['fenced']:,}: {f['fenced_median_ms'] / f['none_median_ms']:.2f}x "
                 f"(goal: within 1.2x); a fenced tenant's write {'refused' if f['refused'] else 'NOT REFUSED'}; "
                 f"{f['inserts']:,} inserts each")
    return "\n".join(lines)
