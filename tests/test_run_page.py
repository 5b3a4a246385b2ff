"""The run page through real admin requests (Django test client, logged-in staff) after real
moves: the steps as a timeline, the chart of rows/s and lag drawn from the samples the copy
recorded, the live JSON (steps, samples, buttons, fragments) while a held online move waits
and after it, times to the second; the samples' throttle and bound; the API token page that a
reload cannot make twice; a refusal's "run N" as a link."""
import re
from datetime import datetime, timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from api.admin import CREATED_SESSION_KEY
from api.models import ApiToken
from migration_jobs import services
from migration_jobs.models import MigrationRun, RunStatus
from migration_jobs.runs.context import MAX_SAMPLES, RunContext
from tests.helpers import execute_held, fill, texts

pytestmark = pytest.mark.django_db(transaction=True)

SECONDS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"  # a moment to the second


def page_url(run):
    return reverse("admin:migration_jobs_migrationrun_change", args=[run.pk])


def live_url(run):
    return reverse("admin:migration_jobs_migrationrun_live", args=[run.pk])


def timeline(html) -> list[tuple[str, str]]:
    """(step, status) of each <li> of the timeline, in order."""
    block = re.search(r'<ol class="run-steps" id="run-steps">(.*?)</ol>', html, re.S)
    assert block, "no timeline"
    return re.findall(r'<li data-step="(\w+)" data-status="(\w+)"', block.group(1))


def polyline(html, series) -> list[tuple[float, float]]:
    match = re.search(rf'<polyline class="\w+" data-series="{series}" points="([^"]*)"', html)
    return [tuple(map(float, pair.split(","))) for pair in match.group(1).split()] if match else []


def test_run_page_after_a_real_move_timeline_chart_times_and_folded_report(staff, make_tenant, cleanup):
    tenant = make_tenant("pager")
    cleanup(tenant)
    fill(tenant, 6)
    run = services.execute(services.request_move(tenant, "schema"))
    assert run.status == RunStatus.SUCCEEDED, run.error

    # The copy recorded samples: from 0 rows to every row, with a rate.
    run.refresh_from_db()
    assert len(run.samples) >= 2 and run.samples[0]["rows"] == 0
    assert run.samples[-1]["rows"] == run.rows_copied > 0
    assert max(s["rows_per_second"] for s in run.samples) > 0  # (0 while the indexes are built after the rows)

    html = staff.get(page_url(run)).content.decode()
    steps = [s.name for s in run.steps.order_by("order")]
    assert timeline(html) == [(name, "succeeded") for name in steps]
    assert "<strong>Copy the rows</strong> <code>copy</code>" in html  # each step's label and name
    copy = run.steps.get(name="copy")
    item = re.search(r'<li data-step="copy".*?</li>', html, re.S).group(0)
    assert re.search(rf'started <time datetime="[^"]+">{SECONDS}</time>', item)
    assert f"{copy.rows} rows" in item and services.human_duration(copy.duration) in item
    assert copy.message in item
    # The chart: two series on labelled axes, the rate drawn from the copy's samples.
    assert '<svg class="run-chart"' in html and ">rows/s<" in html and ">lag<" in html
    assert len(polyline(html, "rows_per_second")) == len(run.samples)
    assert 'id="run-chart"' in html and "cdn" not in html.lower()
    # Times to the second in the header and the fields; no inline table, no raw report field.
    assert re.search(rf'id="run-started">{SECONDS}<', html) and re.search(rf'id="run-finished">{SECONDS}<', html)
    assert len(re.findall(SECONDS, html)) >= len(steps) + 4
    assert '<td class="field-name">' not in html and "max-height: 40em" not in html
    assert html.index('id="run-steps"') < html.index('id="run-chart"') < html.index(">Timing</h2>") \
        < html.index('<details class="run-report">')  # the report folded, at the bottom
    # The run list: times to the second too.
    listing = staff.get(reverse("admin:migration_jobs_migrationrun_changelist")).content.decode()
    assert re.search(rf'<td class="field-started">{SECONDS}</td>', listing)
    # The JSON report: each step with its label and start, durations as seconds.
    report = services.run_report(run)
    assert [s["name"] for s in report["steps"]] == steps
    assert report["steps"][0]["label"] == "Preflight checks" and report["steps"][0]["started_at"]

    # Done: 100 % of the rows the copy counted (the preflight's total was an estimate).
    run.rows_total = run.rows_copied + 17
    run.save(update_fields=["rows_total"])
    html = staff.get(page_url(run)).content.decode()
    assert f'id="run-progress-text">100.0 % ({run.rows_copied} / {run.rows_copied} rows)<' in html

    # The live JSON of the finished run: not live, its steps, its samples, the report fragment.
    live = staff.get(live_url(run)).json()
    assert live["live"] is False and [s["name"] for s in live["steps"]] == steps
    assert live["samples"] == run.samples and live["actions"] == []
    assert set(live["html"]) == {"run-steps", "run-chart", "run-actions", "run-report"}
    assert "<polyline" in live["html"]["run-chart"] and 'data-step="verify"' in live["html"]["run-steps"]


