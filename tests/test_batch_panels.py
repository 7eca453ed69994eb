"""A batch deployment's page panels (schedules, new schedule, job runs) and their
buttons, through Django's test client: what each role sees, what each button
does, the form's errors, and a panel re-rendered alone for its live update.
What the browser shows is checked in tests/test_batch_browser.py."""
from __future__ import annotations

import pytest
from django.test import Client

from deployments import actions
from deployments.audit import SYSTEM
from deployments.models import AuditEvent, JobRun, Schedule

from .factories import AgentFactory, DeploymentFactory, VersionFactory


@pytest.fixture
def batch(world):
    agent = AgentFactory(team=world.team, slug="nightly", pattern="batch")
    version = VersionFactory(agent=agent, number=1, command=["true"], image="", port=None)
    deployment = DeploymentFactory(agent=agent, version=version, target=world.target)
    actions.create_schedule(deployment, {"name": "nightly", "cron": "30 2 * * *",
                                         "timezone": "America/New_York"}, SYSTEM)
    return deployment


def client(world, who: str) -> Client:
    c = Client()
    c.force_login(world.users[who])
    return c


def htmx(**extra) -> dict:
    return {"HX-Request": "true", **extra}


def test_operators_see_the_panels_with_buttons_viewers_without(world, batch):
    page = client(world, "operator").get(f"/deployments/{batch.pk}/").content.decode()
    for panel in ("panel-batch-schedules", "panel-batch-new-schedule", "panel-batch-history"):
        assert f'id="{panel}"' in page
    assert "Run now" in page and "Suspend" in page and "Add schedule" in page
    # Next five firings at 02:30 New York time, written as such (EST or EDT).
    assert page.count("02:30:00 E") == 5
    viewer = client(world, "viewer").get(f"/deployments/{batch.pk}/").content.decode()
    assert 'id="panel-batch-schedules"' in viewer and viewer.count("02:30:00 E") == 5
    assert "Run now" not in viewer and "Add schedule" not in viewer
    assert client(world, "outsider").get(f"/deployments/{batch.pk}/").status_code == 404


def test_the_form_shows_each_error_on_its_field_and_keeps_the_input(world, batch):
    op = client(world, "operator")
    url = f"/deployments/{batch.pk}/schedules/"
    base = {"name": "hourly", "cron": "0 * * * *", "timezone": "UTC",
            "concurrency_policy": "forbid", "retries": "0"}
    for change, message in (({"cron": "0 * * *"}, "five fields"),
                            ({"timezone": "Moon/Base"}, "unknown time zone"),
                            ({"name": "nightly"}, "already has a schedule called"),
                            ({"input": "{not json"}, "Not valid JSON"),
                            ({"retries": "-2"}, "greater than or equal to 0")):
        answer = op.post(url, {**base, **change}, headers=htmx(**{
            "HX-Target": "panel-batch-new-schedule"}))
        assert answer.status_code == 422, change
        html = answer.content.decode()
        assert html.startswith('<section class="card batch" id="panel-batch-new-schedule"')
        assert message in html, (change, html)
        assert f'value="{({**base, **change})["name"]}"' in html  # nothing typed is lost
    assert Schedule.objects.filter(deployment=batch).count() == 1

    made = op.post(url, {**base, "input": '{"items": [1, 2]}'}, headers=htmx())
    assert made.status_code == 200 and made["HX-Trigger"] == "hangar:schedules"
    assert "Schedule hourly created" in made.content.decode()
    assert Schedule.objects.get(name="hourly").input == {"items": [1, 2]}


def test_buttons_trigger_suspend_resume_and_cancel(world, batch):
    op = client(world, "operator")
    schedule = batch.schedules.get()
    ran = op.post(f"/schedules/{schedule.pk}/trigger/", headers=htmx())
    assert ran.status_code == 200
    run = JobRun.objects.get(schedule=schedule)
    assert run.trigger == "manual" and f"run {run.pk} started" in ran.content.decode()
    history = op.get(f"/deployments/{batch.pk}/", headers=htmx(
        **{"HX-Target": "panel-batch-history"})).content.decode()
    assert history.startswith('<section class="card batch" id="panel-batch-history"')
    assert f'data-job-run="{run.pk}"' in history and "job-pending" in history
    assert "Cancel" in history

    suspended = op.post(f"/schedules/{schedule.pk}/suspend/", headers=htmx()).content.decode()
    assert "none while suspended" in suspended and "Resume" in suspended
    resumed = op.post(f"/schedules/{schedule.pk}/resume/", headers=htmx()).content.decode()
    assert resumed.count("02:30:00 E") == 5

    cancelled = op.post(f"/job-runs/{run.pk}/cancel/", headers=htmx()).content.decode()
    assert "job-cancelled" in cancelled
    again = op.post(f"/job-runs/{run.pk}/cancel/", headers=htmx())
    assert again.status_code == 409 and "already finished" in again.content.decode()
    done = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"schedule.trigger", "schedule.suspend", "schedule.resume", "job_run.cancel"} <= done


def test_viewers_and_outsiders_cannot_press_the_buttons(world, batch):
    schedule = batch.schedules.get()
    run = actions.trigger_schedule(schedule, SYSTEM)
    before = AuditEvent.objects.count()
    for who, status in (("viewer", 403), ("outsider", 404)):
        c = client(world, who)
        for url in (f"/schedules/{schedule.pk}/trigger/", f"/schedules/{schedule.pk}/suspend/",
                    f"/schedules/{schedule.pk}/resume/", f"/job-runs/{run.pk}/cancel/",
                    f"/deployments/{batch.pk}/schedules/"):
            assert c.post(url, {"name": "x", "cron": "@hourly"}).status_code == status, url
    assert AuditEvent.objects.count() == before
    assert JobRun.objects.count() == 1 and Schedule.objects.count() == 1
    assert Client().post(f"/schedules/{schedule.pk}/trigger/").status_code == 302  # log in


def test_a_paused_deployment_says_why_it_cannot_run_now(world, batch):
    actions.update_deployment(batch, state="paused", actor=SYSTEM)
    answer = client(world, "operator").post(f"/schedules/{batch.schedules.get().pk}/trigger/",
                                            headers=htmx())
    assert answer.status_code == 409 and "resume it to run jobs" in answer.content.decode()
    assert not JobRun.objects.exists()
