"""Revisions: made only by changes to what instances run, listed with what
changed, rolled back to by number, pruned past the history limit; restart is a
stamp, not a marker on instances. The reconciler side runs real processes of
the reference agent with the local driver."""
from __future__ import annotations

import json
import time

import pytest
import requests
from django.test import Client

from deployments import actions, revisions
from deployments.audit import SYSTEM
from deployments.models import (
    AuditEvent,
    Deployment,
    ImmutableError,
    Instance,
    Revision,
    Secret,
)
from deployments.reconciler import reconcile_deployment
from deployments.runtimes import get_driver

from .factories import AgentFactory, SecretFactory, TargetFactory, VersionFactory

API = "/api/v1"


def call(client: Client, method: str, path: str, body=None):
    kwargs = {} if body is None else {"data": json.dumps(body),
                                      "content_type": "application/json"}
    return getattr(client, method)(f"{API}{path}", **kwargs)


def history(client: Client, deployment) -> list[dict]:
    response = call(client, "get", f"/deployments/{deployment.pk}/revisions")
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"items", "count"} and body["count"] == len(body["items"])
    return body["items"]


@pytest.fixture
def deployed(world):
    """The world's agent deployed through the API (revision 1), with a second
    version that changes image, env, a secret reference and memory."""
    c = world.client("operator")
    response = call(c, "post", "/deployments", {
        "agent_id": world.agent.pk, "target_id": world.target.pk,
        "version_id": world.version.pk, "environment": "staging", "replicas": 1})
    assert response.status_code == 201, response.content
    world.v2 = VersionFactory(agent=world.agent, number=3, image="hangar/reference-agent:2",
                              env={"LOG_LEVEL": "debug"}, secret_refs=["OPENAI_KEY"],
                              memory_mb=512)
    return Deployment.objects.get(pk=response.json()["id"])


# What makes a revision --------------------------------------------------------------


def test_only_changes_to_what_runs_make_revisions(world, deployed):
    c = world.client("operator")
    d = deployed
    [first] = history(c, d)
    assert first["number"] == 1 and first["current"] and first["cause"] == "created"
    assert first["version_number"] == 1 and first["digest"].startswith("sha256:")
    assert first["changes"] == [] and first["previous"] is None

    # How many, whether running, how they scale, how long history is: none of it.
    generation = d.generation
    for body in ({"replicas": 3}, {"state": "paused"}, {"state": "active"},
                 {"autoscale_min": 1, "autoscale_max": 4, "autoscale_signal": "cpu",
                  "autoscale_target": 70}, {"rollout_strategy": "recreate"}):
        assert call(c, "patch", f"/deployments/{d.pk}", body).status_code == 200
    assert len(history(c, d)) == 1
    d.refresh_from_db()
    assert d.generation == generation + 5  # each change was still applied
    assert call(c, "patch", f"/deployments/{d.pk}",
                {"revision_history_limit": 5}).json()["generation"] == d.generation

    # A new version is a new revision, with what changed in words.
    body = call(c, "patch", f"/deployments/{d.pk}", {"version_id": world.v2.pk}).json()
    assert body["revision"] == 2 and body["version_number"] == 3
    newest, oldest = history(c, d)
    assert (newest["number"], newest["current"], oldest["current"]) == (2, True, False)
    assert newest["cause"] == "version v3" and newest["actor"].startswith("operator (token ")
    changes = {ch["field"]: ch for ch in newest["changes"]}
    assert changes["version"]["text"] == "1 → 3"
    assert changes["image"]["text"] == \
        "hangar/reference-agent:latest → hangar/reference-agent:2"
    assert changes["env.LOG_LEVEL"] == {"field": "env.LOG_LEVEL", "change": "added",
                                        "text": "added debug", "before": None,
                                        "after": "debug"}
    assert changes["memory_mb"]["text"] == "256 → 512"
    assert changes["secrets.OPENAI_KEY"]["change"] == "added"
    assert changes["secrets.OPENAI_KEY"]["text"] == "now used"
    assert "cpu" not in changes and "port" not in changes

    # A new value of a secret the version uses is a new revision too (instances
    # read secrets when they start); the value never shows, nor its fingerprint.
    admin = world.client("admin")
    assert call(admin, "patch", f"/secrets/{world.secret.pk}",
                {"value": "sk-live-rotated"}).status_code == 200
    newest = history(c, d)[0]
    assert newest["number"] == 3 and newest["cause"] == "secret OPENAI_KEY changed"
    assert [(ch["field"], ch["text"], ch["before"], ch["after"]) for ch in newest["changes"]] \
        == [("secrets.OPENAI_KEY", "value changed", None, None)]
    assert "sk-live" not in json.dumps(history(c, d))
    # The same value again, or a secret nothing uses: no revision.
    call(admin, "patch", f"/secrets/{world.secret.pk}", {"value": "sk-live-rotated"})
    other = SecretFactory(team=world.team, name="UNUSED", value="x")
    call(admin, "patch", f"/secrets/{other.pk}", {"value": "y"})
    assert len(history(c, d)) == 3
    assert AuditEvent.objects.filter(action="deployment.update", object_id=str(d.pk)).exists()


