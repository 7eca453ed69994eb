"""The authorization matrix: every API route as admin, operator, viewer,
outsider and anonymous. Outsiders get 404 (nothing leaks), members below the
needed role get 403, anonymous callers get 401."""
from __future__ import annotations

import json

import pytest

from deployments.models import AuditEvent

RANK = {"viewer": 1, "operator": 2, "admin": 3}

# (id, method, path, body, role needed, status on success)
ROUTES = [
    ("get-team", "GET", "/teams/{team}", None, "viewer", 200),
    ("patch-team", "PATCH", "/teams/{team}", {"name": "Acme Corp"}, "admin", 200),
    ("delete-team", "DELETE", "/teams/{team}", None, "admin", 409),  # has deployments
    ("list-members", "GET", "/teams/{team}/members", None, "viewer", 200),
    ("add-member", "POST", "/teams/{team}/members", {"username": "newbie", "role": "viewer"},
     "admin", 201),
    ("patch-member", "PATCH", "/teams/{team}/members/{member}", {"role": "operator"},
     "admin", 200),
    ("delete-member", "DELETE", "/teams/{team}/members/{member}", None, "admin", 204),
    ("create-agent", "POST", "/agents",
     {"team_id": "{team}", "slug": "new-agent", "name": "New", "pattern": "batch"},
     "operator", 201),
    ("get-agent", "GET", "/agents/{agent}", None, "viewer", 200),
    ("patch-agent", "PATCH", "/agents/{agent}", {"description": "changed"}, "operator", 200),
    ("delete-agent", "DELETE", "/agents/{spare_agent}", None, "operator", 204),
    ("list-versions", "GET", "/agents/{agent}/versions", None, "viewer", 200),
    ("create-version", "POST", "/agents/{agent}/versions", {"image": "img:2", "port": 9000},
     "operator", 201),
    ("get-version", "GET", "/agents/{agent}/versions/1", None, "viewer", 200),
    ("delete-version", "DELETE", "/agents/{agent}/versions/2", None, "operator", 204),
    ("create-target", "POST", "/targets",
     {"team_id": "{team}", "name": "edge-1", "kind": "edge"}, "admin", 201),
    ("get-target", "GET", "/targets/{target}", None, "viewer", 200),
    ("patch-target", "PATCH", "/targets/{target}", {"labels": {"zone": "a"}}, "admin", 200),
    ("delete-target", "DELETE", "/targets/{spare_target}", None, "admin", 204),
    ("create-deployment", "POST", "/deployments",
     {"agent_id": "{agent}", "target_id": "{target}", "environment": "staging"},
     "operator", 201),
    ("get-deployment", "GET", "/deployments/{deployment}", None, "viewer", 200),
    ("patch-deployment", "PATCH", "/deployments/{deployment}", {"replicas": 3},
     "operator", 200),
    ("delete-deployment", "DELETE", "/deployments/{deployment}", None, "operator", 204),
    ("list-instances", "GET", "/deployments/{deployment}/instances", None, "viewer", 200),
    ("list-events", "GET", "/deployments/{deployment}/events", None, "viewer", 200),
    ("restart-deployment", "POST", "/deployments/{deployment}/restart", None, "operator", 200),
    ("rollback-deployment", "POST", "/deployments/{deployment}/rollback",
     {"revision": 2}, "operator", 200),
    ("list-revisions", "GET", "/deployments/{deployment}/revisions", None, "viewer", 200),
    # The world's deployment consumes no stream: past the role check, a 409.
    ("list-dead-letters", "GET", "/deployments/{deployment}/dead-letters", None, "viewer", 409),
    ("get-dead-letter", "GET", "/deployments/{deployment}/dead-letters/17", None, "viewer",
     409),
    ("replay-dead-letters", "POST", "/deployments/{deployment}/dead-letters/replay",
     {"all": True}, "operator", 409),
    ("purge-dead-letters", "POST", "/deployments/{deployment}/dead-letters/purge",
     {"ids": ["17-0"]}, "operator", 409),
    ("create-schedule", "POST", "/schedules",
     {"deployment_id": "{batch_deployment}", "name": "hourly", "cron": "@hourly"},
     "operator", 201),
    ("get-schedule", "GET", "/schedules/{schedule}", None, "viewer", 200),
    ("patch-schedule", "PATCH", "/schedules/{schedule}", {"cron": "@hourly"}, "operator", 200),
    ("delete-schedule", "DELETE", "/schedules/{schedule}", None, "operator", 204),
    ("trigger-schedule", "POST", "/schedules/{schedule}/trigger", {}, "operator", 201),
    ("suspend-schedule", "POST", "/schedules/{schedule}/suspend", None, "operator", 200),
    ("resume-schedule", "POST", "/schedules/{suspended_schedule}/resume", None, "operator",
     200),
    ("list-job-runs", "GET", "/schedules/{schedule}/runs", None, "viewer", 200),
    ("get-job-run", "GET", "/job-runs/{job_run}", None, "viewer", 200),
    ("cancel-job-run", "POST", "/job-runs/{job_run}/cancel", None, "operator", 200),
    ("create-secret", "POST", "/secrets", {"team_id": "{team}", "name": "DB_URL",
                                            "value": "postgres://u:p@h/db"}, "admin", 201),
    ("get-secret", "GET", "/secrets/{secret}", None, "viewer", 200),
    ("patch-secret", "PATCH", "/secrets/{secret}", {"value": "rotated"}, "admin", 200),
    ("delete-secret", "DELETE", "/secrets/{secret}", None, "admin", 204),
    ("create-token", "POST", "/tokens", {"team_id": "{team}", "name": "deploy-bot",
                                          "scope": "deploy"}, "admin", 201),
    ("get-token", "GET", "/tokens/{token}", None, "viewer", 200),
    ("revoke-token", "DELETE", "/tokens/{token}", None, "admin", 200),
    ("deployment-costs", "GET", "/costs?deployment={deployment}", None, "viewer", 200),
    ("agent-costs", "GET", "/costs?agent={agent}", None, "viewer", 200),
    ("team-costs", "GET", "/costs?team={team}", None, "viewer", 200),
    ("get-run", "GET", "/runs/{run}", None, "viewer", 200),
    ("get-trace", "GET", "/runs/{run}/trace", None, "viewer", 200),
    ("create-budget", "POST", "/budgets",
     {"team_id": "{team}", "name": "monthly", "amount_usd": "10.00",
      "thresholds": [{"percent": 100, "action": "pause"}]}, "admin", 201),
    ("get-budget", "GET", "/budgets/{budget}", None, "viewer", 200),
    ("patch-budget", "PATCH", "/budgets/{budget}", {"amount_usd": "20.00"}, "admin", 200),
    ("delete-budget", "DELETE", "/budgets/{budget}", None, "admin", 204),
    ("list-budget-events", "GET", "/budgets/{budget}/events", None, "viewer", 200),
    ("revert-budget-event", "POST", "/budget-events/{budget_event}/revert", None,
     "operator", 200),
]

