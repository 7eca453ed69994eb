"""API behaviour a client relies on: flows, filters, pagination, bad input."""
from __future__ import annotations

import json
import os

import pytest
import redis
from django.test import Client

from deployments.models import ApiToken, AuditEvent, Deployment, Instance

API = "/api/v1"


def post(client, path, body):
    return client.post(API + path, data=json.dumps(body), content_type="application/json")


def patch(client, path, body):
    return client.patch(API + path, data=json.dumps(body), content_type="application/json")


def test_register_version_and_deploy_flow(world):
    c = world.client("operator")
    agent = post(c, "/agents", {"team_id": world.team.pk, "slug": "summarizer",
                                "name": "Summarizer", "pattern": "batch"})
    assert agent.status_code == 201, agent.content
    agent_id = agent.json()["id"]
    version = post(c, f"/agents/{agent_id}/versions",
                   {"image": "hangar/reference-agent:1", "command": ["python", "-m", "agent"],
                    "env": {"MODE": "batch"}, "cpu": "0.25", "memory_mb": 128,
                    "pattern_settings": {"schedule": "*/5 * * * *"}})
    assert version.status_code == 201, version.content
    assert version.json()["number"] == 1
    assert version.json()["digest"].startswith("sha256:")
    dep = post(c, "/deployments", {"agent_id": agent_id, "target_id": world.target.pk,
                                   "replicas": 2})
    assert dep.status_code == 201, dep.content
    body = dep.json()
    assert body["version_number"] == 1 and body["replicas"] == 2 and body["generation"] == 1
    assert body["state"] == "active" and body["health"] == "Progressing"

    scaled = patch(c, f"/deployments/{body['id']}", {"replicas": 5})
    assert scaled.json()["replicas"] == 5 and scaled.json()["generation"] == 2
    same = patch(c, f"/deployments/{body['id']}", {"replicas": 5})
    assert same.json()["generation"] == 2  # no change, no new generation
    paused = patch(c, f"/deployments/{body['id']}", {"state": "paused"})
    assert paused.json()["state"] == "paused" and paused.json()["generation"] == 3
    actions_logged = list(AuditEvent.objects.filter(object_type="deployment",
                                                    object_id=str(body["id"]))
                          .order_by("id").values_list("action", flat=True))
    assert actions_logged == ["deployment.create", "deployment.scale", "deployment.pause"]


def test_patch_version_moves_deployment_and_rejects_foreign_version(world):
    c = world.client("operator")
    d = world.deployment
    response = patch(c, f"/deployments/{d.pk}", {"version_id": world.spare_version.pk})
    assert response.status_code == 200 and response.json()["version_number"] == 2
    foreign = Deployment.objects.exclude(agent__team=world.team).first()
    response = patch(c, f"/deployments/{d.pk}", {"version_id": foreign.version_id})
    assert response.status_code == 404
    assert "version" in json.dumps(response.json()["detail"]).lower()


def test_every_spec_change_enqueues_a_reconcile_after_commit(
        world, django_capture_on_commit_callbacks):
    broker = redis.Redis.from_url(os.environ["REDIS_URL"])
    broker.delete("celery")
    c = world.client("operator")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        patch(c, f"/deployments/{world.deployment.pk}", {"replicas": 4})
    assert broker.llen("celery") == 0  # nothing is queued before commit
    for callback in callbacks:
        callback()
    messages = broker.lrange("celery", 0, -1)
    assert len(messages) == 1
    message = json.loads(messages[0])
    assert message["headers"]["task"] == "deployments.tasks.reconcile"
    assert json.loads(message["headers"]["argsrepr"].replace("(", "[").replace(",)", "]")) == [
        world.deployment.pk]
    # A rejected change enqueues nothing.
    with django_capture_on_commit_callbacks(execute=True):
        patch(c, f"/deployments/{world.deployment.pk}", {"replicas": 10_000})
    assert broker.llen("celery") == 1
    broker.delete("celery")