def test_revisions_are_immutable_and_instances_point_at_theirs(world, deployed):
    revision = deployed.revisions.get()
    revision.cause = "rewritten"
    with pytest.raises(ImmutableError):
        revision.save()
    spec, digest = revisions.resolve_for(deployed, world.version)
    assert (revision.spec, revision.digest) == (spec, digest)
    assert spec["version"] == 1 and spec["image"] == "hangar/reference-agent:latest"


def test_restart_is_a_stamp_and_makes_no_revision(world, deployed):
    c = world.client("operator")
    d = deployed
    old = Instance.objects.create(deployment=d, name="old-1", revision=d.revision,
                                  version=d.version)
    response = call(c, "post", f"/deployments/{d.pk}/restart")
    assert response.status_code == 200 and response.json()["restarted_at"]
    d.refresh_from_db()
    old.refresh_from_db()
    assert old.revision_id == d.revision_id and old.version_id == d.version_id  # untouched
    assert revisions.outdated(old, d)  # created before the stamp: the next pass replaces it
    fresh = Instance.objects.create(deployment=d, name="new-1", revision=d.revision)
    assert not revisions.outdated(fresh, d)
    assert len(history(c, d)) == 1


# Rollback ---------------------------------------------------------------------------


def test_rollback_to_a_chosen_revision_and_its_errors(world, deployed):
    c = world.client("operator")
    d = deployed
    url = f"/deployments/{d.pk}/rollback"
    assert call(c, "post", url, {}).status_code == 409  # nothing earlier
    assert call(c, "post", url, {"revision": 1}).json()["detail"] == \
        "Revision 1 is the current revision."
    call(c, "patch", f"/deployments/{d.pk}", {"version_id": world.spare_version.pk})  # rev 2
    call(c, "patch", f"/deployments/{d.pk}", {"version_id": world.v2.pk})  # rev 3

    # The default is the one before; a chosen number re-applies that one.
    back = call(c, "post", url, {})
    assert back.status_code == 200, back.content
    assert (back.json()["version_number"], back.json()["revision"]) == (2, 4)
    chosen = call(c, "post", url, {"revision": 1})
    assert (chosen.json()["version_number"], chosen.json()["revision"]) == (1, 5)
    newest = history(c, d)[0]
    assert newest["cause"] == "rollback to revision 1"
    assert {ch["field"]: ch["text"] for ch in newest["changes"]}["version"] == "2 → 1"
    event = AuditEvent.objects.filter(action="deployment.rollback").order_by("-id").first()
    assert event.after["rolled_back_to"] == 1 and event.after["revision_number"] == 5
    assert event.before["version_id"] == world.spare_version.pk

    # Clear 4xx for everything else.
    missing = call(c, "post", url, {"revision": 99})
    assert missing.status_code == 404
    assert missing.json()["detail"] == \
        "Revision 99 not found; this deployment keeps revision(s) 1–5."
    same = call(c, "post", url, {"revision": 1})  # revision 1 runs what 5 runs
    assert same.status_code == 409 and "same spec" in same.json()["detail"]
    for bad in ({"revision": 0}, {"revision": "two"}, {"version_id": world.version.pk}):
        response = call(c, "post", url, bad)
        assert response.status_code == 422, (bad, response.content)
        assert "detail" in response.json()
    # A revision whose version was deleted cannot be re-applied, but is still listed.
    actions.delete_version(world.v2, actor=SYSTEM)
    gone = call(c, "post", url, {"revision": 3})
    assert gone.status_code == 409 and "deleted" in gone.json()["detail"]
    rev3 = next(r for r in history(c, d) if r["number"] == 3)
    assert rev3["version_id"] is None and rev3["version_number"] == 3
    # Nor one that needs a secret that no longer exists.
    SecretFactory(team=world.team, name="GONE_SOON", value="v")
    needs = VersionFactory(agent=world.agent, number=9, secret_refs=["GONE_SOON"])
    call(c, "patch", f"/deployments/{d.pk}", {"version_id": needs.pk})  # rev 6
    call(c, "post", url, {"revision": 5})  # rev 7: back to v1
    actions.delete_secret(Secret.objects.get(team=world.team, name="GONE_SOON"), actor=SYSTEM)
    missing_secret = call(c, "post", url, {"revision": 6})
    assert missing_secret.status_code == 409 and "GONE_SOON" in missing_secret.json()["detail"]
    # Outsiders see nothing, viewers cannot roll back.
    assert call(world.client("outsider"), "post", url, {"revision": 1}).status_code == 404
    assert call(world.client("viewer"), "post", url, {"revision": 1}).status_code == 403