LISTS = ["/teams", "/agents", "/targets", "/deployments", "/secrets", "/tokens", "/runs",
         "/budgets", "/schedules"]
# Routes checked elsewhere: creating a team (superusers, test_api), the audit log
# (test_api), log tails and SSE (test_reconciler_local).
ELSEWHERE = {("POST", "/teams"), ("GET", "/audit"),
             ("GET", "/deployments/{}/instances/{}/logs")}


@pytest.fixture(autouse=True)
def revision_history(world):
    """Revisions 1 (v1), 2 (v2) and 3 (v1 again): something to roll back to."""
    from deployments import actions
    from deployments.audit import SYSTEM

    actions.update_deployment(world.deployment, version=world.spare_version, actor=SYSTEM)
    actions.update_deployment(world.deployment, version=world.version, actor=SYSTEM)


@pytest.fixture(autouse=True)
def telemetry_rows(world):
    """A run, a budget and a budget event in the team, and the same in the
    outsider's team, so that scoped lookups have something to find or hide."""
    import uuid
    from decimal import Decimal

    from django.utils import timezone

    from telemetry.models import Budget, BudgetEvent, Run

    from .factories import DeploymentFactory

    foreign = DeploymentFactory(agent__team=world.other_team, agent__slug="alien")
    for deployment in (foreign, world.deployment):
        agent = deployment.agent
        run = Run.objects.create(team_id=agent.team_id, agent_id=agent.pk,
                                 deployment_id=deployment.pk, trace_id=uuid.uuid4(),
                                 name="invoke_agent", status="ok", started_at=timezone.now(),
                                 root_span_id=1, span_count=1)
        budget = Budget.objects.create(team_id=agent.team_id, name="ops",
                                       amount_usd=Decimal("5.00"),
                                       thresholds=[{"percent": 80, "action": "alert"}])
        event = BudgetEvent.objects.create(budget=budget, team_id=agent.team_id,
                                           month=timezone.now().date().replace(day=1),
                                           percent=80, action="alert",
                                           amount_usd=Decimal("5.00"), spent_usd=Decimal("4.10"))
    world.run, world.budget, world.budget_event = run, budget, event