def test_slug_clash_is_a_409_and_stores_nothing(world):
    c = world.client("operator")
    body = {"team_id": world.team.pk, "slug": "support-bot", "name": "Dup", "pattern": "stream"}
    before = AuditEvent.objects.count()
    response = post(c, "/agents", body)
    assert response.status_code == 409
    assert response.json() == {"detail": "Agent with this Team and Slug already exists."}
    assert AuditEvent.objects.count() == before
    # The same slug in another team is fine.
    other = world.client("outsider")
    assert post(other, "/agents", {**body, "team_id": world.other_team.pk}).status_code == 201


def test_versions_cannot_be_edited_through_the_api(world):
    c = world.client("admin")
    response = patch(c, f"/agents/{world.agent.pk}/versions/1", {"image": "changed"})
    assert response.status_code == 405
    assert c.get(f"{API}/agents/{world.agent.pk}/versions/1").json()["image"] == \
        "hangar/reference-agent:latest"


@pytest.mark.parametrize("body,status", [
    (b"\x00\xff\xfe garbage", 400),
    (b"{not json", 400),
    (b"[]", 422),
    (b'{"team_id": "one", "slug": "a", "name": "b", "pattern": "batch"}', 422),
    (b'{"team_id": 1, "slug": "a", "name": "b", "pattern": "quantum"}', 422),
    (b'{"team_id": 99999999999999999999999, "slug": "a", "name": "b", "pattern": "batch"}', 422),
    (b'{"team_id": 1, "slug": "Not A Slug!", "name": "b", "pattern": "batch"}', 422),
    (b'{"team_id": 1, "slug": "' + b"a" * 100 + b'", "name": "b", "pattern": "batch"}', 422),
])
def test_bad_input_gets_a_clear_4xx(world, body, status):
    c = world.client("admin")
    body = body.replace(b'"team_id": 1,', f'"team_id": {world.team.pk},'.encode())
    before = AuditEvent.objects.count()
    response = c.post(f"{API}/agents", data=body, content_type="application/json")
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["detail"]
    assert AuditEvent.objects.count() == before


@pytest.mark.parametrize("path", ["/agents/99999999999999999999", "/agents/-1",
                                  "/agents/abc", "/deployments/9223372036854775807"])
def test_bad_ids_are_4xx(world, path):
    response = world.client("admin").get(API + path)
    assert 400 <= response.status_code < 500
    assert response.json()["detail"]


def test_invalid_deployment_input(world):
    c = world.client("operator")
    base = {"agent_id": world.agent.pk, "target_id": world.target.pk, "environment": "qa"}
    cases = [
        ({**base, "replicas": -1}, 422),
        ({**base, "replicas": 51}, 422),  # over the team policy's max_replicas (50)
        ({**base, "autoscale_min": 5, "autoscale_max": 2}, 422),
        ({**base, "autoscale_signal": "cpu"}, 422),  # no min/max/target
        ({**base, "autoscale_signal": None}, 422),  # null where no value may be empty
        ({**base, "target_id": world.spare_target.pk + 1000}, 404),
        ({**base, "version_id": 999999}, 404),
    ]
    for body, status in cases:
        response = post(c, "/deployments", body)
        assert response.status_code == status, (body, response.content)
    response = post(c, "/deployments", {**base, "autoscale_min": 1, "autoscale_max": 4,
                                         "autoscale_signal": "cpu", "autoscale_target": 70})
    assert response.status_code == 201, response.content
    assert response.json()["autoscale_signal"] == "cpu"


def test_policy_limits_target_kinds_and_patterns(world):
    policy = world.team.policy
    policy.allowed_target_kinds = ["kubernetes"]
    policy.allowed_patterns = ["batch"]
    policy.save()
    c = world.client("admin")
    r = post(c, "/targets", {"team_id": world.team.pk, "name": "d2", "kind": "docker"})
    assert r.status_code == 422 and "policy" in json.dumps(r.json()).lower()
    r = post(c, "/agents", {"team_id": world.team.pk, "slug": "s", "name": "s",
                            "pattern": "stream"})
    assert r.status_code == 422
    r = post(c, "/deployments", {"agent_id": world.agent.pk, "target_id": world.target.pk,
                                 "environment": "qa"})
    assert r.status_code == 422


