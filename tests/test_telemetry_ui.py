"""Dashboard pages: the run trace waterfall, a deployment's runs and cost panel,
team costs and budgets; who may see and do what."""
from __future__ import annotations

import re
import time
from decimal import Decimal
from unittest import mock

import pytest
from django.template.loader import render_to_string
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from deployments.audit import Actor
from deployments.models import AuditEvent
from telemetry import budgets, storage
from telemetry.models import Budget, BudgetEvent, ComputeCost, Run

from .otlp_support import (
    agent_trace,
    export,
    give_token,
    make_span,
    new_span_id,
    new_trace_id,
    post,
)


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr(storage.ANNOUNCER, "finished", lambda *args: None)


def browser(world, who: str) -> Client:
    client = Client()
    client.force_login(world.users[who])
    return client


@pytest.fixture
def run(world):
    token = give_token(world.deployment)
    spans = agent_trace(model="gpt-4o-mini", calls=((1200, 300), (40, 9)))
    trace_id, root_id = spans[0].trace_id, spans[0].span_id
    spans.append(make_span(trace_id=trace_id, parent=root_id, name="execute_tool search",
                           start_ns=spans[0].start_time_unix_nano + 30_000_000,
                           duration_ms=5, error="timeout",
                           events=[{"name": "exception",
                                    "attributes": {"exception.type": "TimeoutError"}}]))
    spans.append(make_span(trace_id=trace_id, parent=new_span_id(), name="orphan step",
                           start_ns=spans[0].start_time_unix_nano + 1_000_000))
    assert post(Client(), token, export(spans)).status_code == 200
    return Run.objects.get()