@pytest.fixture(autouse=True)
def batch_rows(world):
    """A batch deployment with a schedule, a suspended one and a pending job run."""
    from deployments import actions
    from deployments.audit import SYSTEM

    from .factories import AgentFactory, DeploymentFactory

    deployment = DeploymentFactory(agent=AgentFactory(team=world.team, slug="nightly",
                                                      pattern="batch"), target=world.target)
    world.batch_deployment = deployment
    world.schedule = actions.create_schedule(deployment, {"name": "daily", "cron": "@daily"},
                                             SYSTEM)
    world.suspended_schedule = actions.create_schedule(
        deployment, {"name": "paused", "cron": "@daily", "suspended": True}, SYSTEM)
    world.job_run = actions.trigger_schedule(world.schedule, SYSTEM)


def fill(template, world):
    ids = {"team": world.team.pk, "agent": world.agent.pk, "spare_agent": world.spare_agent.pk,
           "spare_version": world.spare_version.pk,
           "target": world.target.pk, "spare_target": world.spare_target.pk,
           "deployment": world.deployment.pk, "secret": world.secret.pk,
           "token": world.token_row.pk, "member": world.member.pk, "run": world.run.pk,
           "budget": world.budget.pk, "budget_event": world.budget_event.pk,
           "batch_deployment": world.batch_deployment.pk, "schedule": world.schedule.pk,
           "suspended_schedule": world.suspended_schedule.pk, "job_run": world.job_run.pk}
    if isinstance(template, str):
        if template.startswith("{") and template.endswith("}") and template[1:-1] in ids:
            return ids[template[1:-1]]
        return template.format(**ids)
    if isinstance(template, dict):
        return {k: fill(v, world) for k, v in template.items()}
    return template


def call(client, method, path, body=None):
    kwargs = {}
    if body is not None:
        kwargs = {"data": json.dumps(body), "content_type": "application/json"}
    return getattr(client, method.lower())(f"/api/v1{path}", **kwargs)


@pytest.mark.parametrize("who", ["admin", "operator", "viewer", "outsider", None])
@pytest.mark.parametrize("route", ROUTES, ids=[r[0] for r in ROUTES])
def test_route_authorization(world, route, who):
    from .factories import UserFactory

    UserFactory(username="newbie")
    _, method, path, body, needed, ok_status = route
    client = world.client(who)
    before = AuditEvent.objects.count()
    response = call(client, method, fill(path, world), fill(body, world))
    if who is None:
        expected = 401
    elif who == "outsider":
        expected = 404
    elif RANK[who] >= RANK[needed]:
        expected = ok_status
    else:
        expected = 403
    assert response.status_code == expected, response.content
    assert "detail" in response.json() if response.status_code >= 400 else True
    writes = method != "GET" and response.status_code < 300
    assert (AuditEvent.objects.count() > before) == writes


def test_every_api_route_is_in_the_matrix():
    import re

    from controlplane.api import api

    def shape(path):
        path = re.sub(r"\{[^}]*\}|(?<=/)\d+(?=/|$)", "{}", path.split("?")[0])
        return path.rstrip("/") or "/"

    routes = set()
    for prefix, router in api._routers:
        for path, view in router.path_operations.items():
            for operation in view.operations:
                for method in operation.methods:
                    routes.add((method, shape(f"{prefix}{path}".replace("//", "/"))))
    covered = {(method, shape(path)) for _, method, path, *_ in ROUTES}
    covered |= {("GET", shape(path)) for path in LISTS} | ELSEWHERE
    # The edge fleet's own matrix (test_edge_authz), and the device's routes there.
    from .test_edge_authz import DEVICE_ROUTES, EDGE_ROUTES

    covered |= {(method, shape(path)) for _, method, path, *_ in EDGE_ROUTES}
    covered |= {(method, shape(path)) for method, path in DEVICE_ROUTES}
    from .test_rollouts_authz import ROLLOUT_ROUTES  # progressive delivery's own matrix

    covered |= {(method, shape(path)) for _, method, path, *_ in ROLLOUT_ROUTES}
    from .test_gateway_keys_api import GATEWAY_KEY_ROUTES  # the gateway keys' own matrix

    covered |= {(method, shape(path)) for _, method, path, *_ in GATEWAY_KEY_ROUTES}
    assert routes - covered == set(), "routes without an authorization test"


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("who", ["admin", "operator", "viewer", "outsider", None])
def test_lists_show_only_readable_teams(world, path, who):
    response = call(world.client(who), "GET", path)
    if who is None:
        assert response.status_code == 401
        return
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"items", "count"}
    team_ids = {item.get("team_id", item.get("id")) for item in body["items"]}
    mine = world.other_team.pk if who == "outsider" else world.team.pk
    assert team_ids <= {mine}
    assert body["count"] == len(body["items"])


