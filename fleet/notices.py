"""Notices to tenants about planned moves, through Django's e-mail framework (EMAIL_BACKEND:
the console in the demo, any SMTP server by settings; DEFAULT_FROM_EMAIL).

- plan_scheduled: when a plan starts, to every tenant of it that has a contact address:
  when (the window), where to, and for an offline move how long writes are expected to be
  refused (the estimate from the rate measured so far).
- item_ended: when a tenant's move is done, failed and was rolled back, or will not happen.

One message per tenant (no tenant sees another's address). A failure to send is logged and
never stops a plan: the move matters more than its notice.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from migration_jobs.models import RunStatus
from migration_jobs.services import human_duration

log = logging.getLogger(__name__)
SUBJECT_PREFIX = "[tenant moves] "
PLACES = {"schema": "a dedicated schema", "database": "a dedicated database"}


def _when(plan) -> str:
    # Not fleet.services.human_time: services import this module.
    def text(moment):
        return moment.strftime("%Y-%m-%d %H:%M UTC")

    if plan.window_start and plan.window_end:
        return f"between {text(plan.window_start)} and {text(plan.window_end)}"
    if plan.window_start:
        return f"from {text(plan.window_start)}"
    if plan.window_end:
        return f"from now until {text(plan.window_end)} at the latest"
    return "from now on"


def _send(messages: list[EmailMessage]) -> int:
    if not messages:
        return 0
    try:
        return get_connection(fail_silently=False).send_messages(messages) or 0
    except Exception as exc:  # noqa: BLE001 - a notice never stops a plan
        log.warning("could not send %d move notice(s): %s", len(messages), type(exc).__name__)
        return 0


def _message(tenant, subject: str, lines: list[str]) -> EmailMessage:
    body = "\n\n".join([f"Hello {tenant.name},", *lines, "This message was sent automatically by the tenant-moves "
                        "service; reply to your usual contact with any question."])
    return EmailMessage(SUBJECT_PREFIX + subject, body, settings.DEFAULT_FROM_EMAIL, [tenant.contact_email])


def plan_scheduled(plan, estimates) -> int:
    """Tell every tenant of a plan that just started when its move happens. `estimates`:
    fleet.services.estimate(plan). Returns the number of messages sent."""
    messages = []
    for est in estimates:
        tenant = est.item.tenant
        if not tenant.contact_email:
            continue
        if plan.online:
            writes = ("Your service stays available during the move; changes pause for about "
                      f"{human_duration(max(est.writes_refused, 1.0))} at the switch-over.")
        else:
            writes = ("During the move your data can be read but not changed: writes are refused for about "
                      f"{human_duration(est.writes_refused)} (our estimate from the moves measured so far).")
        messages.append(_message(tenant, f"planned move of {tenant.slug}", [
            f"We will move your data ({tenant.slug}, {est.rows:,} records) out of our shared database into "
            f"{PLACES[plan.target]} of its own, {_when(plan)}.", writes,
            "Nothing is needed from you; every record is verified before the switch. We will write again when "
            "the move is done."]))
    return _send(messages)


def item_ended(item) -> int:
    """Tell the tenant how its planned move ended. Returns the number of messages sent (0 or 1)."""
    tenant, run = item.tenant, item.run
    if not tenant.contact_email:
        return 0
    if item.status == "done":
        subject, lines = f"move of {tenant.slug} done", [
            f"Your data now lives in {PLACES[item.plan.target]} of its own; every record was verified after "
            "the copy. Nothing changes for you."]
    elif run is not None and run.status in (RunStatus.ROLLED_BACK, RunStatus.CANCELLED):
        subject, lines = f"move of {tenant.slug} rolled back", [
            "The planned move of your data did not complete and was rolled back: your data stays where it "
            "was, unchanged and fully available.", "We will tell you when a new move is planned."]
    elif run is not None:
        subject, lines = f"move of {tenant.slug} did not complete", [
            "The planned move of your data did not complete. Our staff have been alerted and are looking "
            "into it; your data is safe."]
    else:
        subject, lines = f"move of {tenant.slug} not taking place", [
            "The planned move of your data will not take place now; your data stays where it is, unchanged "
            "and fully available.", "We will tell you when a new move is planned."]
    return _send([_message(tenant, subject, lines)])
