"""What the tenant actions and the run history share: durations and links for display, the
confirmation page, and how a new run (or a refusal) is reported to the user."""
from __future__ import annotations

import re
from datetime import datetime

from django.contrib import messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

from migration_jobs import services
from migration_jobs.models import MigrationRun, RunStatus

CONFIRM_TEMPLATE = "admin/migration_jobs/confirm_action.html"


# --- Small display helpers ----------------------------------------------------------------

def human_duration(value) -> str:
    return services.human_duration(value, empty="—")


def human_time(value: datetime | str | None) -> str:
    """A moment to the second, in the site's time zone: "2026-11-30 08:39:31 UTC" (a datetime
    or an ISO string); "—" for None."""
    if not value:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")


def run_url(run: MigrationRun) -> str:
    return reverse("admin:migration_jobs_migrationrun_change", args=[run.pk])


def run_link(run: MigrationRun):
    return format_html('<a href="{}">run {}</a>', run_url(run), run.pk)


_RUN_MENTION = re.compile(r"\brun (\d+)\b")


def link_runs(text) -> str:
    """`text` escaped, with every "run N" of an existing run a link to its page (a refusal that
    names the run in the way is one click from it)."""
    escaped = escape(str(text))
    ids = {int(n) for n in _RUN_MENTION.findall(escaped)}
    known = set(MigrationRun.objects.filter(pk__in=ids).values_list("pk", flat=True)) if ids else set()

    def link(match):
        pk = int(match.group(1))
        return str(run_link(MigrationRun(pk=pk))) if pk in known else match.group(0)

    return mark_safe(_RUN_MENTION.sub(link, escaped))


LEVELS = {RunStatus.SUCCEEDED: messages.SUCCESS, RunStatus.QUEUED: messages.INFO, RunStatus.RUNNING: messages.INFO,
          RunStatus.CANCELLED: messages.WARNING}


def confirmed(request) -> bool:
    return request.method == "POST" and request.POST.get("confirm") == "yes"


def online_requested(request) -> bool:
    return request.POST.get("online") == "yes"


def hold_requested(request) -> bool:
    return request.POST.get("hold_cutover") == "yes"


def split_by_check(objects, check, describe):
    """([(obj, describe(obj))] for those `check(obj)` accepts, [(obj, why not)] for the others):
    what a confirmation page lists before anyone clicks "Yes"."""
    ok, refused = [], []
    for obj in objects:
        try:
            check(obj)
        except services.Refused as exc:
            refused.append((obj, link_runs(exc)))
            continue
        ok.append((obj, describe(obj)))
    return ok, refused


def confirmation_page(modeladmin, request, queryset, *, action: str, title: str, intro: str, items,
                      consequences=(), servers=None, offer_online: bool = False, offer_hold: bool = False,
                      submit: str = "Yes, go ahead", refused=(), online_default: bool = False):
    """An intermediate page that posts the same action and selection back with confirm=yes.
    `refused`: [(obj, why)] of the selected objects that cannot take the action (listed apart,
    skipped on "Yes"); `online_default`: the "online" box starts ticked."""
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title, "intro": intro, "consequences": consequences, "items": items, "refused": refused,
        "online_default": online_default,
        "queryset": queryset, "action": action, "servers": servers, "offer_online": offer_online, "offer_hold": offer_hold,
        "submit": submit,
        "opts": opts, "app_label": opts.app_label, "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media,
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, CONFIRM_TEMPLATE, context)


def report_run(modeladmin, request, tenant, run: MigrationRun, task_id=None) -> None:
    run.refresh_from_db()
    what = f"{run.source_placement} → {run.target_placement}"
    if run.status in (RunStatus.QUEUED, RunStatus.RUNNING):
        note = "queued for the task cluster" if run.status == RunStatus.QUEUED else "running"
        text = format_html("{}: {} ({}) {}.", tenant.slug, run_link(run), what, note)
    elif run.status == RunStatus.SUCCEEDED:
        text = format_html("{}: {} ({}) succeeded.", tenant.slug, run_link(run), what)
    else:
        text = format_html("{}: {} ({}) {}: {}", tenant.slug, run_link(run), what,
                           run.get_status_display().lower(), run.error.splitlines()[0][:300] if run.error else "")
    modeladmin.message_user(request, text, LEVELS.get(run.status, messages.ERROR))


def report_refused(modeladmin, request, tenant, exc) -> None:
    modeladmin.message_user(request, format_html("{}: refused: {}", tenant.slug, link_runs(exc)), messages.ERROR)


def request_runs(modeladmin, request, queryset, make_run) -> None:
    """For each selected tenant: ask the services for a run (make_run(tenant)), hand it to the
    task cluster and say what became of it; a refusal is reported and the next tenant goes on."""
    for tenant in queryset:
        try:
            run = make_run(tenant)
        except services.Refused as exc:
            report_refused(modeladmin, request, tenant, exc)
            continue
        services.enqueue(run)
        report_run(modeladmin, request, tenant, run)