def test_rollback_mid_rollout_keeps_the_instances_already_running_it(world, deployed):
    d = deployed
    stable = Instance.objects.create(deployment=d, name="stable-1", revision=d.revision,
                                     version=d.version)
    actions.update_deployment(d, version=world.v2, actor=SYSTEM)
    d.refresh_from_db()
    assert revisions.outdated(stable, d)
    actions.rollback_deployment(d, actor=SYSTEM)
    d.refresh_from_db()
    stable.refresh_from_db()
    assert d.revision.number == 3 and stable.revision_id == d.revision_id
    assert not revisions.outdated(stable, d)  # the same spec: nothing to replace


# History limit ----------------------------------------------------------------------


def test_history_limit_prunes_revisions_no_instance_runs(world, deployed):
    c = world.client("operator")
    d = deployed
    versions = [VersionFactory(agent=world.agent, number=10 + i, env={"N": str(i)})
                for i in range(4)]
    running = Instance.objects.create(deployment=d, name="still-on-1", revision=d.revision)
    assert call(c, "patch", f"/deployments/{d.pk}",
                {"revision_history_limit": 2}).status_code == 200
    for version in versions:
        call(c, "patch", f"/deployments/{d.pk}", {"version_id": version.pk})
    # Revisions 1..5 were made; 4 and 5 are the newest two, and 1 is still running.
    assert [r["number"] for r in history(c, d)] == [5, 4, 1]
    assert history(c, d)[-1]["instances"] == 1
    pruned = call(c, "post", f"/deployments/{d.pk}/rollback", {"revision": 2})
    assert pruned.status_code == 404 and "1, 4–5" in pruned.json()["detail"]
    # Once nothing runs it, the next change prunes it.
    running.delete()
    call(c, "patch", f"/deployments/{d.pk}", {"revision_history_limit": 1})
    assert [r["number"] for r in history(c, d)] == [5]
    assert Revision.objects.filter(deployment=d).count() == 1
    # The limit is validated.
    for bad in (0, 101):
        assert call(c, "patch", f"/deployments/{d.pk}",
                    {"revision_history_limit": bad}).status_code == 422


# The migration ----------------------------------------------------------------------


def test_migration_makes_revision_1_and_points_instances_at_it(world):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("deployments.migrations.0005_revisions")
    agent = AgentFactory(team=world.team, slug="legacy")
    version = VersionFactory(agent=agent, number=1, secret_refs=["OPENAI_KEY"])
    other = VersionFactory(agent=agent, number=2)
    d = Deployment.objects.create(agent=agent, version=version, target=world.target)
    on_version = Instance.objects.create(deployment=d, name="a", version=version)
    mid_rollout = Instance.objects.create(deployment=d, name="b", version=other)
    migration.first_revisions(apps, None)
    d.refresh_from_db()
    assert d.revision.number == 1 and d.revision.version_id == version.pk
    # The same snapshot the running code makes, so nothing is replaced for it.
    assert (d.revision.spec, d.revision.digest) == revisions.resolve_for(d, version)
    on_version.refresh_from_db()
    mid_rollout.refresh_from_db()
    assert on_version.revision_id == d.revision_id
    assert mid_rollout.revision_id is None  # another version: replaced as before


# The page ---------------------------------------------------------------------------


