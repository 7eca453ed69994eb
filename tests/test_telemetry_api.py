"""Runs, traces, costs and budgets through the REST API: filters, the span tree,
who may read and write, and audited budget changes."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from deployments.models import AuditEvent
from telemetry import storage
from telemetry.models import Budget, ComputeCost, Run

from .factories import DeploymentFactory
from .otlp_support import agent_trace, export, give_token, make_span, new_trace_id, post


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr(storage.ANNOUNCER, "finished", lambda *args: None)


@pytest.fixture
def runs(world):
    """Three runs on the team's deployment, one on the outsider's."""
    token = give_token(world.deployment)
    now = time.time_ns()
    traces = [
        agent_trace(model="gpt-4o-mini", calls=((1000, 100),), start_ns=now - 3_000_000_000),
        agent_trace(model="gpt-4o", calls=((50_000, 2000),), start_ns=now - 2_000_000_000),
        agent_trace(model="offline-echo", calls=((5, 5),), error="model crashed",
                    start_ns=now - 1_000_000_000),
    ]
    for spans in traces:
        assert post(Client(), token, export(spans)).status_code == 200
    foreign = DeploymentFactory(agent__team=world.other_team, agent__slug="alien")
    assert post(Client(), give_token(foreign), export(agent_trace())).status_code == 200
    return {r.model: r for r in Run.objects.filter(deployment_id=world.deployment.pk)}


def get(world, who, path, **params):
    return world.client(who).get(f"/api/v1{path}", params)


def send(world, who, method, path, body=None):
    client = world.client(who)
    return getattr(client, method)(f"/api/v1{path}", data=json.dumps(body) if body else None,
                                   content_type="application/json")


# Runs ------------------------------------------------------------------------------------------


def test_runs_list_newest_first_with_costs(world, runs):
    response = get(world, "viewer", "/runs")
    assert response.status_code == 200
    data = response.json()
    assert data["count"] == 3  # the outsider's run never shows
    items = data["items"]
    assert [i["model"] for i in items] == ["offline-echo", "gpt-4o", "gpt-4o-mini"]
    unknown = items[0]
    assert unknown["status"] == "error" and unknown["error"] == "model crashed"
    assert unknown["cost_usd"] is None and unknown["cost_status"] == "unknown"
    mini = items[2]
    assert mini["cost_status"] == "priced"
    assert Decimal(mini["cost_usd"]) == runs["gpt-4o-mini"].cost_usd > 0
    assert mini["trace_id"] == runs["gpt-4o-mini"].trace_id.hex
    assert len(mini["root_span_id"]) == 16


@pytest.mark.parametrize("params,models", [
    ({"status": "error"}, {"offline-echo"}),
    ({"status": "ok"}, {"gpt-4o", "gpt-4o-mini"}),
    ({"min_cost": "0.01"}, {"gpt-4o"}),
    ({"max_cost": "0.01"}, {"gpt-4o-mini"}),
    ({"min_cost": "0", "max_cost": "100"}, {"gpt-4o", "gpt-4o-mini"}),
    ({"cost_unknown": "true"}, {"offline-echo"}),
    ({"model": "gpt-4o"}, {"gpt-4o"}),
])
def test_runs_filters(world, runs, params, models):
    params["deployment"] = world.deployment.pk
    items = get(world, "viewer", "/runs", **params).json()["items"]
    assert {i["model"] for i in items} == models


def test_runs_time_range(world, runs):
    middle = runs["gpt-4o"].started_at
    after = get(world, "viewer", "/runs", since=middle.isoformat()).json()["items"]
    assert {i["model"] for i in after} == {"gpt-4o", "offline-echo"}
    before = get(world, "viewer", "/runs", until=middle.isoformat()).json()["items"]
    assert {i["model"] for i in before} == {"gpt-4o-mini"}


def test_run_and_trace_are_scoped(world, runs):
    run = runs["gpt-4o"]
    assert get(world, "viewer", f"/runs/{run.pk}").status_code == 200
    assert get(world, "outsider", f"/runs/{run.pk}").status_code == 404
    assert get(world, "outsider", f"/runs/{run.pk}/trace").status_code == 404
    assert Client().get(f"/api/v1/runs/{run.pk}").status_code == 401
    foreign = Run.objects.exclude(deployment_id=world.deployment.pk).get()
    assert get(world, "admin", f"/runs/{foreign.pk}").status_code == 404
    assert get(world, "outsider", f"/runs/{foreign.pk}").status_code == 200


def test_trace_is_a_span_tree_with_tokens_and_cost(world, runs):
    run = runs["gpt-4o"]
    trace = get(world, "viewer", f"/runs/{run.pk}/trace").json()
    assert trace["trace_id"] == run.trace_id.hex and trace["span_count"] == 2
    (root,) = trace["spans"]
    assert root["name"] == "invoke_agent" and root["parent_span_id"] is None
    assert root["kind"] == "server" and root["offset_ms"] == 0
    (chat,) = root["children"]
    assert chat["parent_span_id"] == root["span_id"] and chat["llm"] is True
    assert (chat["input_tokens"], chat["output_tokens"]) == (50_000, 2000)
    assert Decimal(chat["cost_usd"]) == run.cost_usd
    assert chat["attributes"]["gen_ai.request.model"] == "gpt-4o"
    assert chat["offset_ms"] == pytest.approx(1.0)


def test_trace_shows_errors_and_events(world):
    token = give_token(world.deployment)
    span = make_span(trace_id=new_trace_id(), error="boom", events=[
        {"name": "exception", "attributes": {"exception.type": "ValueError",
                                             "exception.message": "bad"}}])
    post(Client(), token, export([span]))
    run = Run.objects.get()
    (root,) = get(world, "viewer", f"/runs/{run.pk}/trace").json()["spans"]
    assert root["status"] == "error" and root["status_message"] == "boom"
    assert root["events"][0]["attributes"]["exception.type"] == "ValueError"


# Costs -----------------------------------------------------------------------------------------


def test_cost_summary_per_deployment_agent_and_team(world, runs):
    now = timezone.now()
    ComputeCost.objects.create(team_id=world.team.pk, agent_id=world.agent.pk,
                               deployment_id=world.deployment.pk, instance="bot-1",
                               hour=now.replace(minute=0, second=0, microsecond=0),
                               seconds=3600, cpu=Decimal("0.5"), memory_mb=256,
                               cost_usd=Decimal("0.25"))
    llm = runs["gpt-4o"].cost_usd + runs["gpt-4o-mini"].cost_usd
    for scope in ({"deployment": world.deployment.pk}, {"agent": world.agent.pk},
                  {"team": world.team.pk}, {}):
        data = get(world, "viewer", "/costs", **scope).json()
        totals = data["totals"]
        assert Decimal(totals["llm_usd"]) == llm, scope
        assert Decimal(totals["compute_usd"]) == Decimal("0.25")
        assert Decimal(totals["total_usd"]) == llm + Decimal("0.25")
        assert totals["runs"] == 3 and totals["unpriced_runs"] == 1
        assert len(data["series"]) == 31 and data["bucket"] == "day"
        today = data["series"][-1]
        assert Decimal(today["total_usd"]) == llm + Decimal("0.25")
    hourly = get(world, "viewer", "/costs", team=world.team.pk, bucket="hour",
                 since=(now - timedelta(hours=5)).isoformat()).json()
    assert len(hourly["series"]) in (5, 6)
    # Hourly buckets cover at most 31 days: a longer window is answered for
    # its last 31 days, and the answer says so.
    longer = get(world, "viewer", "/costs", bucket="hour", until=now.isoformat(),
                 since=(now - timedelta(days=40)).isoformat()).json()
    assert len(longer["series"]) in (31 * 24, 31 * 24 + 1)
    answered = datetime.fromisoformat(longer["until"]) - datetime.fromisoformat(longer["since"])
    assert answered == timedelta(days=31)
    empty = get(world, "viewer", "/costs", since=now.isoformat(),
                until=(now - timedelta(days=1)).isoformat()).json()
    assert empty["series"] == [] and empty["totals"]["runs"] == 0


def test_costs_are_scoped(world, runs):
    assert get(world, "outsider", "/costs", deployment=world.deployment.pk).status_code == 404
    assert get(world, "outsider", "/costs", team=world.team.pk).status_code == 404
    mine = get(world, "outsider", "/costs").json()["totals"]
    assert mine["runs"] == 1  # only the outsider's own team


# Budgets ---------------------------------------------------------------------------------------

BUDGET = {"team_id": "{team}", "name": "monthly", "amount_usd": "10.00",
          "thresholds": [{"percent": 50, "action": "alert"}, {"percent": 100, "action": "pause"}],
          "webhook_url": "https://hooks.example.com/T000/B000/XXXX"}


def budget_body(world, **changes):
    body = {**BUDGET, **changes}
    body["team_id"] = world.team.pk
    return body


@pytest.mark.parametrize("who,status", [("admin", 201), ("operator", 403), ("viewer", 403),
                                        ("outsider", 404)])
def test_only_team_admins_create_budgets(world, who, status, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        response = send(world, who, "post", "/budgets", budget_body(world))
    assert response.status_code == status, response.content
    if status == 201:
        data = response.json()
        assert data["has_webhook"] is True and "webhook_url" not in data
        assert data["spent_usd"] is not None and data["percent"] == 0
        event = AuditEvent.objects.get(action="budget.create")
        assert event.actor_label.startswith("admin") and event.source == "api"
        assert "hooks.example.com" not in json.dumps(event.after)
    else:
        assert not Budget.objects.exists()


def test_budget_read_update_delete_and_roles(world, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        budget_id = send(world, "admin", "post", "/budgets", budget_body(world)).json()["id"]
        assert get(world, "viewer", f"/budgets/{budget_id}").status_code == 200
        assert get(world, "outsider", f"/budgets/{budget_id}").status_code == 404
        assert get(world, "viewer", "/budgets").json()["count"] == 1
        assert get(world, "outsider", "/budgets").json()["count"] == 0
        for who, status in (("viewer", 403), ("operator", 403), ("outsider", 404)):
            assert send(world, who, "patch", f"/budgets/{budget_id}",
                        {"amount_usd": "5"}).status_code == status
            assert send(world, who, "delete", f"/budgets/{budget_id}").status_code == status
        response = send(world, "admin", "patch", f"/budgets/{budget_id}",
                        {"amount_usd": "25.50", "enabled": False})
    assert response.status_code == 200 and response.json()["amount_usd"] == "25.5"
    assert AuditEvent.objects.get(action="budget.update").before["amount_usd"] == "10.00"
    assert send(world, "admin", "delete", f"/budgets/{budget_id}").status_code == 204
    assert AuditEvent.objects.filter(action="budget.delete").count() == 1


@pytest.mark.parametrize("changes,status", [
    ({"thresholds": [{"percent": 0, "action": "alert"}]}, 422),
    ({"thresholds": [{"percent": 50, "action": "explode"}]}, 422),
    ({"thresholds": [{"percent": 50, "action": "alert"}, {"percent": 50, "action": "pause"}]},
     422),
    ({"amount_usd": "0"}, 422),
    ({"amount_usd": None}, 422),
    ({"webhook_url": "ftp://example.com/x"}, 422),
    ({"agent_id": 10**9}, 404),
])
def test_budget_validation(world, changes, status):
    response = send(world, "admin", "post", "/budgets", budget_body(world, **changes))
    assert response.status_code == status, response.content
    assert not Budget.objects.exists()


def test_duplicate_budget_name_is_a_409(world, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        assert send(world, "admin", "post", "/budgets", budget_body(world)).status_code == 201
    response = send(world, "admin", "post", "/budgets", budget_body(world))
    assert response.status_code == 409 and "already has a budget" in response.content.decode()
    assert Budget.objects.count() == 1
