"""Stream deployments on Kubernetes: KEDA scales them when the target says
KEDA is installed, Hangar's own lag autoscaler otherwise — never both.

The ScaledObject and TriggerAuthentication Hangar emits are validated with
``jsonschema`` against the ``openAPIV3Schema`` of KEDA's own CRDs, shipped in
``tests/fixtures/keda/`` (commit and licence noted there), strictly: unknown
fields fail, as a server with ``fieldValidation=Strict`` refuses them. Core
kinds are validated with ``kubernetes-validate``. The driver runs the official
``kubernetes`` client over HTTP against kmock (see ``test_kubernetes.py``),
and the lag is read from the real Redis of this run.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import pytest_asyncio
import redis as redis_py
import yaml
from kmock import RawHandler
from kubernetes_validate.utils import latest_version

from deployments.runtimes import k8s_manifests as manifests
from deployments.runtimes.base import LagScaling
from deployments.streams import SourceConfig, get_source

from .stream_brokers import RedisKeys
from .test_kubernetes import NAMESPACE, RESOURCES, TOKEN, Cluster, deployment_spec, template

FIXTURES = Path(__file__).parent / "fixtures" / "keda"
KEDA = "keda.sh/v1alpha1"
SCALED_OBJECTS = f"/apis/keda.sh/v1alpha1/namespaces/{NAMESPACE}/scaledobjects"
TRIGGER_AUTHS = f"/apis/keda.sh/v1alpha1/namespaces/{NAMESPACE}/triggerauthentications"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
HPAS = f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers"

pytestmark = pytest.mark.kmock(cls=Cluster)


# The CRDs' schemas -------------------------------------------------------------

def _strict(schema: dict) -> dict:
    """Refuse unknown fields wherever the CRD lists an object's fields (and
    does not preserve unknown ones), as the API server's strict validation."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_schema(kind: str) -> dict:
    plural = {"ScaledObject": "scaledobjects",
              "TriggerAuthentication": "triggerauthentications"}[kind]
    crd = yaml.safe_load((FIXTURES / f"keda.sh_{plural}.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == kind
    [version] = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    assert f"{crd['spec']['group']}/{version['name']}" == KEDA
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # checked below, as the server does
    return schema


def validate_keda(manifest: dict) -> None:
    assert manifest["apiVersion"] == KEDA
    jsonschema.validate(manifest, crd_schema(manifest["kind"]),
                        cls=jsonschema.Draft7Validator)
    metadata = manifest["metadata"]
    assert manifests.object_name(metadata["name"]) == metadata["name"]
    assert all(manifests.is_label_value(v) for v in metadata["labels"].values())


# Manifests ---------------------------------------------------------------------

def scaling(**changes) -> LagScaling:
    values = dict(kind="redis", stream="orders", group="workers", address="redis.data:6379",
                  min_replicas=0, max_replicas=8, target=500, activation=5, cooldown_s=300,
                  stabilization_s=120, polling_s=10)
    values.update(changes)
    return LagScaling(**values)


def stream_spec(**changes):
    spec = deployment_spec(template=template(pattern="stream", port=None, health=None),
                           secret_env={"STREAM_URL": "redis://redis.data:6379/0"}, config={})
    return dataclasses.replace(spec, lag_scaling=scaling(**changes))


def test_a_redis_scaled_object_has_hangars_thresholds_and_validates_against_the_crd():
    spec = stream_spec(database=2, tls=True)
    scaled = manifests.scaled_object(spec)
    validate_keda(scaled)
    body = scaled["spec"]
    assert body["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "support-bot-production-12"}
    assert (body["minReplicaCount"], body["maxReplicaCount"]) == (0, 8)
    assert (body["pollingInterval"], body["cooldownPeriod"]) == (10, 300)
    # Hangar's lag = undelivered (XINFO GROUPS lag) + pending (XPENDING): one
    # trigger each, added by the scaling formula, target per replica 500, and
    # activation 0 -> 1 only above 5.
    lag, pending = body["triggers"]
    common = {"address": "redis.data:6379", "stream": "orders", "consumerGroup": "workers",
              "databaseIndex": "2", "enableTLS": "true"}
    assert lag == {"type": "redis-streams", "name": "lag",
                   "metadata": {**common, "lagCount": "500"}}
    assert pending == {"type": "redis-streams", "name": "pending",
                       "metadata": {**common, "pendingEntriesCount": "500"}}
    assert body["advanced"]["scalingModifiers"] == {
        "formula": "lag + pending", "target": "500", "activationTarget": "5",
        "metricType": "AverageValue"}
    behavior = body["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert behavior["scaleUp"] == {  # the HPA's defaults: 100 % or 4 pods per 15 s
        "stabilizationWindowSeconds": 0, "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                     {"type": "Pods", "value": 4, "periodSeconds": 15}]}
    # A broker KEDA cannot read: the current replicas are held.
    assert body["fallback"] == {"failureThreshold": 3, "replicas": 1,
                                "behavior": "currentReplicas"}
    # No credentials: no TriggerAuthentication.
    assert manifests.trigger_authentication(spec) is None
    assert [m["kind"] for m in manifests.deployment_manifests(spec)] == [
        "Secret", "Deployment", "ScaledObject"]


def test_a_nats_scaled_object_reads_the_monitoring_endpoint():
    spec = stream_spec(kind="nats", stream="ORDERS", group="workers", account="$G",
                       address="https://nats.data:8222", activation=0, min_replicas=1,
                       max_replicas=3, target=100, stabilization_s=86400)
    scaled = manifests.scaled_object(spec)
    validate_keda(scaled)
    body = scaled["spec"]
    # KEDA's nats-jetstream lag is num_pending + num_ack_pending, as Hangar's.
    assert body["triggers"] == [{"type": "nats-jetstream", "name": "lag", "metadata": {
        "natsServerMonitoringEndpoint": "nats.data:8222", "account": "$G",
        "stream": "ORDERS", "consumer": "workers", "lagThreshold": "100",
        "activationLagThreshold": "0", "useHttps": "true"}}]
    assert "scalingModifiers" not in body["advanced"]
    assert (body["minReplicaCount"], body["maxReplicaCount"]) == (1, 3)
    # The HPA accepts a window of an hour at most.
    behavior = body["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 3600


def test_credentials_go_to_the_secret_and_a_trigger_authentication():
    spec = stream_spec(username="default", password="s3cret")
    objects = {m["kind"]: m for m in manifests.deployment_manifests(spec)}
    assert list(objects) == ["Secret", "Deployment", "TriggerAuthentication", "ScaledObject"]
    auth = objects["TriggerAuthentication"]
    validate_keda(auth)
    secret = "support-bot-production-12-env"
    assert auth["spec"] == {"secretTargetRef": [
        {"parameter": "username", "name": secret, "key": "KEDA_STREAM_USERNAME"},
        {"parameter": "password", "name": secret, "key": "KEDA_STREAM_PASSWORD"}]}
    data = objects["Secret"]["data"]
    assert base64.b64decode(data["KEDA_STREAM_PASSWORD"]) == b"s3cret"
    for trigger in objects["ScaledObject"]["spec"]["triggers"]:
        assert trigger["authenticationRef"] == {"name": "support-bot-production-12"}
    validate_keda(objects["ScaledObject"])
    assert "s3cret" not in json.dumps([objects["ScaledObject"], objects["Deployment"], auth])
    for kind in ("Secret", "Deployment"):
        kubernetes_validate.validate(objects[kind], latest_version(), strict=True)
    # KEDA owns the replica count.
    assert "replicas" not in objects["Deployment"]["spec"]


def test_the_strict_validation_does_reject_mistakes():
    scaled = manifests.scaled_object(stream_spec())
    for broken in (
        {**scaled, "spec": {**scaled["spec"], "cooldownPeriods": 300}},  # a typo
        {**scaled, "spec": {**scaled["spec"], "pollingInterval": 0}},  # below the minimum
        {**scaled, "spec": {**scaled["spec"], "triggers": []}},  # at least one
        {**scaled, "spec": {**scaled["spec"], "fallback": {"replicas": 1}}},  # required
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate_keda(broken)


def test_a_source_says_where_keda_reads_it():
    redis = get_source(SourceConfig(kind="redis", url="rediss://bot:p%40ss@cache.data:6380/3",
                                    stream="s", group="g")).endpoint()
    assert (redis.address, redis.database, redis.tls) == ("cache.data:6380", 3, True)
    assert (redis.username, redis.password) == ("bot", "p@ss")
    plain = get_source(SourceConfig(kind="redis", url="redis://127.0.0.1:6379", stream="s",
                                    group="g")).endpoint()
    assert (plain.address, plain.database, plain.tls, plain.password) == (
        "127.0.0.1:6379", 0, False, "")
    nats = get_source(SourceConfig(kind="nats", url="nats://a.data:4222,nats://b.data:4222",
                                   stream="S", group="d")).endpoint()
    assert (nats.address, nats.account) == ("a.data:8222", "$G")
    given = get_source(SourceConfig(kind="nats", url="nats://a.data:4222", stream="S",
                                    group="d", monitoring="mon.data:8223",
                                    account="TEAM")).endpoint()
    assert (given.address, given.account) == ("mon.data:8223", "TEAM")


# Through the reconciler and the autoscaler, against kmock ----------------------------

@pytest_asyncio.fixture
async def cluster(kmock: RawHandler) -> RawHandler:
    for resource in RESOURCES.values():
        kmock.resources[resource] = {}
    kmock.resources["keda.sh/v1alpha1/scaledobjects"] = {}
    kmock.resources["keda.sh/v1alpha1/triggerauthentications"] = {}
    return kmock


def run(function, *args, **kwargs):
    return asyncio.to_thread(function, *args, **kwargs)


def calls(server: RawHandler, since: int = 0) -> list[tuple[str, str]]:
    return [(r.method.value, r.url.path) for r in list(server)[since:]]


def _closing(function):
    def call(*args, **kwargs):
        from django.db import connections
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()
    return call


@_closing
def _stream_deployment(url: str, keys: RedisKeys, *, keda: bool):
    from deployments.models import Deployment

    from .factories import AgentFactory, TargetFactory, VersionFactory

    agent = AgentFactory(slug="orders", pattern="stream")
    settings = keys.settings(lag_target=10, activation_lag=2, max_replicas=6,
                             cooldown_s=60, scale_down_window_s=30, polling_s=0.2)
    version = VersionFactory(agent=agent, number=1, image="registry.local/agent:1", port=None,
                             pattern_settings=settings)
    connection = {"host": url, "token": TOKEN, "namespace": NAMESPACE}
    if keda:
        connection["keda"] = True
    target = TargetFactory(team=agent.team, kind="kubernetes", name="k8s",
                           connection=connection)
    return Deployment.objects.create(agent=agent, version=version, target=target, replicas=1)


@_closing
def _reconcile(deployment_id: int) -> str:
    from deployments.reconciler import reconcile_deployment
    return reconcile_deployment(deployment_id)


@_closing
def _autoscale(deployment_id: int):
    from deployments.autoscaling.scaler import autoscale
    from deployments.models import Deployment, DeploymentEvent, StreamSample

    decision = autoscale(deployment_id)
    d = Deployment.objects.get(pk=deployment_id)
    sample = StreamSample.objects.filter(deployment=d).order_by("-at", "-pk").first()
    scaled = list(DeploymentEvent.objects.filter(deployment=d, reason="Autoscaled")
                  .values_list("message", flat=True))
    return decision, d.replicas, (sample.lag if sample else None), scaled


@_closing
def _audited(deployment_id: int, by: str = "autoscaler") -> int:
    from deployments.models import AuditEvent
    return AuditEvent.objects.filter(action="deployment.scale", actor_label=by,
                                     object_id=str(deployment_id)).count()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_without_keda_hangar_scales_the_deployment_on_the_lag(cluster):
    keys = RedisKeys()
    try:
        d = await run(_stream_deployment, str(cluster.url), keys, keda=False)
        name = f"orders-production-{d.pk}"
        await run(_reconcile, d.pk)  # applies the Deployment, creates the group, reads lag 0
        applied = calls(cluster)
        assert ("PATCH", f"{DEPLOYMENTS}/{name}") in applied
        assert stored_replicas(cluster, name) == 1
        first = next(r for r in cluster
                     if (r.method.value, r.url.path) == ("PATCH", f"{DEPLOYMENTS}/{name}"))
        # No KEDA here: nothing of KEDA's is asked for, and no HPA either.
        assert not [p for _, p in applied if "keda.sh" in p]
        assert ("PATCH", f"{HPAS}/{name}") not in applied

        client = redis_py.Redis.from_url(_redis_url())
        for i in range(35):
            client.xadd(keys.source, {"input": str(i)})
        await asyncio.sleep(0.25)  # the next reading is due (polling_s 0.2)
        decision, replicas, lag, scaled = await run(_autoscale, d.pk)
        assert lag == 35 == keys.broker_lag()[0]
        assert replicas == 4 and decision.desired == 4  # ceil(35 / 10)
        assert scaled == ["lag 35 over 1 replica × target 10 → 4 replicas"]
        assert await run(_audited, d.pk) == 1

        seen = len(list(cluster))
        await run(_reconcile, d.pk)  # what the verb enqueued: the new replicas applied
        assert ("PATCH", f"{DEPLOYMENTS}/{name}") in calls(cluster, seen)
        patch = next(r for r in list(cluster)[seen:]
                     if (r.method.value, r.url.path) == ("PATCH", f"{DEPLOYMENTS}/{name}"))
        assert patch.data["spec"]["replicas"] == 4
        # Only the count changed: the consumers are not restarted for it.
        assert patch.data["spec"]["template"] == first.data["spec"]["template"]
        assert (patch.data["metadata"]["labels"]["hangar.generation"]
                != first.data["metadata"]["labels"]["hangar.generation"])
        kubernetes_validate.validate(patch.data, latest_version(), strict=True)
        assert stored_replicas(cluster, name) == 4
        client.close()
    finally:
        keys.cleanup()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_with_keda_a_scaled_object_is_applied_and_hangar_does_not_scale(cluster):
    keys = RedisKeys()
    try:
        d = await run(_stream_deployment, str(cluster.url), keys, keda=True)
        name = f"orders-production-{d.pk}"
        await run(_reconcile, d.pk)
        applied = calls(cluster)
        assert ("PATCH", f"{DEPLOYMENTS}/{name}") in applied
        assert ("PATCH", f"{SCALED_OBJECTS}/{name}") in applied
        # No password in this Redis URL: no TriggerAuthentication (one is deleted).
        assert ("DELETE", f"{TRIGGER_AUTHS}/{name}") in applied
        assert ("PATCH", f"{HPAS}/{name}") not in applied
        requests = {(r.method.value, r.url.path): r for r in cluster}
        deployment = requests["PATCH", f"{DEPLOYMENTS}/{name}"].data
        assert "replicas" not in deployment["spec"]  # KEDA's to set
        kubernetes_validate.validate(deployment, latest_version(), strict=True)
        scaled = requests["PATCH", f"{SCALED_OBJECTS}/{name}"]
        assert scaled.headers["Content-Type"] == "application/apply-patch+yaml"
        assert scaled.params == {"fieldManager": "hangar", "force": "true"}
        assert scaled.data["metadata"]["namespace"] == NAMESPACE
        validate_keda({**scaled.data, "metadata": {
            k: v for k, v in scaled.data["metadata"].items() if k != "namespace"}})
        body = scaled.data["spec"]
        assert (body["minReplicaCount"], body["maxReplicaCount"]) == (0, 6)
        assert (body["cooldownPeriod"], body["pollingInterval"]) == (60, 1)
        assert body["advanced"]["scalingModifiers"]["target"] == "10"
        assert body["advanced"]["scalingModifiers"]["activationTarget"] == "2"
        assert (body["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
                ["stabilizationWindowSeconds"]) == 30
        assert {t["metadata"]["stream"] for t in body["triggers"]} == {keys.source}
        assert {t["metadata"]["address"] for t in body["triggers"]} == {"127.0.0.1:6379"}

        client = redis_py.Redis.from_url(_redis_url())
        for i in range(35):
            client.xadd(keys.source, {"input": str(i)})
        await asyncio.sleep(0.25)
        decision, replicas, lag, scaled_events = await run(_autoscale, d.pk)
        # Hangar still reads and shows the lag, but KEDA scales: one autoscaler.
        assert lag == 35 and decision is None
        assert replicas == 1 and scaled_events == []
        assert await run(_audited, d.pk) == 0
        client.close()

        # KEDA's HPA scales the Deployment: Hangar follows (its page and health
        # count what runs), says so with the lag it read, and audits it as KEDA's.
        key = ("apps/v1/deployments", NAMESPACE, name)
        scaled_up = json.loads(json.dumps(cluster.objects[key], default=dict))
        scaled_up["spec"]["replicas"] = 4
        cluster.objects[key] = scaled_up
        decision, replicas, lag, scaled_events = await run(_autoscale, d.pk)
        assert decision is None and replicas == 4
        assert scaled_events == ["KEDA: 1 → 4 replicas (lag 35 at Hangar's last reading)"]
        assert await run(_audited, d.pk, by="KEDA") == 1
        seen = len(list(cluster))
        await run(_reconcile, d.pk)
        again = next(r for r in list(cluster)[seen:]
                     if (r.method.value, r.url.path) == ("PATCH", f"{DEPLOYMENTS}/{name}"))
        assert "replicas" not in again.data["spec"]  # still KEDA's
        assert again.data["spec"]["template"] == deployment["spec"]["template"]

        seen = len(list(cluster))
        await run(_stop_and_reconcile, d.pk)
        deletes = [p for m, p in calls(cluster, seen) if m == "DELETE"]
        assert f"{SCALED_OBJECTS}/{name}" in deletes
        assert deletes.index(f"{SCALED_OBJECTS}/{name}") < deletes.index(
            f"{DEPLOYMENTS}/{name}")
    finally:
        keys.cleanup()


def _redis_url() -> str:
    from .stream_brokers import redis_url
    return redis_url()


def stored_replicas(server: RawHandler, name: str):
    return server.objects["apps/v1/deployments", NAMESPACE, name]["spec"].get("replicas")


@_closing
def _stop_and_reconcile(deployment_id: int) -> str:
    from deployments.actions import update_deployment
    from deployments.audit import Actor
    from deployments.models import Deployment
    from deployments.reconciler import reconcile_deployment

    d = Deployment.objects.get(pk=deployment_id)
    update_deployment(d, state="stopped", actor=Actor(user=None, source="test"))
    return reconcile_deployment(deployment_id)
