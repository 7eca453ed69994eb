"""Operator UI: pages render per role, forms validate inline, htmx gets partials."""
from __future__ import annotations

import pytest
from django.test import Client

from deployments.models import Agent, AuditEvent, Deployment

HX = {"HX-Request": "true"}


def login(world, who):
    client = Client()
    client.force_login(world.users[who])
    return client


def test_login_required_and_login_logout_work(world):
    anonymous = Client()
    response = anonymous.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    page = anonymous.get("/login/")
    assert b"Log in to Hangar" in page.content
    bad = anonymous.post("/login/", {"username": "viewer", "password": "wrong"})
    assert bad.status_code == 200 and b"correct username and password" in bad.content
    ok = anonymous.post("/login/", {"username": "viewer", "password": "pw-for-tests"})
    assert ok.status_code == 302
    assert b"Support bot" in anonymous.get("/").content
    anonymous.post("/logout/")
    assert anonymous.get("/").status_code == 302


def test_agent_list_shows_team_agents_with_health_and_no_foreign_ones(world):
    Deployment.objects.filter(pk=world.deployment.pk).update(health="Degraded")
    page = login(world, "viewer").get("/")
    html = page.content.decode()
    assert "Support bot" in html and "Real-time" in html
    assert "health-degraded" in html and "Degraded" in html
    assert "foreign" not in html
    assert "Register agent" not in html  # viewers cannot register


def test_agent_list_search_returns_a_partial_for_htmx(world):
    client = login(world, "viewer")
    response = client.get("/?q=spare", headers={**HX, "HX-Target": "agent-table"})
    html = response.content.decode()
    assert "<html" not in html and 'id="agent-table"' in html
    assert "Spare" in html and "Support bot" not in html


def test_agent_list_query_count_is_flat(world, django_assert_max_num_queries):
    from .factories import AgentFactory, DeploymentFactory

    for n in range(30):
        DeploymentFactory(agent=AgentFactory(team=world.team, slug=f"bulk-{n}"))
    client = login(world, "viewer")
    with django_assert_max_num_queries(10):
        response = client.get("/")
    assert response.content.decode().count("bulk-") == 30


def test_register_agent_with_inline_errors(world):
    client = login(world, "operator")
    response = client.post("/agents/new/", {"team": world.team.pk, "name": "X",
                                            "slug": "support-bot", "pattern": "batch"},
                           headers=HX)
    assert response.status_code == 422
    html = response.content.decode()
    assert "<html" not in html and 'id="agent-form"' in html
    assert "already exists" in html
    response = client.post("/agents/new/", {"team": world.team.pk, "name": "X",
                                            "slug": "Bad Slug", "pattern": "batch"})
    assert response.status_code == 422 and "Use lowercase letters" in response.content.decode()
    ok = client.post("/agents/new/", {"team": world.team.pk, "name": "Triage",
                                      "slug": "triage", "pattern": "stream"}, headers=HX)
    agent = Agent.objects.get(slug="triage")
    assert ok.status_code == 204 and ok["HX-Redirect"] == f"/agents/{agent.pk}/"
    event = AuditEvent.objects.get(action="agent.create", object_id=str(agent.pk))
    assert event.source == "ui" and event.actor_label == "operator"
    assert event.source_ip == "127.0.0.1"


def test_viewer_cannot_use_write_forms_and_outsider_gets_404(world):
    viewer = login(world, "viewer")
    assert viewer.get("/agents/new/").status_code == 403
    assert viewer.post(f"/agents/{world.agent.pk}/versions/", {"image": "x"}).status_code == 403
    assert viewer.post(f"/deployments/{world.deployment.pk}/scale/",
                       {"replicas": 3}).status_code == 403
    outsider = login(world, "outsider")
    assert outsider.get(f"/agents/{world.agent.pk}/").status_code == 404
    assert outsider.get(f"/deployments/{world.deployment.pk}/").status_code == 404
    assert outsider.post(f"/deployments/{world.deployment.pk}/scale/",
                         {"replicas": 3}).status_code == 404
    world.deployment.refresh_from_db()
    assert world.deployment.replicas == 1


