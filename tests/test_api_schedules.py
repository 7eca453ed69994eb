"""The batch API: `/schedules` CRUD, run now, suspend/resume, a schedule's runs
with filters, a job run and cancelling it — through the real API stack (bearer
tokens, roles, error mapping) on PostgreSQL; and a job's spans linked to its
run (tokens, cost, items) once they arrive through `/v1/traces`."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client

from deployments import actions
from deployments.audit import SYSTEM
from deployments.models import AuditEvent, JobRun, Schedule
from telemetry.jobs import link_job_runs

from .factories import AgentFactory, DeploymentFactory, VersionFactory
from .otlp_support import export, give_token, llm_attrs, make_span, post

API = "/api/v1"


@pytest.fixture
def batch(world):
    agent = AgentFactory(team=world.team, slug="nightly", pattern="batch")
    version = VersionFactory(agent=agent, number=1, command=["true"], image="", port=None)
    return DeploymentFactory(agent=agent, version=version, target=world.target)


def send(client: Client, method: str, path: str, body=None):
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} \
        if body is not None else {}
    return getattr(client, method)(f"{API}{path}", **kwargs)


def created(world, batch, **fields) -> dict:
    body = {"deployment_id": batch.pk, "name": "nightly", "cron": "30 2 * * *",
            "timezone": "Europe/Paris", **fields}
    answer = send(world.client("operator"), "post", "/schedules", body)
    assert answer.status_code == 201, answer.content
    return answer.json()


def test_a_schedule_shows_its_next_five_firings_in_its_own_zone(world, batch):
    schedule = created(world, batch)
    assert schedule["concurrency_policy"] == "forbid" and schedule["origin"] == "api"
    firings = [datetime.fromisoformat(t) for t in schedule["next_runs"]]
    assert len(firings) == 5 and firings == sorted(firings)
    paris = ZoneInfo("Europe/Paris")
    for at in firings:
        assert at.utcoffset() == at.astimezone(paris).utcoffset()  # written in Paris time
        assert (at.hour, at.minute) in {(2, 30), (3, 30)}  # 03:30 only on a spring-forward day
    assert firings[0] > datetime.now(UTC)
    assert firings[1] - firings[0] in {timedelta(hours=23), timedelta(hours=24),
                                      timedelta(hours=25)}
    stored = Schedule.objects.get(pk=schedule["id"])
    assert stored.next_due_at == firings[0]
    assert AuditEvent.objects.filter(action="schedule.create", object_id=str(stored.pk)).exists()


@pytest.mark.parametrize("fields, field", [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * * *"}, "cron"),
    ({"cron": "*/10 * * * * *"}, "cron"),  # six fields without seconds enabled
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"name": "Not A Slug"}, "name"),
    ({"retries": -1}, "retries"),
    ({"concurrency_policy": "sometimes"}, "concurrency_policy"),
])
def test_bad_input_is_a_422_naming_the_field_and_creates_nothing(world, batch, fields, field):
    body = {"deployment_id": batch.pk, "name": "nightly", "cron": "30 2 * * *", **fields}
    answer = send(world.client("operator"), "post", "/schedules", body)
    assert answer.status_code == 422, answer.content
    assert field in json.dumps(answer.json()["detail"])
    assert not Schedule.objects.exists()


def test_seconds_cron_duplicates_and_other_patterns(world, batch):
    fast = created(world, batch, name="fast", cron="*/10 * * * * *", seconds=True,
                   timezone="UTC")
    gaps = {datetime.fromisoformat(b) - datetime.fromisoformat(a)
            for a, b in zip(fast["next_runs"], fast["next_runs"][1:], strict=False)}
    assert gaps == {timedelta(seconds=10)}
    again = send(world.client("operator"), "post", "/schedules",
                 {"deployment_id": batch.pk, "name": "fast", "cron": "@hourly"})
    assert again.status_code == 409 and "fast" in answer_text(again)
    service = send(world.client("operator"), "post", "/schedules",
                   {"deployment_id": world.deployment.pk, "name": "x", "cron": "@hourly"})
    assert service.status_code == 422 and "deployment_id" in answer_text(service)
    assert Schedule.objects.count() == 1


def answer_text(answer) -> str:
    return json.dumps(answer.json())


def test_roles_viewers_read_operators_write_outsiders_see_nothing(world, batch):
    schedule = created(world, batch)
    path = f"/schedules/{schedule['id']}"
    assert send(world.client("viewer"), "get", path).status_code == 200
    assert send(world.client("viewer"), "patch", path, {"cron": "@daily"}).status_code == 403
    assert send(world.client("viewer"), "post", f"{path}/trigger", {}).status_code == 403
    assert send(world.client("operator", scope="read"), "post", f"{path}/suspend"
                ).status_code == 403
    for method, suffix, body in (("get", "", None), ("patch", "", {"cron": "@daily"}),
                                 ("delete", "", None), ("post", "/trigger", {}),
                                 ("get", "/runs", None)):
        assert send(world.client("outsider"), method, f"{path}{suffix}", body).status_code == 404
    assert send(world.client("outsider"), "get", "/schedules").json()["count"] == 0
    assert send(world.client(None), "get", "/schedules").status_code == 401
    listed = send(world.client("viewer"), "get", f"/schedules?deployment={batch.pk}").json()
    assert [s["name"] for s in listed["items"]] == ["nightly"]
    assert Schedule.objects.get().cron == "30 2 * * *"


def test_update_suspend_resume_and_delete(world, batch):
    schedule = created(world, batch)
    path = f"/schedules/{schedule['id']}"
    op = world.client("operator")
    changed = send(op, "patch", path, {"cron": "0 * * * *", "timezone": "UTC"}).json()
    assert changed["cron"] == "0 * * * *"
    firings = [datetime.fromisoformat(t) for t in changed["next_runs"]]
    assert {t.minute for t in firings} == {0} and {t.utcoffset() for t in firings} == {
        timedelta(0)}
    bad = send(op, "patch", path, {"timezone": "Nowhere/Else"})
    assert bad.status_code == 422 and "timezone" in answer_text(bad)
    assert send(op, "patch", path, {"cron": None}).status_code == 422
    suspended = send(op, "post", f"{path}/suspend").json()
    assert suspended["suspended"] and suspended["suspended_reason"] == "operator"
    assert suspended["next_runs"] == []
    resumed = send(op, "post", f"{path}/resume").json()
    assert not resumed["suspended"] and len(resumed["next_runs"]) == 5
    assert send(op, "delete", path).status_code == 204
    assert send(op, "get", path).status_code == 404
    actions_done = set(AuditEvent.objects.filter(object_id=str(schedule["id"]))
                       .values_list("action", flat=True))
    assert {"schedule.update", "schedule.suspend", "schedule.resume",
            "schedule.delete"} <= actions_done


def test_run_now_history_filters_detail_and_cancel(world, batch):
    schedule = created(world, batch, input={"items": ["a", "b"]})
    op = world.client("operator")
    path = f"/schedules/{schedule['id']}"
    first = send(op, "post", f"{path}/trigger", {})
    assert first.status_code == 201, first.content
    run = first.json()
    assert run["trigger"] == "manual" and run["status"] == "pending" and run["attempt"] == 1
    assert re.fullmatch(r"[0-9a-f]{32}", run["trace_id"])
    own = send(op, "post", f"{path}/trigger", {"input": "just this"}).json()
    assert JobRun.objects.get(pk=own["id"]).input == "just this"
    assert JobRun.objects.get(pk=run["id"]).input == {"items": ["a", "b"]}

    viewer = world.client("viewer")
    every = send(viewer, "get", f"{path}/runs").json()
    assert every["count"] == 2 and every["items"][0]["id"] == own["id"]  # newest first
    cancelled = send(op, "post", f"/job-runs/{run['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    again = send(op, "post", f"/job-runs/{run['id']}/cancel")
    assert again.status_code == 409 and "finished" in answer_text(again)
    by_status = send(viewer, "get", f"{path}/runs?status=cancelled").json()
    assert [r["id"] for r in by_status["items"]] == [run["id"]]
    assert send(viewer, "get", f"{path}/runs?trigger=schedule").json()["count"] == 0
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert send(viewer, "get", f"{path}/runs", None).json()["count"] == 2
    assert viewer.get(f"{API}{path}/runs", {"since": later}).json()["count"] == 0
    assert viewer.get(f"{API}{path}/runs", {"until": later}).json()["count"] == 2
    assert send(viewer, "get", f"{path}/runs?status=exploded").status_code == 422
    assert viewer.get(f"{API}{path}/runs", {"since": "yesterday"}).status_code == 422

    detail = send(viewer, "get", f"/job-runs/{own['id']}").json()
    assert detail["schedule_id"] == schedule["id"] and detail["deployment_id"] == batch.pk
    assert send(world.client("outsider"), "get", f"/job-runs/{own['id']}").status_code == 404
    assert send(viewer, "post", f"/job-runs/{own['id']}/cancel").status_code == 403
    assert JobRun.objects.get(pk=own["id"]).status == "pending"


def test_a_paused_deployment_runs_nothing_now(world, batch):
    schedule = created(world, batch)
    actions.update_deployment(batch, state="paused", actor=SYSTEM)
    answer = send(world.client("operator"), "post", f"/schedules/{schedule['id']}/trigger", {})
    assert answer.status_code == 409 and "paused" in answer_text(answer)
    assert not JobRun.objects.exists()


# Telemetry: a job's spans linked to its run ---------------------------------------------


def test_a_jobs_spans_give_its_run_tokens_cost_and_items(world, batch, monkeypatch):
    schedule = created(world, batch)
    run = JobRun.objects.get(pk=send(world.client("operator"), "post",
                                     f"/schedules/{schedule['id']}/trigger", {}).json()["id"])
    token = give_token(batch)
    trace = bytes.fromhex(run.trace_id)
    parent = bytes.fromhex("00f067aa0ba902b7")  # the control plane's span (TRACEPARENT)
    root = make_span(trace_id=trace, parent=parent, name="batch_job",
                     attrs={"hangar.job.items": 4})
    root.flags = 0x300  # its parent is remote: the root of the run
    chats = [make_span(trace_id=trace, parent=root.span_id, name="chat gpt-4o-mini", kind=3,
                       attrs=llm_attrs("gpt-4o-mini", 100, 50)) for _ in range(2)]
    published = []
    monkeypatch.setattr("telemetry.jobs.publish",
                        lambda team, name, payload, **kw: published.append((name, payload)))
    monkeypatch.setattr("telemetry.storage.live.ANNOUNCER.finished", lambda *a: None)
    assert post(Client(), token, export([root, *chats])).status_code == 200

    assert link_job_runs(world.team.pk, batch.pk) == 1
    run.refresh_from_db()
    assert (run.input_tokens, run.output_tokens, run.items) == (200, 100, 4)
    assert run.cost is not None and run.cost > 0
    assert published == [("job_run.changed", {"deployment": batch.pk, "schedule": run.schedule_id,
                                              "run": run.pk, "status": run.status})]
    assert link_job_runs(world.team.pk, batch.pk) == 0  # idempotent: nothing new
    detail = send(world.client("viewer"), "get", f"/job-runs/{run.pk}").json()
    assert detail["items"] == 4 and detail["input_tokens"] == 200 and detail["cost"] != "0"

    # The page's trace link leads to the run of that trace, for members only.
    viewer = Client()
    viewer.force_login(world.users["viewer"])
    link = viewer.get(f"/deployments/{batch.pk}/traces/{run.trace_id}/")
    assert link.status_code == 302 and re.search(r"/runs/\d+/$", link["Location"])
    outsider = Client()
    outsider.force_login(world.users["outsider"])
    assert outsider.get(f"/deployments/{batch.pk}/traces/{run.trace_id}/"
                        ).status_code == 404
    assert viewer.get(f"/deployments/{batch.pk}/traces/{'0' * 31}1/"
                      ).status_code == 404
