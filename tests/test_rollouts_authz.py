"""The rollout routes' authorization matrix (as admin, operator, viewer,
outsider and anonymous; test_api_authz counts these routes as covered):
viewers read, operators act on rollouts, admins manage the team's hooks;
outsiders 404, anonymous 401; every successful write audited."""
from __future__ import annotations

import json

import pytest

from deployments.audit import SYSTEM
from deployments.models import AuditEvent
from rollouts import actions

pytestmark = pytest.mark.django_db

RANK = {"viewer": 1, "operator": 2, "admin": 3}
CANARY = {"strategy": "canary", "steps": [{"set_weight": 50}, {"pause": {}}]}

# (id, method, path, body, role needed, status on success)
ROLLOUT_ROUTES = [
    ("get-rollout", "GET", "/deployments/{deployment}/rollout", None, "viewer", 200),
    ("set-rollout-strategy", "PUT", "/deployments/{deployment}/rollout/strategy", CANARY,
     "operator", 200),
    # No rollout yet: past the role check, a 409.
    ("promote-rollout", "POST", "/deployments/{deployment}/rollout/promote", {"full": True},
     "operator", 409),
    ("abort-rollout", "POST", "/deployments/{deployment}/rollout/abort", None, "operator", 409),
    ("retry-rollout", "POST", "/deployments/{deployment}/rollout/retry", None, "operator", 409),
    ("undo-rollout", "POST", "/deployments/{deployment}/rollout/undo", {"revision": 1},
     "operator", 200),
    ("list-rollouts", "GET", "/deployments/{deployment}/rollouts", None, "viewer", 200),
    ("list-rollout-hooks", "GET", "/teams/{team}/rollout-hooks", None, "viewer", 200),
    ("create-rollout-hook", "POST", "/teams/{team}/rollout-hooks",
     {"name": "chat", "url": "https://hooks.example.com/x", "format": "slack"}, "admin", 201),
    ("delete-rollout-hook", "DELETE", "/rollout-hooks/{hook}", None, "admin", 204),
    ("list-notifications", "GET", "/rollout-hooks/{hook}/notifications", None, "viewer", 200),
]


@pytest.fixture
def ids(world):
    from deployments import actions as registry

    registry.update_deployment(world.deployment, version=world.spare_version, actor=SYSTEM)
    hook = actions.create_hook(world.team, actor=SYSTEM, name="ops",
                               url="https://hooks.example.com/ops")
    return {"team": world.team.pk, "deployment": world.deployment.pk, "hook": hook.pk}


def fill(template, ids):
    if isinstance(template, str):
        return template.format(**ids)
    return template


@pytest.mark.parametrize("who", ["admin", "operator", "viewer", "outsider", None])
@pytest.mark.parametrize("route", ROLLOUT_ROUTES, ids=[r[0] for r in ROLLOUT_ROUTES])
def test_rollout_route_authorization(world, ids, route, who):
    _, method, path, body, needed, ok_status = route
    client = world.client(who)
    before = AuditEvent.objects.count()
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} \
        if body is not None else {}
    response = getattr(client, method.lower())(f"/api/v1{fill(path, ids)}", **kwargs)
    if who is None:
        expected = 401
    elif who == "outsider":
        expected = 404
    elif RANK[who] >= RANK[needed]:
        expected = ok_status
    else:
        expected = 403
    assert response.status_code == expected, response.content
    if response.status_code >= 400:
        assert "detail" in response.json()
    writes = method != "GET" and response.status_code < 300
    assert (AuditEvent.objects.count() > before) == writes