def test_add_version_form(world):
    client = login(world, "operator")
    bad = client.post(f"/agents/{world.agent.pk}/versions/",
                      {"image": "img:3", "cpu": "0.5", "memory_mb": "8", "env": "NOEQUALS",
                       "pattern_settings": "{oops"}, headers=HX)
    html = bad.content.decode()
    assert bad.status_code == 422 and 'id="versions"' in html and "<html" not in html
    assert "Line 1 is not KEY=value" in html and "Not valid JSON" in html
    assert "greater than or equal to 16" in html
    good = client.post(f"/agents/{world.agent.pk}/versions/",
                       {"image": "img:3", "command": "python -m agent --mode 'real time'",
                        "cpu": "0.5", "memory_mb": "256", "env": "A=1\nB=two=2",
                        "secret_refs": "OPENAI_KEY"}, headers=HX)
    assert good.status_code == 200, good.content
    version = world.agent.versions.get(number=3)
    assert version.command == ["python", "-m", "agent", "--mode", "real time"]
    assert version.env == {"A": "1", "B": "two=2"} and version.secret_refs == ["OPENAI_KEY"]
    assert "v3" in good.content.decode()
    unknown = client.post(f"/agents/{world.agent.pk}/versions/",
                          {"image": "i", "cpu": "1", "memory_mb": "64", "secret_refs": "NOPE"},
                          headers=HX)
    assert unknown.status_code == 422 and "Unknown secret" in unknown.content.decode()


def test_create_deployment_and_scale_from_the_ui(world):
    client = login(world, "operator")
    response = client.post(f"/agents/{world.agent.pk}/deploy/",
                           {"version": world.spare_version.pk, "target": world.target.pk,
                            "environment": "staging", "replicas": 2, "state": "active"},
                           headers=HX)
    assert response.status_code == 204, response.content
    deployment = Deployment.objects.get(agent=world.agent, environment="staging")
    page = client.get(response["HX-Redirect"])
    assert b"staging" in page.content and b"Progressing" in page.content
    clash = client.post(f"/agents/{world.agent.pk}/deploy/",
                        {"version": world.spare_version.pk, "target": world.target.pk,
                         "environment": "staging", "replicas": 2, "state": "active"},
                        headers=HX)
    assert clash.status_code == 422 and "already exists" in clash.content.decode()
    scaled = client.post(f"/deployments/{deployment.pk}/scale/", {"replicas": 4}, headers=HX)
    html = scaled.content.decode()
    assert scaled.status_code == 200 and 'id="scale"' in html and "<html" not in html
    assert "Scaling to 4" in html
    deployment.refresh_from_db()
    assert deployment.replicas == 4 and deployment.generation == 2
    too_many = client.post(f"/deployments/{deployment.pk}/scale/", {"replicas": 80}, headers=HX)
    assert too_many.status_code == 422 and "Team policy allows at most 50" in \
        too_many.content.decode()
    negative = client.post(f"/deployments/{deployment.pk}/scale/", {"replicas": -2}, headers=HX)
    assert negative.status_code == 422
    deployment.refresh_from_db()
    assert deployment.replicas == 4
    # Dangerous actions need the deployment's name typed in.
    zero = client.post(f"/deployments/{deployment.pk}/scale/", {"replicas": 0}, headers=HX)
    assert zero.status_code == 422 and "type support-bot@staging to confirm" in \
        zero.content.decode()
    stop = client.post(f"/deployments/{deployment.pk}/state/", {"state": "stopped"})
    deployment.refresh_from_db()
    assert stop.status_code == 302 and deployment.state == "active"
    stop = client.post(f"/deployments/{deployment.pk}/state/",
                       {"state": "stopped", "confirm": "support-bot@staging"})
    assert stop.status_code == 302
    deployment.refresh_from_db()
    assert deployment.state == "stopped"
    client.post(f"/deployments/{deployment.pk}/delete/", {"confirm": "nope"})
    assert Deployment.objects.filter(pk=deployment.pk).exists()
    client.post(f"/deployments/{deployment.pk}/delete/", {"confirm": "support-bot@staging"})
    assert not Deployment.objects.filter(pk=deployment.pk).exists()