def test_live_json_follows_a_held_online_move_without_a_reload(staff, make_tenant, cleanup):
    tenant = make_tenant("livey")
    cleanup(tenant)
    fill(tenant, 3)
    run = services.request_move(tenant, "schema", online=True, hold_cutover=True)
    html = staff.get(page_url(run)).content.decode()
    # Updated in place while live; the one reload is when the run has ended (the record below).
    assert 'data-live="1"' in html and html.count("window.location.reload") == 1
    assert "if (d.live) setTimeout(poll, 2000); else window.location.reload();" in html
    assert "No samples yet" in html and timeline(html)[0] == ("preflight", "pending")
    seen = {}

    def look_and_cut_over():
        live = staff.get(live_url(run)).json()
        seen["live"] = live
        staff.post(reverse("admin:migration_jobs_migrationrun_control", args=[run.pk]), {"op": "cut_over"})

    finished = execute_held(run, look_and_cut_over, seen, rounds=1)

    assert "error" not in seen, seen
    assert finished.status == RunStatus.SUCCEEDED, finished.error
    live = seen["live"]
    assert live["live"] is True and live["state"] == "held in sync: waiting for you to cut over"
    statuses = dict((s["name"], s["status"]) for s in live["steps"])
    assert statuses["copy"] == "succeeded" and statuses["catch_up"] == "running" and statuses["cutover"] == "pending"
    assert max(s["rows"] or 0 for s in live["samples"]) == finished.rows_copied  # the copy's samples
    ops = [a["op"] for a in live["actions"]]
    assert {"cancel", "cut_over", "read_share_0", "read_share_10", "read_share_50", "read_share_100"} <= set(ops)
    assert 'name="op" value="cut_over"' in live["html"]["run-actions"]
    assert 'data-step="catch_up" data-status="running"' in live["html"]["run-steps"]
    assert "<polyline" in live["html"]["run-chart"] and "run-report" not in live["html"]  # the report at the end
    after = staff.get(live_url(run)).json()
    assert after["live"] is False and after["state"] == "succeeded" and after["actions"] == []
    assert {s["status"] for s in after["steps"]} == {"succeeded"}


def test_samples_are_throttled_merged_and_bounded(staff, make_tenant):
    tenant = make_tenant("sampled")
    run = services.request_move(tenant, "schema", online=True)
    ctx = RunContext(run)
    for rows in (0, 10, 20, 30):
        ctx.record_sample(rows_copied=rows)
    ctx.record_sample(lag_changes=7)
    run.refresh_from_db()
    # Within two seconds the newest point is replaced: the first and the current one stay.
    assert [(s["rows"], s["lag"]) for s in run.samples] == [(0, None), (30, 7)]
    assert run.samples[0]["rows_per_second"] == 0.0 and run.samples[1]["rows_per_second"] > 0
    # Points two seconds apart are kept; the list never outgrows MAX_SAMPLES, oldest point kept.
    start = timezone.now() - timedelta(hours=1)
    old = [{"t": (start + timedelta(seconds=3 * i)).isoformat(), "rows": i, "rows_per_second": 1.0, "lag": None}
           for i in range(MAX_SAMPLES)]
    MigrationRun.objects.filter(pk=run.pk).update(samples=old)
    ctx.run.refresh_from_db()
    ctx.record_sample(rows_copied=MAX_SAMPLES + 5, lag_changes=1)
    run.refresh_from_db()
    assert len(run.samples) <= MAX_SAMPLES and run.samples[0] == old[0] and run.samples[-1]["lag"] == 1
    assert run.samples[-2] == old[-1]  # the recent half kept whole
    # Both series on the page's chart: every point with a rate, every point with a lag.
    html = staff.get(page_url(run)).content.decode()
    assert len(polyline(html, "rows_per_second")) == sum(s["rows_per_second"] is not None for s in run.samples)
    span = services.human_duration(datetime.fromisoformat(run.samples[-1]["t"]) - start)
    assert len(polyline(html, "lag")) == 1 and ">lag<" in html and f">+{span}<" in html  # the span, one way


def test_reloading_the_token_created_page_makes_no_second_token(staff):
    response = staff.post("/admin/api/apitoken/add/", {"name": "once", "user": staff.user.pk, "scope": "read"})
    assert response.status_code == 302  # post/redirect/get
    shown = staff.get(response["Location"])
    plaintext = shown.context["token"]
    assert plaintext.startswith("tmt_") and plaintext in shown.content.decode()
    assert "no-store" in shown["Cache-Control"]
    session = Session.objects.get(session_key=staff.session.session_key).get_decoded()
    assert CREATED_SESSION_KEY.format(ApiToken.objects.get().pk) not in session  # gone once displayed
    assert plaintext not in str(session)
    again = staff.get(response["Location"])  # the reload
    assert again.status_code == 200 and again.context["token"] is None
    assert plaintext not in again.content.decode() and "cannot be" in again.content.decode()
    assert ApiToken.objects.count() == 1 and ApiToken.objects.get().matches(plaintext)
    assert Client().get(response["Location"]).status_code == 302  # to the login page


def test_a_refusal_names_the_run_in_the_way_as_a_link(staff, make_tenant, cleanup):
    tenant = make_tenant("busy")
    cleanup(tenant)
    run = services.request_move(tenant, "schema")
    link = f'<a href="{page_url(run)}">run {run.pk}</a>'
    tenants = reverse("admin:tenancy_tenant_changelist")
    data = {"action": "move_to_database", "_selected_action": [tenant.pk]}
    page = staff.post(tenants, data).content.decode()  # the confirmation page lists it, linked
    assert f"already has an active run ({link}, queued)" in page
    response = staff.post(tenants, {**data, "confirm": "yes"})
    assert any(f"busy: refused: tenant busy already has an active run ({link}, queued)" in t for t in texts(response, as_html=True))
    services.cancel(run)
    assert f"run {run.pk}" in staff.get(page_url(run)).content.decode()


def test_admin_pages_have_a_favicon_and_no_view_site_link(staff):
    for url in ("/admin/", reverse("admin:migration_jobs_migrationrun_changelist"), "/admin/login/"):
        html = (staff if url != "/admin/login/" else Client()).get(url).content.decode()
        assert '<link rel="icon" href="data:,">' in html, url
        assert "View site" not in html, url