def test_token_scope_caps_the_role(world):
    # The admin's read-scoped token cannot write, even though the admin can.
    client = world.client("admin", scope="read")
    assert call(client, "GET", f"/agents/{world.agent.pk}").status_code == 200
    response = call(client, "PATCH", f"/agents/{world.agent.pk}", {"description": "x"})
    assert response.status_code == 403
    deploy = world.client("admin", scope="deploy")
    assert call(deploy, "PATCH", f"/deployments/{world.deployment.pk}",
                {"replicas": 2}).status_code == 200
    assert call(deploy, "POST", "/secrets", {"team_id": world.team.pk, "name": "X",
                                             "value": "y"}).status_code == 403


def test_token_only_reaches_its_own_team(world):
    from deployments import actions
    from deployments.audit import Actor

    from .factories import MembershipFactory

    # The operator is also admin of the other team, but this token is for Acme.
    MembershipFactory(team=world.other_team, user=world.users["operator"], role="admin")
    client = world.client("operator")
    response = call(client, "GET", "/teams")
    assert [t["slug"] for t in response.json()["items"]] == ["acme"]
    _, other_token = actions.create_token(world.other_team, name="t", scope="admin",
                                          expires_at=None,
                                          actor=Actor(user=world.users["operator"]))
    from django.test import Client

    other = Client(headers={"Authorization": f"Bearer {other_token}"})
    assert call(other, "GET", f"/agents/{world.agent.pk}").status_code == 404


def test_revoked_expired_and_garbage_tokens_are_rejected(world):
    from datetime import timedelta

    from django.test import Client
    from django.utils import timezone

    from deployments.models import ApiToken

    client = world.client("viewer")
    assert call(client, "GET", "/agents").status_code == 200
    token = ApiToken.objects.get(name="viewer-admin")
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert call(client, "GET", "/agents").status_code == 401
    ApiToken.objects.filter(pk=token.pk).update(expires_at=None, revoked_at=timezone.now())
    assert call(client, "GET", "/agents").status_code == 401
    for garbage in ["hgr_", "hgr_x_y", "Bearer", "x" * 5000, "hgr_" + token.prefix + "_wrong"]:
        response = Client(headers={"Authorization": f"Bearer {garbage}"}).get("/api/v1/agents")
        assert response.status_code == 401
        assert response.json()["detail"]


def test_session_auth_works_and_enforces_csrf(world):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["operator"])
    assert client.get("/api/v1/agents").status_code == 200
    response = client.patch(f"/api/v1/agents/{world.agent.pk}", data='{"name": "x"}',
                            content_type="application/json")
    assert response.status_code == 403  # no CSRF token
    client.get("/")  # sets the csrftoken cookie
    csrf = client.cookies["csrftoken"].value
    response = client.patch(f"/api/v1/agents/{world.agent.pk}", data='{"name": "Renamed"}',
                            content_type="application/json", headers={"X-CSRFToken": csrf})
    assert response.status_code == 200
    assert response.json()["name"] == "Renamed"


def test_superuser_session_sees_every_team(world):
    from django.test import Client

    from .factories import UserFactory

    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    client = Client()
    client.force_login(root)
    slugs = {t["slug"] for t in client.get("/api/v1/teams").json()["items"]}
    assert {"acme", "umbrella"} <= slugs


def test_auth_is_configured_once_on_the_api():
    """No router or route sets its own auth: the NinjaAPI's applies to all of them
    (the matrix above checks that anonymous callers get 401 everywhere)."""
    from ninja.constants import NOT_SET

    from controlplane.api import api
    from controlplane.auth import API_AUTH
    from deployments.api import router as deployments_router
    from telemetry.api import router as telemetry_router

    assert api.auth == API_AUTH
    for router in (deployments_router, telemetry_router):
        assert router.auth is NOT_SET
        for path_view in router.path_operations.values():
            for operation in path_view.operations:
                assert operation.auth_param is NOT_SET, operation.path