def test_pagination_and_filters(world):
    from .factories import AgentFactory

    for n in range(7):
        AgentFactory(team=world.team, slug=f"batch-{n}", pattern="batch")
    c = world.client("viewer")
    page = c.get(f"{API}/agents?pattern=batch&limit=3&offset=0").json()
    assert page["count"] == 7 and len(page["items"]) == 3
    rest = c.get(f"{API}/agents?pattern=batch&limit=3&offset=6").json()
    assert len(rest["items"]) == 1
    seen = {a["slug"] for a in page["items"]} | {a["slug"] for a in rest["items"]}
    assert len(seen) == 4
    assert c.get(f"{API}/agents?team={world.other_team.pk}").json()["count"] == 0
    assert c.get(f"{API}/deployments?state=active").json()["count"] == 1
    assert c.get(f"{API}/deployments?state=stopped").json()["count"] == 0
    assert c.get(f"{API}/deployments?pattern=realtime").json()["count"] == 1
    assert c.get(f"{API}/agents?pattern=nonsense").status_code == 422


def test_secret_values_never_come_back(world):
    c = world.client("admin")
    created = post(c, "/secrets", {"team_id": world.team.pk, "name": "STRIPE_KEY",
                                   "value": "sk_live_very_secret_123"})
    assert created.status_code == 201
    responses = [created, c.get(f"{API}/secrets"), c.get(f"{API}/secrets/{created.json()['id']}"),
                 patch(c, f"/secrets/{created.json()['id']}", {"value": "sk_live_rotated_456"}),
                 c.get(f"{API}/audit?object_type=secret")]
    for response in responses:
        text = response.content.decode()
        assert "sk_live_very_secret_123" not in text and "sk_live_rotated_456" not in text
        assert "sk-live-supersecret" not in text
    audit_dump = json.dumps(list(AuditEvent.objects.values("before", "after")))
    assert "sk_live" not in audit_dump


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: SECRET-KC}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_target_credentials_are_write_only(world):
    c = world.client("admin")
    created = post(c, "/targets", {"team_id": world.team.pk, "name": "k8s", "kind": "kubernetes",
                                   "connection": {"kubeconfig": KUBECONFIG,
                                                  "namespace": "agents", "token": "TOKEN-XYZ"}})
    assert created.status_code == 201, created.content
    conn = created.json()["connection"]
    assert conn == {"kubeconfig": "set", "namespace": "agents", "token": "set",
                    "verify_ssl": True, "keda": False}
    target_id = created.json()["id"]
    # Updating one field keeps the write-only ones.
    updated = patch(c, f"/targets/{target_id}", {"connection": {"namespace": "prod"}})
    assert updated.json()["connection"]["kubeconfig"] == "set"
    for response in [created, updated, c.get(f"{API}/targets"), c.get(f"{API}/audit")]:
        assert "SECRET-KC" not in response.content.decode()
        assert "TOKEN-XYZ" not in response.content.decode()
    bad = post(c, "/targets", {"team_id": world.team.pk, "name": "d", "kind": "docker",
                               "connection": {"url": "ftp://nope", "bogus": 1}})
    assert bad.status_code == 422
    assert "url" in json.dumps(bad.json()["detail"])
    # A kubeconfig that would run a program on the control plane is refused.
    evil = KUBECONFIG.replace("{token: SECRET-KC}", "{exec: {command: /bin/sh}}")
    bad = post(c, "/targets", {"team_id": world.team.pk, "name": "k2", "kind": "kubernetes",
                               "connection": {"kubeconfig": evil}})
    assert bad.status_code == 422 and "exec" in json.dumps(bad.json())


def test_token_is_shown_once_and_stored_hashed(world):
    c = world.client("admin")
    created = post(c, "/tokens", {"team_id": world.team.pk, "name": "ci", "scope": "deploy"})
    plaintext = created.json()["token"]
    assert plaintext.startswith("hgr_")
    row = ApiToken.objects.get(pk=created.json()["id"])
    secret_part = plaintext.split("_", 2)[2]
    assert secret_part not in row.hashed and len(row.hashed) == 64
    listing = c.get(f"{API}/tokens").content.decode()
    assert plaintext not in listing and secret_part not in listing
    assert "token" not in c.get(f"{API}/tokens/{row.pk}").json()
    # It works, then revocation stops it.
    bot = Client(headers={"Authorization": f"Bearer {plaintext}"})
    assert bot.get(f"{API}/deployments").status_code == 200
    row.refresh_from_db()
    assert row.last_used_at is not None
    assert c.delete(f"{API}/tokens/{row.pk}").json()["revoked_at"]
    assert bot.get(f"{API}/deployments").status_code == 401


