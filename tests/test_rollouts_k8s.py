"""Rollouts on a Kubernetes target (#15), against kmock at the wire level with
the official client (see ``test_kubernetes.py``): two Deployments told apart
by the ``hangar.revision`` label of their pods (the primary runs stable, the
``-canary`` one the new revision), the Service choosing between them, and
blue-green's preview Service and selector switch.

Each step is what the worker does (a reconcile pass, the rollout tick) or what
an operator does (the REST API); the test then reads what a user of the
cluster would see — the Deployments and Services kmock holds — and the
rollout's state in the API. kmock runs no controllers, so the pods the
ReplicaSets would start are written into it by the test, labelled as the
applied templates say. kmock merges patches where a real API server's
server-side apply replaces fields the manager dropped, so a selector key the
driver stops sending is checked in the applied body.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json

import kubernetes_validate
import pytest
import pytest_asyncio
from kmock import RawHandler
from kubernetes_validate.utils import latest_version

from deployments.runtimes import k8s_manifests_rollout as rollout
from deployments.runtimes.base import RolloutSplit, Track

from .stream_brokers import RedisKeys
from .test_kubernetes import (
    KUBERNETES_VERSIONS,
    NAMESPACE,
    PATHS,
    RESOURCES,
    TOKEN,
    Cluster,
    container_status,
    deployment_spec,
    template,
)

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.django_db(transaction=True)]


@pytest_asyncio.fixture
async def cluster(kmock: RawHandler) -> RawHandler:
    for resource in RESOURCES.values():
        kmock.resources[resource] = {}
    return kmock


def in_thread(function):
    """Database and driver work off the event loop that serves kmock."""
    def call(*args, **kwargs):
        from django.db import connections
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()
    return lambda *args, **kwargs: asyncio.to_thread(call, *args, **kwargs)


@in_thread
def make(url: str, *, pattern: str = "realtime", replicas: int = 3, port: int | None = 8080,
         settings: dict | None = None) -> dict:
    from deployments.models import Deployment

    from .factories import (
        AgentFactory,
        DeploymentFactory,
        MembershipFactory,
        TargetFactory,
        UserFactory,
        VersionFactory,
    )

    agent = AgentFactory(slug="support-bot", pattern=pattern)
    user = UserFactory(username="op")
    MembershipFactory(team=agent.team, user=user, role="operator")
    v1, v2 = (VersionFactory(agent=agent, number=n, image=f"registry.local/agent:{n}",
                             port=port, secret_refs=[], pattern_settings=settings or {})
              for n in (1, 2))
    target = TargetFactory(team=agent.team, kind="kubernetes", name="k8s", connection={
        "host": url, "token": TOKEN, "namespace": NAMESPACE})
    d = DeploymentFactory(agent=agent, version=v1, target=target, replicas=replicas,
                          ingest_token="ingest-token-value")
    d = Deployment.objects.get(pk=d.pk)
    return {"id": d.pk, "user": user.pk, "v2": v2.pk, "name": f"support-bot-production-{d.pk}"}


@in_thread
def api(world: dict, method: str, path: str, body: dict | None = None):
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(pk=world["user"]))
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} \
        if body is not None else {}
    answer = getattr(client, method)(f"/api/v1{path}", **kwargs)
    assert answer.status_code < 300, (answer.status_code, answer.content)
    return answer.json()


@in_thread
def reconcile(world: dict) -> str:
    from deployments.reconciler import reconcile_deployment
    return reconcile_deployment(world["id"])


@in_thread
def advance(world: dict) -> None:
    from rollouts import engine
    engine.advance(world["id"])


async def worker(world: dict, times: int = 2) -> None:
    """What the worker does after a change: passes and ticks."""
    for _ in range(times):
        await reconcile(world)
        await advance(world)
    await reconcile(world)


def stored(cluster, kind: str, name: str) -> dict:
    return cluster.objects[RESOURCES[kind], NAMESPACE, name]


def exists(cluster, kind: str, name: str) -> bool:
    try:
        return not cluster.objects[RESOURCES[kind], NAMESPACE, name].deleted
    except KeyError:
        return False


def applied(cluster, kind: str, name: str, since: int = 0) -> list[dict]:
    path = f"{PATHS[kind]}/{name}"
    return [r.data for r in list(cluster)[since:]
            if (r.method.value, r.url.path) == ("PATCH", path)]


def revision_of(deployment: dict) -> str:
    return deployment["spec"]["template"]["metadata"]["labels"]["hangar.revision"]


def start_pods(cluster, world: dict, revision: int, count: int, *, canary: bool,
               prefix: str | None = None) -> None:
    """What the ReplicaSet of the Deployment running ``revision`` starts: Ready pods."""
    tag = prefix or ("c" if canary else "p") + str(revision)
    for i in range(count):
        name = f"{tag}-{i}"
        labels = {"hangar.deployment": str(world["id"]), "hangar.managed": "true",
                  "hangar.version": str(revision), "hangar.revision": str(revision),
                  "pod-template-hash": tag}
        if canary:
            labels["hangar.track"] = "canary"
        cluster.objects["v1/pods", NAMESPACE, name] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}",
                         "labels": labels},
            "spec": {"nodeName": "node-a", "containers": [
                {"name": "agent", "image": "img",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": f"10.1.{revision}.{i + 1}",
                       "startTime": "2026-01-02T03:04:05Z",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [container_status(
                           {"running": {}}, ready=True, started=True)]},
        }


def stop_pods(cluster, prefix: str) -> None:
    for key in [k for k in cluster.objects if k[0] == "v1/pods" and k[2].startswith(prefix)]:
        del cluster.objects[key]


def validate(*manifests: dict) -> None:
    for manifest in manifests:
        kubernetes_validate.validate(manifest, latest_version(), strict=True)


def rollout_spec(**split) -> object:
    stable = Track(revision="6", replicas=3, template=template(version="6"),
                   secret_env={"OPENAI_KEY": "sk-old"})
    return dataclasses.replace(deployment_spec(revision="7"),
                               rollout=RolloutSplit(stable=stable, **split))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rollout_manifest_validates_strictly(version):
    for spec in (rollout_spec(), rollout_spec(active="6", preview="7")):
        manifests = rollout.rollout_manifests(spec)
        for manifest in manifests:
            kubernetes_validate.validate(manifest, version, strict=True)
    kinds = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    assert kinds == [
        ("Secret", "support-bot-production-12-env"),
        ("ConfigMap", "support-bot-production-12-config"),
        ("Deployment", "support-bot-production-12"),
        ("Secret", "support-bot-production-12-canary-env"),
        ("ConfigMap", "support-bot-production-12-canary-config"),
        ("Deployment", "support-bot-production-12-canary"),
        ("Service", "support-bot-production-12"),
        ("Service", "support-bot-production-12-preview")]
    primary, canary = manifests[2], manifests[5]
    # Stable's pods keep their own values; the two selectors never pick each other's
    # ReplicaSet: the canary's includes its track.
    assert revision_of(primary) == "6" and revision_of(canary) == "7"
    assert primary["spec"]["selector"]["matchLabels"] == {"hangar.deployment": "12",
                                                          "hangar.managed": "true"}
    assert canary["spec"]["selector"]["matchLabels"] == {
        "hangar.deployment": "12", "hangar.managed": "true", "hangar.track": "canary"}
    assert manifests[6]["spec"]["selector"]["hangar.revision"] == "6"
    assert manifests[7]["spec"]["selector"]["hangar.revision"] == "7"


@pytest.mark.asyncio
async def test_canary_behind_the_gateway_two_deployments_then_the_primary_takes_over(cluster):
    world = await make(str(cluster.url), replicas=3)
    name, canary = world["name"], f"{world['name']}-canary"
    await reconcile(world)
    assert revision_of(stored(cluster, "Deployment", name)) == "1"
    start_pods(cluster, world, 1, 3, canary=False)
    await reconcile(world)
    await api(world, "put", f"/deployments/{world['id']}/rollout/strategy", {
        "strategy": "canary", "steps": [{"set_weight": 25}, {"pause": {}},
                                        {"set_weight": 100}]})

    # A new version: the rollout starts, the canary Deployment gets
    # ⌈3 × 25 %⌉ = 1 replica, stable keeps its 3 (the gateway splits exactly).
    seen = len(list(cluster))
    await api(world, "patch", f"/deployments/{world['id']}", {"version_id": world["v2"]})
    await worker(world)
    primary, canary_d = stored(cluster, "Deployment", name), stored(cluster, "Deployment", canary)
    assert (primary["spec"]["replicas"], revision_of(primary)) == (3, "1")
    assert (canary_d["spec"]["replicas"], revision_of(canary_d)) == (1, "2")
    assert canary_d["spec"]["selector"]["matchLabels"]["hangar.track"] == "canary"
    assert canary_d["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.local/agent:2"
    assert primary["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.local/agent:1"
    # Each revision reads its own Secret: the canary's values never roll stable's pods.
    assert canary_d["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"secretRef": {"name": f"{canary}-env"}}]
    assert exists(cluster, "Secret", f"{canary}-env")
    # In-cluster callers through the Service stay on stable until 100 %.
    assert stored(cluster, "Service", name)["spec"]["selector"]["hangar.revision"] == "1"
    validate(*applied(cluster, "Deployment", canary, seen), *applied(cluster, "Service", name,
                                                                     seen))
    status = await api(world, "get", f"/deployments/{world['id']}/rollout")
    assert status["rollout"]["weight"] == 25 and status["rollout"]["phase"] == "Progressing"

    # The canary pod is Ready: the rollout reaches its pause.
    start_pods(cluster, world, 2, 1, canary=True)
    await worker(world)
    status = await api(world, "get", f"/deployments/{world['id']}/rollout")
    assert status["rollout"]["phase"] == "Paused" and status["rollout"]["weight"] == 25
    instances = await api(world, "get", f"/deployments/{world['id']}/instances")
    assert sorted((i["name"], i["revision"]) for i in instances["items"]) == [
        ("c2-0", 2), ("p1-0", 1), ("p1-1", 1), ("p1-2", 1)]
    # While it pauses, the replicas the next weight (100 %) needs start: the
    # gateway still gives the canary 25 % of the requests, and the Service none.
    await reconcile(world)
    assert stored(cluster, "Deployment", canary)["spec"]["replicas"] == 3
    assert stored(cluster, "Service", name)["spec"]["selector"]["hangar.revision"] == "1"

    # Promoted: 100 % at once (its replicas are Ready), the Service on revision 2.
    start_pods(cluster, world, 2, 3, canary=True)
    await api(world, "post", f"/deployments/{world['id']}/rollout/promote", {})
    await worker(world)
    assert stored(cluster, "Deployment", canary)["spec"]["replicas"] == 3
    assert stored(cluster, "Service", name)["spec"]["selector"]["hangar.revision"] == "2"
    status = await api(world, "get", f"/deployments/{world['id']}/rollout")
    assert status["rollout"]["phase"] == "Healthy" and status["rollout"]["finished_at"]

    # Done: the primary rolls to revision 2 while the canary keeps serving (the
    # Service stays on revision 2, so no request goes back to revision 1) …
    await reconcile(world)
    assert revision_of(stored(cluster, "Deployment", name)) == "2"
    assert exists(cluster, "Deployment", canary)
    assert stored(cluster, "Service", name)["spec"]["selector"]["hangar.revision"] == "2"
    # … and once the primary has its replicas Ready on revision 2, the canary goes.
    stop_pods(cluster, "p1-")
    start_pods(cluster, world, 2, 3, canary=False, prefix="p2")
    seen = len(list(cluster))
    await reconcile(world)
    for kind, object_name in [("Deployment", canary), ("Secret", f"{canary}-env")]:
        assert not exists(cluster, kind, object_name), kind
    [service] = applied(cluster, "Service", name, seen)
    assert "hangar.revision" not in service["spec"]["selector"]  # every pod of the deployment
    assert exists(cluster, "Deployment", name)


@pytest.mark.asyncio
async def test_abort_scales_the_canary_deployment_to_zero_and_keeps_stable(cluster):
    # A stream deployment with a port: no gateway in front, so the Service
    # reaches both revisions and the replicas follow the weight (25 % of 4 → 1 + 3).
    keys = RedisKeys()
    try:
        world = await make(str(cluster.url), pattern="stream", replicas=4,
                           settings=keys.settings())
        name, canary = world["name"], f"{world['name']}-canary"
        await reconcile(world)
        start_pods(cluster, world, 1, 4, canary=False)
        await api(world, "put", f"/deployments/{world['id']}/rollout/strategy", {
            "strategy": "canary", "steps": [{"set_weight": 25}, {"pause": {}},
                                            {"set_weight": 50}]})
        await api(world, "patch", f"/deployments/{world['id']}", {"version_id": world["v2"]})
        await worker(world)
        assert stored(cluster, "Deployment", name)["spec"]["replicas"] == 3
        assert stored(cluster, "Deployment", canary)["spec"]["replicas"] == 1
        assert "hangar.revision" not in stored(cluster, "Service", name)["spec"]["selector"]
        start_pods(cluster, world, 2, 1, canary=True)
        await worker(world)
        status = await api(world, "get", f"/deployments/{world['id']}/rollout")
        assert status["rollout"]["phase"] == "Paused"

        await api(world, "post", f"/deployments/{world['id']}/rollout/abort")
        await worker(world)
        assert stored(cluster, "Deployment", canary)["spec"]["replicas"] == 0
        primary = stored(cluster, "Deployment", name)
        assert (primary["spec"]["replicas"], revision_of(primary)) == (4, "1")
        assert stored(cluster, "Service", name)["spec"]["selector"]["hangar.revision"] == "1"
        status = await api(world, "get", f"/deployments/{world['id']}/rollout")
        assert status["rollout"]["phase"] == "Degraded" and status["rollout"]["aborted"]
        deployment = await api(world, "get", f"/deployments/{world['id']}")
        assert deployment["health"] == "Degraded"
        assert deployment["health_reason"].startswith("rollout aborted")
    finally:
        keys.cleanup()


@pytest.mark.asyncio
async def test_blue_green_switches_the_service_selector_and_keeps_blue_for_the_delay(cluster):
    world = await make(str(cluster.url), replicas=2)
    name, canary, preview = (world["name"], f"{world['name']}-canary",
                             f"{world['name']}-preview")
    await reconcile(world)
    start_pods(cluster, world, 1, 2, canary=False)
    await api(world, "put", f"/deployments/{world['id']}/rollout/strategy", {
        "strategy": "blue_green", "scale_down_delay_s": 3600})
    await api(world, "patch", f"/deployments/{world['id']}", {"version_id": world["v2"]})
    await worker(world)

    # Green runs beside blue, reachable only through the preview Service.
    assert stored(cluster, "Deployment", canary)["spec"]["replicas"] == 2
    assert stored(cluster, "Deployment", name)["spec"]["replicas"] == 2
    assert stored(cluster, "Service", name)["spec"]["selector"]["hangar.revision"] == "1"
    assert stored(cluster, "Service", preview)["spec"]["selector"]["hangar.revision"] == "2"
    start_pods(cluster, world, 2, 2, canary=True)
    await worker(world)
    status = await api(world, "get", f"/deployments/{world['id']}/rollout")
    assert status["rollout"]["phase"] == "Paused", status["rollout"]

    # Promote: one apply of the active Service's selector, nothing else moves.
    await advance(world)
    seen = len(list(cluster))
    await api(world, "post", f"/deployments/{world['id']}/rollout/promote", {})
    await reconcile(world)
    [switch] = applied(cluster, "Service", name, seen)
    assert switch["spec"]["selector"]["hangar.revision"] == "2"
    validate(switch)
    assert stored(cluster, "Service", name)["spec"]["selector"]["hangar.revision"] == "2"
    assert not exists(cluster, "Service", preview)
    # Blue is kept for the scale-down delay (an abort is instant) …
    primary = stored(cluster, "Deployment", name)
    assert (primary["spec"]["replicas"], revision_of(primary)) == (2, "1")
    assert stored(cluster, "Deployment", canary)["spec"]["replicas"] == 2
    status = await api(world, "get", f"/deployments/{world['id']}/rollout")
    assert status["rollout"]["phase"] == "Healthy" and status["rollout"]["scale_down_at"]

    # … and when the delay is over, the primary takes revision 2 over from green.
    await expire_scale_down(world)
    await reconcile(world)
    assert revision_of(stored(cluster, "Deployment", name)) == "2"
    assert stored(cluster, "Service", name)["spec"]["selector"]["hangar.revision"] == "2"
    assert exists(cluster, "Deployment", canary)
    stop_pods(cluster, "p1-")
    start_pods(cluster, world, 2, 2, canary=False, prefix="p2")
    await reconcile(world)
    assert not exists(cluster, "Deployment", canary)


@in_thread
def expire_scale_down(world: dict) -> None:
    from django.utils import timezone

    from rollouts.models import Rollout
    Rollout.objects.filter(deployment_id=world["id"]).update(scale_down_at=timezone.now())
