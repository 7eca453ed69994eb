"""Gateway keys over the API (#13 point 4): the authorization matrix (viewers
read, operators and admins create and revoke, outsiders see nothing), the key
shown once and hashed at rest, every write audited, bad input a 422 naming
the field; and the gateway keys page's rights (a viewer gets no form)."""
from __future__ import annotations

import json
from datetime import datetime

import pytest
from django.test import Client
from django.utils import timezone

from deployments.audit import Actor
from deployments.models import AuditEvent
from gateway.actions import create_gateway_key
from gateway.models import GatewayKey

RANK = {"viewer": 1, "operator": 2, "admin": 3}

# (id, method, path, body, role needed, status on success)
GATEWAY_KEY_ROUTES = [
    ("list-gateway-keys", "GET", "/gateway-keys", None, "viewer", 200),
    ("create-gateway-key", "POST", "/gateway-keys",
     {"team_id": "{team}", "name": "shop", "agents": ["support-bot"], "rate_per_s": 5},
     "operator", 201),
    ("get-gateway-key", "GET", "/gateway-keys/{key}", None, "viewer", 200),
    ("revoke-gateway-key", "DELETE", "/gateway-keys/{key}", None, "operator", 200),
]

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(world):
    found, _ = create_gateway_key(world.team, name="existing", actor=Actor(user=None))
    return found


def call(client, method, path, body=None):
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body else {}
    return getattr(client, method.lower())(f"/api/v1{path}", **kwargs)


def fill(value, ids):
    if isinstance(value, str):
        if value.startswith("{") and value.endswith("}") and value[1:-1] in ids:
            return ids[value[1:-1]]
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize("who", ["admin", "operator", "viewer", "outsider", None])
@pytest.mark.parametrize("route", GATEWAY_KEY_ROUTES, ids=[r[0] for r in GATEWAY_KEY_ROUTES])
def test_gateway_key_route_authorization(world, key, route, who):
    _, method, path, body, needed, ok_status = route
    ids = {"team": world.team.pk, "key": key.pk}
    client = world.client(who)  # its token is audited: made before counting
    before = AuditEvent.objects.count()
    response = call(client, method, fill(path, ids), fill(body, ids))
    if who is None:
        expected = 401
    elif who == "outsider":
        expected = 404 if "{" in path or body else 200
    elif RANK[who] >= RANK[needed]:
        expected = ok_status
    else:
        expected = 403
    assert response.status_code == expected, response.content
    if who == "outsider" and method == "GET" and "{" not in path:
        assert response.json()["items"] == []  # nothing of another team leaks
    writes = method != "GET" and response.status_code < 300
    assert (AuditEvent.objects.count() > before) == writes


def test_a_key_from_the_api_is_shown_once_hashed_scoped_and_revocable(world):
    client = world.client("operator")
    created = call(client, "POST", "/gateway-keys", {
        "team_id": world.team.pk, "name": "shop", "agents": ["support-bot"],
        "rate_per_s": 5, "concurrent": 2, "expires_in_s": 30 * 86400})
    assert created.status_code == 201, created.content
    body = created.json()
    plaintext = body["key"]
    assert plaintext.startswith(f"hgk_{body['prefix']}_")
    assert body["agents"] == ["support-bot"] and body["rate_per_s"] == 5
    assert body["concurrent"] == 2 and body["active"] is True
    assert 29 <= (datetime.fromisoformat(body["expires_at"]) - timezone.now()).days < 30
    secret = plaintext.split("_", 2)[2]
    stored = GatewayKey.objects.filter(pk=body["id"]).values().get()
    assert secret not in str(stored)
    # Never again: not in the list, not in the key's own page, not in the audit log.
    listed = call(client, "GET", f"/gateway-keys?team={world.team.pk}").json()
    assert [k["name"] for k in listed["items"]] == ["shop"] and secret not in str(listed)
    assert "key" not in call(client, "GET", f"/gateway-keys/{body['id']}").json()
    audit = AuditEvent.objects.get(action="gateway_key.create")
    assert audit.actor_label.startswith("operator") and secret not in json.dumps(audit.after)

    revoked = call(client, "DELETE", f"/gateway-keys/{body['id']}")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] and revoked.json()["active"] is False
    assert AuditEvent.objects.filter(action="gateway_key.revoke").count() == 1
    # Revoked twice: the same answer, one audit row.
    assert call(client, "DELETE", f"/gateway-keys/{body['id']}").status_code == 200
    assert AuditEvent.objects.filter(action="gateway_key.revoke").count() == 1


@pytest.mark.parametrize(("change", "field"), [
    ({"name": ""}, "name"),
    ({"rate_per_s": 0}, "rate_per_s"),
    ({"concurrent": 2_000_000}, "concurrent"),
    ({"expires_in_s": 10}, "expires_in_s"),
    ({"agents": "support-bot"}, "agents"),  # strict: a list, not a string
])
def test_bad_key_input_is_a_422_naming_the_field(world, change, field):
    body = {"team_id": world.team.pk, "name": "shop", **change}
    response = call(world.client("operator"), "POST", "/gateway-keys", body)
    assert response.status_code == 422, response.content
    assert field in json.dumps(response.json()["detail"])
    assert not GatewayKey.objects.exists()


def test_another_teams_agent_or_team_is_not_found(world):
    client = world.client("operator")
    assert call(client, "POST", "/gateway-keys",
                {"team_id": world.other_team.pk, "name": "x"}).status_code == 404
    response = call(client, "POST", "/gateway-keys",
                    {"team_id": world.team.pk, "name": "x", "agents": ["alien"]})
    assert response.status_code == 404 and "alien" in response.json()["detail"]


def test_the_keys_page_gives_operators_a_form_and_viewers_only_the_list(world, key):
    def page(who):
        client = Client()
        client.force_login(world.users[who])
        return client.get("/gateway/keys/")

    operator, viewer = page("operator"), page("viewer")
    assert operator.status_code == viewer.status_code == 200
    assert b"gateway-key-form" in operator.content and b"existing" in operator.content
    assert b"gateway-key-form" not in viewer.content and b"existing" in viewer.content
    assert f'data-testid="revoke-{key.pk}"'.encode() not in viewer.content
    client = Client()
    client.force_login(world.users["viewer"])
    assert client.post(f"/gateway/keys/{key.pk}/revoke/").status_code == 403
    client.force_login(world.users["outsider"])
    assert client.post(f"/gateway/keys/{key.pk}/revoke/").status_code == 404
    assert b"existing" not in client.get("/gateway/keys/").content