def test_team_keeps_an_admin_and_creator_becomes_admin(world):
    from django.test import Client as C

    session = C()
    session.force_login(world.users["viewer"])
    created = post(session, "/teams", {"name": "New team", "slug": "new-team"})
    assert created.status_code == 201 and created.json()["role"] == "admin"
    team_id = created.json()["id"]
    members = session.get(f"{API}/teams/{team_id}/members").json()["items"]
    assert [(m["username"], m["role"]) for m in members] == [("viewer", "admin")]
    response = session.delete(f"{API}/teams/{team_id}/members/{members[0]['id']}")
    assert response.status_code == 409
    assert session.delete(f"{API}/teams/{team_id}").status_code == 204
    # Tokens cannot create teams.
    assert post(world.client("admin"), "/teams", {"name": "x", "slug": "x"}).status_code == 403


def test_openapi_docs_are_served(world):
    schema = Client().get(f"{API}/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ["/api/v1/teams", "/api/v1/agents", "/api/v1/agents/{agent_id}/versions",
                 "/api/v1/targets", "/api/v1/deployments", "/api/v1/secrets", "/api/v1/tokens"]:
        assert path in paths
    docs = Client().get(f"{API}/docs")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_rollback_returns_to_the_previous_version_and_restart_replaces(world):
    c = world.client("operator")
    d = world.deployment
    assert post(c, f"/deployments/{d.pk}/rollback", {}).status_code == 409  # nothing before
    patch(c, f"/deployments/{d.pk}", {"version_id": world.spare_version.pk})
    back = post(c, f"/deployments/{d.pk}/rollback", {})
    assert back.status_code == 200 and back.json()["version_number"] == 1
    generation = back.json()["generation"]
    restarted = post(c, f"/deployments/{d.pk}/restart", {})
    assert restarted.json()["generation"] == generation + 1
    actions_logged = list(AuditEvent.objects.filter(object_type="deployment",
                                                    object_id=str(d.pk))
                          .order_by("id").values_list("action", flat=True))
    assert actions_logged[-2:] == ["deployment.rollback", "deployment.restart"]


# The contract a generated client relies on (issue #9) --------------------------------


@pytest.mark.parametrize("field", ["replicas", "state", "version_id", "autoscale_signal",
                                   "rollout_strategy"])
def test_null_for_a_field_that_cannot_be_empty_is_a_422_naming_it(world, field):
    d = world.deployment
    response = patch(world.client("operator"), f"/deployments/{d.pk}", {field: None})
    assert response.status_code == 422, response.content
    assert [e["loc"][-1] for e in response.json()["detail"]] == [field]
    d.refresh_from_db()
    assert d.replicas == 1 and d.state == "active" and d.generation == 1


def test_null_clears_a_field_that_can_be_empty(world):
    c = world.client("operator")
    d = world.deployment
    assert patch(c, f"/deployments/{d.pk}", {"autoscale_min": 1, "autoscale_max": 3}
                 ).json()["autoscale_max"] == 3
    cleared = patch(c, f"/deployments/{d.pk}", {"autoscale_min": None, "autoscale_max": None})
    assert cleared.status_code == 200, cleared.content
    assert cleared.json()["autoscale_max"] is None


@pytest.mark.parametrize("body", [b"[null, null]", b"null", b'"replicas"', b"3"])
def test_a_body_that_is_not_an_object_is_refused(world, body):
    d = world.deployment
    response = world.client("operator").patch(f"{API}/deployments/{d.pk}", data=body,
                                              content_type="application/json")
    assert response.status_code == 422 and response.json()["detail"]
    assert AuditEvent.objects.filter(object_type="deployment").count() == 0