def test_run_trace_page_draws_a_waterfall(world, run):
    response = browser(world, "viewer").get(reverse("telemetry:run", args=[run.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    rows = re.findall(r'<details class="tm-wf-row([^"]*)" data-span="([0-9a-f]{16})"', html)
    assert len(rows) == 5
    assert html.index("invoke_agent") < html.index("chat gpt-4o-mini")
    assert any("tm-wf-error" in classes for classes, _ in rows)
    assert sum("tm-wf-llm" in classes for classes, _ in rows) == 2
    bars = re.findall(r'class="tm-wf-bar" style="left: ([\d.]+)%; width: ([\d.]+)%"', html)
    assert len(bars) == 5 and bars[0][0] == "0.000"
    assert all(0 <= float(left) <= 100 and 0 < float(width) <= 100 for left, width in bars)
    assert "parent missing" in html and "TimeoutError" in html
    assert "1,200→300 tok" in html
    assert 'data-testid="run-tokens">1,240 / 309<' in html


def test_run_page_is_scoped(world, run):
    assert browser(world, "outsider").get(
        reverse("telemetry:run", args=[run.pk])).status_code == 404
    response = Client().get(reverse("telemetry:run", args=[run.pk]))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_unknown_cost_is_shown_as_unknown(world):
    token = give_token(world.deployment)
    post(Client(), token, export(agent_trace(model="offline-echo", system="hangar-offline")))
    run = Run.objects.get()
    html = browser(world, "viewer").get(reverse("telemetry:run", args=[run.pk])).content.decode()
    assert 'data-testid="run-cost">unknown<' in html and "cost unknown" in html


def test_deployment_runs_page_and_its_partial(world, run):
    url = reverse("telemetry:deployment-runs", args=[world.deployment.pk])
    viewer = browser(world, "viewer")
    html = viewer.get(url).content.decode()
    assert reverse("telemetry:run", args=[run.pk]) in html
    assert 'data-testid="cost-panel"' in html and "<html" in html
    partial = viewer.get(url, {"status": "error"}, headers={"HX-Request": "true",
                                                             "HX-Target": "runs-table"})
    assert partial.status_code == 200 and "<html" not in partial.content.decode()
    assert "No runs match." in partial.content.decode()
    assert browser(world, "outsider").get(url).status_code == 404
    # An impossible date is ignored, not a server error.
    impossible = viewer.get(url, {"since": "2024-02-30T00:00"})
    assert impossible.status_code == 200
    assert reverse("telemetry:run", args=[run.pk]) in impossible.content.decode()


def test_cost_panel_partial_for_the_deployment_page(world, run):
    """The include the deployment page uses: given ``deployment``, it renders alone."""
    ComputeCost.objects.create(team_id=world.team.pk, agent_id=world.agent.pk,
                               deployment_id=world.deployment.pk, instance="bot-1",
                               hour=timezone.now().replace(minute=0, second=0, microsecond=0),
                               seconds=60, cpu=Decimal("1"), memory_mb=256,
                               cost_usd=Decimal("1.5"))
    request = RequestFactory().get("/")
    request.user = world.users["viewer"]
    html = render_to_string("telemetry/includes/cost_panel.html",
                            {"deployment": world.deployment}, request=request)
    today = run.cost_usd + Decimal("1.5")
    assert f'data-testid="cost-today">${today:,.2f}<' in html
    assert reverse("telemetry:run", args=[run.pk]) in html
    assert 'data-live-events="run.finished cost.tick budget.triggered budget.reverted"' in html
    assert f'data-live-deployment="{world.deployment.pk}"' in html
    assert html.count('class="tm-col"') == 14
    response = browser(world, "viewer").get(reverse("telemetry:cost-panel",
                                                    args=[world.deployment.pk]))
    assert response.status_code == 200 and "<html" not in response.content.decode()
    assert browser(world, "outsider").get(reverse("telemetry:cost-panel",
                                                  args=[world.deployment.pk])).status_code == 404


def test_team_costs_page_and_budget_forms(world, run):
    url = reverse("telemetry:team-costs", args=[world.team.pk])
    html = browser(world, "viewer").get(url).content.decode()
    assert "New budget" not in html and world.agent.name in html
    assert browser(world, "outsider").get(url).status_code == 404
    assert "New budget" in browser(world, "admin").get(url).content.decode()
    create = reverse("telemetry:budget-create", args=[world.team.pk])
    form = {"name": "cap", "amount_usd": "0.001", "thresholds": "50:alert, 100:pause"}
    assert browser(world, "operator").post(create, form).status_code == 403
    bad = browser(world, "admin").post(create, {**form, "thresholds": "50:explode"})
    assert bad.status_code == 422 and "percent:action" in bad.content.decode()
    with mock.patch("telemetry.tasks.evaluate_budget.delay"):
        ok = browser(world, "admin").post(create, {**form, "amount_usd": "0.01"})
    assert ok.status_code == 302
    budget = Budget.objects.get()
    assert budget.thresholds == [{"percent": 50, "action": "alert"},
                                 {"percent": 100, "action": "pause"}]
    assert AuditEvent.objects.get(action="budget.create").source == "ui"
    assert run.cost_usd > Decimal("0.0001")
    events = budgets.evaluate(budget) if run.cost_usd >= Decimal("0.01") else []
    if not events:  # make sure the team is over the cap
        ComputeCost.objects.create(team_id=world.team.pk, agent_id=world.agent.pk,
                                   deployment_id=world.deployment.pk, instance="x",
                                   hour=timezone.now().replace(minute=0, second=0,
                                                               microsecond=0),
                                   seconds=1, cpu=Decimal("1"), memory_mb=1,
                                   cost_usd=Decimal("1"))
        events = budgets.evaluate(budget)
    assert {e.action for e in events} == {"alert", "pause"}
    html = browser(world, "viewer").get(url).content.decode()
    assert html.count('data-testid="budget-banner"') == 2 and "were paused" in html
    assert 'data-testid="revert-' not in html  # viewers cannot revert
    pause = BudgetEvent.objects.get(action="pause")
    revert = reverse("telemetry:budget-event-revert", args=[pause.pk])
    assert browser(world, "viewer").post(revert).status_code == 403
    response = browser(world, "operator").post(revert)
    assert response.status_code == 302
    world.deployment.refresh_from_db()
    assert world.deployment.state == "active"
    html = browser(world, "operator").get(url).content.decode()
    assert html.count('data-testid="budget-banner"') == 1  # the alert is still up


def test_budget_update_and_delete_from_the_ui(world):
    with mock.patch("telemetry.tasks.evaluate_budget.delay"):
        budget = budgets.create_budget(world.team, name="cap", amount_usd=Decimal("5"),
                                       thresholds=[{"percent": 100, "action": "alert"}],
                                       actor=Actor(user=world.users["admin"]))
    update = reverse("telemetry:budget-update", args=[budget.pk])
    assert browser(world, "operator").post(update, {"amount_usd": "9"}).status_code == 403
    with mock.patch("telemetry.tasks.evaluate_budget.delay"):
        assert browser(world, "admin").post(update, {"amount_usd": "9"}).status_code == 302
    budget.refresh_from_db()
    assert budget.amount_usd == Decimal("9") and budget.enabled is False
    delete = reverse("telemetry:budget-delete", args=[budget.pk])
    assert browser(world, "outsider").post(delete).status_code == 404
    assert browser(world, "admin").post(delete).status_code == 302
    assert not Budget.objects.exists()


def test_team_costs_page_queries_do_not_grow_with_deployments(world, run,
                                                             django_assert_max_num_queries):
    from .factories import DeploymentFactory

    for i in range(5):
        DeploymentFactory(agent=world.spare_agent, target=world.target, environment=f"env-{i}")
    client = browser(world, "viewer")
    url = reverse("telemetry:team-costs", args=[world.team.pk])
    with django_assert_max_num_queries(20):
        assert client.get(url).status_code == 200


def test_costs_index_lists_readable_teams(world, run):
    html = browser(world, "viewer").get(reverse("telemetry:costs")).content.decode()
    assert world.team.name in html and world.other_team.name not in html


def test_trace_pages_stay_fast_with_many_spans(world, django_assert_max_num_queries):
    token = give_token(world.deployment)
    trace_id, root_id = new_trace_id(), new_span_id()
    start = time.time_ns()
    spans = [make_span(trace_id=trace_id, span_id=root_id, start_ns=start, duration_ms=500)]
    spans += [make_span(trace_id=trace_id, parent=root_id, name=f"step {i}",
                        start_ns=start + i * 1_000_000, duration_ms=1) for i in range(300)]
    post(Client(), token, export(spans))
    run = Run.objects.get()
    client = browser(world, "viewer")
    with django_assert_max_num_queries(12):
        assert client.get(reverse("telemetry:run", args=[run.pk])).status_code == 200