@pytest.mark.parametrize("who", ["admin", "operator", "viewer"])
def test_pages_render_for_every_member_role(world, who):
    client = login(world, who)
    for url in ["/", f"/agents/{world.agent.pk}/", f"/deployments/{world.deployment.pk}/"]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert b"sk-live-supersecret" not in response.content
    writable = b"Add a version" in client.get(f"/agents/{world.agent.pk}/").content
    assert writable == (who != "viewer")


def test_healthz(db):
    response = Client().get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    # What this process lost after commit (Redis down), see test_redis_down.
    assert set(response.json()["side_effects"]) == {"enqueue_failed", "publish_failed"}


def test_fleet_overview_filters_and_live_partial(world):
    from .factories import AgentFactory, DeploymentFactory

    DeploymentFactory(agent=AgentFactory(team=world.team, slug="batcher", pattern="batch"))
    Deployment.objects.filter(agent__slug="batcher").update(health="Degraded",
                                                            health_reason="1 of 2 replicas")
    client = login(world, "viewer")
    html = client.get("/fleet/").content.decode()
    assert "support-bot" in html and "batcher" in html and "foreign" not in html
    assert 'data-live-events="deployment.health' in html
    degraded = client.get("/fleet/?health=Degraded", headers={**HX, "HX-Target": "fleet-table"})
    body = degraded.content.decode()
    assert "<html" not in body and "batcher" in body and "support-bot@" not in body
    assert "1 of 2 replicas" in body
    assert "batcher" not in client.get("/fleet/?pattern=realtime").content.decode()
    assert "batcher" in client.get("/fleet/?q=batch").content.decode()


def test_fleet_overview_is_paginated_with_flat_queries(world, django_assert_max_num_queries):
    from deployments.models import Agent

    from .factories import VersionFactory

    agents = Agent.objects.bulk_create(
        [Agent(team=world.team, slug=f"fleet-{n}", name=f"Fleet {n}", pattern="realtime")
         for n in range(1000)])
    versions = [VersionFactory(agent=agents[0], number=100)]
    Deployment.objects.bulk_create([
        Deployment(agent=a, version=versions[0], target=world.target, environment="prod")
        for a in agents])
    client = login(world, "viewer")
    with django_assert_max_num_queries(12):
        response = client.get("/fleet/?page=3")
    html = response.content.decode()
    assert response.status_code == 200 and "1001 deployments" in html
    assert html.count("data-deployment=") == 50


def test_deployment_metrics_series(world):
    from deployments.models import DeploymentSample

    DeploymentSample.objects.create(deployment=world.deployment, desired=2, ready=1,
                                    cpu_percent=12.5, memory_bytes=50 * 2**20)
    data = login(world, "viewer").get(f"/deployments/{world.deployment.pk}/metrics/").json()
    assert data["ready"] == [1] and data["desired"] == [2] and data["memory_mib"] == [50.0]
    assert login(world, "outsider").get(
        f"/deployments/{world.deployment.pk}/metrics/").status_code == 404


def test_fleet_and_charts_show_runs_and_cost_from_telemetry(world):
    import uuid
    from datetime import timedelta
    from decimal import Decimal

    from django.utils import timezone

    from telemetry.models import Run

    d = world.deployment
    now = timezone.now()
    for n in range(10):
        Run.objects.create(team_id=world.team.pk, agent_id=d.agent_id, deployment_id=d.pk,
                           trace_id=uuid.uuid4(), root_span_id=n + 1, status="ok",
                           started_at=now - timedelta(seconds=10 + n), duration_ms=100 + n,
                           cost_usd=Decimal("0.0125"), input_tokens=5, output_tokens=7)
    client = login(world, "viewer")
    row = client.get("/fleet/").content.decode().split(f'data-deployment="{d.pk}"')[1]
    row = row.split("</tr>")[0]
    assert "<td>2.0</td>" in row  # 10 runs over the last five minutes
    assert "$0.1250" in row
    series = client.get(f"/deployments/{d.pk}/metrics/").json()["runs"]
    assert sum(series["per_minute"]) == 10
    assert abs(sum(series["cost"]) - 0.125) < 1e-9
    page = client.get(f"/deployments/{d.pk}/").content.decode()
    assert 'data-testid="cost-panel"' in page