def test_deployment_page_lists_revisions_with_what_changed(world, deployed):
    d = deployed
    actions.update_deployment(d, version=world.v2, actor=SYSTEM)
    viewer = Client()
    viewer.force_login(world.users["viewer"])
    html = viewer.get(f"/deployments/{d.pk}/").content.decode()
    assert 'data-testid="revisions"' in html
    assert "<span class=\"mono\">image</span>: hangar/reference-agent:latest → " \
        "hangar/reference-agent:2" in html
    assert "<span class=\"mono\">env.LOG_LEVEL</span>: added debug" in html
    assert "<span class=\"mono\">secrets.OPENAI_KEY</span>: now used" in html
    assert "version v3" in html and "revision 2" in html
    assert "sk-live" not in html
    assert "Roll back to 1" not in html  # a viewer gets no button
    # The htmx partial is the same table.
    partial = viewer.get(f"/deployments/{d.pk}/", headers={
        "HX-Request": "true", "HX-Target": "revisions"}).content.decode()
    assert partial.lstrip().startswith('<section class="card" id="revisions"')

    operator = Client()
    operator.force_login(world.users["operator"])
    page = operator.get(f"/deployments/{d.pk}/").content.decode()
    assert "Roll back to 1" in page and "Roll back to 2" not in page
    response = operator.post(f"/deployments/{d.pk}/rollback/", {"revision": "1"}, follow=True)
    text = response.content.decode()
    assert "Rolling back to revision 1: it is applied as revision 3." in text
    assert "rollback to revision 1" in text
    again = operator.post(f"/deployments/{d.pk}/rollback/", {"revision": "77"}, follow=True)
    assert "Cannot roll back: Revision 77 not found" in again.content.decode()


# The reconciler effect ----------------------------------------------------------------


def converge(deployment, until, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        reconcile_deployment(deployment.pk)
        deployment.refresh_from_db()
        rows = list(Instance.objects.filter(deployment=deployment).select_related("revision"))
        if deployment.health == "Healthy" and until(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{deployment.health}: {deployment.health_reason}; "
                                 f"{[(r.name, r.phase, r.health, r.revision_id) for r in rows]}")
        time.sleep(0.3)


def model_of(row) -> str:
    answer = requests.post(f"http://{row.address}/invoke", json={"input": "hi"}, timeout=5)
    return answer.json()["model"]


@pytest.mark.django_db(transaction=True)
def test_rollback_and_restart_replace_real_processes(world, tmp_path, settings):
    settings.HANGAR_PROGRESS_DEADLINE_S = 20
    agent = AgentFactory(team=world.team, slug="ref-rev")
    command = ["python", "agents/reference/agent.py"]
    one = VersionFactory(agent=agent, number=1, image="", command=command, port=8080,
                         env={"AGENT_MODE": "realtime", "AGENT_MODEL": "model-one"})
    two = VersionFactory(agent=agent, number=2, image="", command=command, port=8080,
                         env={"AGENT_MODE": "realtime", "AGENT_MODEL": "model-two"})
    target = TargetFactory(team=world.team, kind="local",
                           connection={"workdir": str(tmp_path / "runtime")})
    d = actions.create_deployment(agent, version=one, target=target, replicas=1, actor=SYSTEM)
    c = world.client("operator")
    try:
        [row] = converge(d, lambda rows: len(rows) == 1)
        assert row.revision.number == 1 and model_of(row) == "model-one"

        call(c, "patch", f"/deployments/{d.pk}", {"version_id": two.pk})
        [row] = converge(d, lambda rows: len(rows) == 1 and rows[0].revision.number == 2)
        assert model_of(row) == "model-two"

        back = call(c, "post", f"/deployments/{d.pk}/rollback", {"revision": 1})
        assert back.status_code == 200 and back.json()["revision"] == 3
        [row] = converge(d, lambda rows: len(rows) == 1 and rows[0].revision.number == 3)
        assert model_of(row) == "model-one" and row.version_id == one.pk
        driver = get_driver(target)
        assert [(i.name, i.version) for i in driver.list_instances(d.pk)] == [(row.name, "1")]

        # Restart: a fresh process on the same revision, and no new revision.
        before = row.name
        assert call(c, "post", f"/deployments/{d.pk}/restart").status_code == 200
        [row] = converge(d, lambda rows: len(rows) == 1 and rows[0].name != before)
        assert row.revision.number == 3 and model_of(row) == "model-one"
        assert [i.name for i in driver.list_instances(d.pk)] == [row.name]
        assert Revision.objects.filter(deployment=d).count() == 3
        assert d.events.filter(reason="Removed", message__contains="restarted").exists()
    finally:
        Deployment.objects.filter(pk=d.pk).update(state="stopped")
        for _ in range(3):
            reconcile_deployment(d.pk)
        driver = get_driver(target)
        for item in driver.list_instances(d.pk):
            driver.remove_instance(d.pk, item.name)


def test_rollback_button_route_checks_the_role(world):
    d = world.deployment
    before = AuditEvent.objects.count()
    for who, status in (("viewer", 403), ("outsider", 404)):
        client = Client()
        client.force_login(world.users[who])
        assert client.post(f"/deployments/{d.pk}/rollback/", {"revision": "1"}).status_code \
            == status
    assert Client().post(f"/deployments/{d.pk}/rollback/", {"revision": "1"}).status_code == 302
    assert AuditEvent.objects.count() == before