@pytest.mark.parametrize("path,body", [
    ("/teams", lambda w: {"name": "Other", "slug": "acme"}),
    ("/targets", lambda w: {"team_id": w.team.pk, "name": "local-1", "kind": "local"}),
    ("/secrets", lambda w: {"team_id": w.team.pk, "name": "OPENAI_KEY", "value": "x"}),
    ("/deployments", lambda w: {"agent_id": w.agent.pk, "target_id": w.target.pk}),
])
def test_every_duplicate_is_a_409_with_a_message(world, path, body):
    client = world.client("admin")
    if path == "/teams":  # teams are created by a person, not a token
        client = Client()
        client.force_login(world.users["admin"])
    response = post(client, path, body(world))
    assert response.status_code == 409, response.content
    assert "already exists" in json.dumps(response.json()["detail"])


def test_instances_are_a_page_like_every_list(world):
    for n in (2, 0, 1):
        Instance.objects.create(deployment=world.deployment, target=world.target,
                                name=f"support-bot-{n}", version=world.version)
    c = world.client("viewer")
    page = c.get(f"{API}/deployments/{world.deployment.pk}/instances?limit=2").json()
    assert page["count"] == 3 and [i["name"] for i in page["items"]] == [
        "support-bot-0", "support-bot-1"]
    members = c.get(f"{API}/teams/{world.team.pk}/members?limit=1&offset=1").json()
    assert members["count"] == 3 and len(members["items"]) == 1
    for limit in (0, 501, -1):
        assert c.get(f"{API}/agents?limit={limit}").status_code == 422


def test_decimals_are_plain_and_the_same_whoever_wrote_them(world):
    c = world.client("operator")
    from_api = post(c, f"/agents/{world.spare_agent.pk}/versions",
                    {"image": "hangar/reference-agent:1", "cpu": "0.500"})
    assert from_api.status_code == 201, from_api.content
    assert from_api.json()["cpu"] == "0.5"
    assert c.get(f"{API}/agents/{world.spare_agent.pk}/versions/1").json()["cpu"] == "0.5"
    session = Client()
    session.force_login(world.users["operator"])
    ui = session.post(f"/agents/{world.spare_agent.pk}/versions/",
                      {"image": "hangar/reference-agent:2", "cpu": "0.5", "memory_mb": "256",
                       "command": "", "env": "", "secret_refs": "", "pattern_settings": ""})
    assert ui.status_code in (200, 302), ui.content.decode()[-2000:]
    assert c.get(f"{API}/agents/{world.spare_agent.pk}/versions/2").json()["cpu"] == "0.5"
    target = c.get(f"{API}/targets/{world.target.pk}").json()
    assert target["price_cpu_hour"] == "0"  # a stored 0.000000


def test_anonymous_writes_are_401_not_a_csrf_403(world):
    one = f"{API}/deployments/{world.deployment.pk}"
    for method, path in (("post", f"{API}/deployments"), ("patch", one), ("delete", one)):
        response = getattr(Client(), method)(path, data="{}", content_type="application/json")
        assert response.status_code == 401, (method, response.content)
        assert response["WWW-Authenticate"].startswith("Bearer")
    # A real session without the CSRF token is refused as such.
    session = Client(enforce_csrf_checks=True)
    session.force_login(world.users["operator"])
    response = patch(session, f"/deployments/{world.deployment.pk}", {"replicas": 2})
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


def test_openapi_documents_every_error_answer(world):
    schema = Client().get(f"{API}/openapi.json").json()
    assert set(schema["components"]["schemas"]["Detail"]["required"]) == {"detail"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            answers = operation["responses"]
            expected = {"401", "422"}
            if method != "get":
                expected |= {"403", "409"}
            if "{" in path:
                expected.add("404")
            if "requestBody" in operation:
                expected.add("400")
            assert expected <= set(answers), (method, path, sorted(answers))
            for status in set(answers) - {"200", "201", "204", "304"}:
                content = answers[status]["content"]["application/json"]["schema"]
                assert content == {"$ref": "#/components/schemas/Detail"}, (method, path)
                assert answers[status]["description"]
    assert "404" in schema["paths"]["/api/v1/costs"]["get"]["responses"]
    logs = "/api/v1/deployments/{deployment_id}/instances/{name}/logs"
    assert "409" in schema["paths"][logs]["get"]["responses"]
    assert "404" in schema["paths"]["/api/v1/deployments"]["post"]["responses"]
