"""The Kubernetes driver, without a cluster.

Manifests are validated against the official OpenAPI schemas
(``kubernetes-validate``, strict: unknown fields fail). The driver runs the
official ``kubernetes`` client over HTTP against ``kmock``, an in-memory
Kubernetes API server on 127.0.0.1 started by kmock's pytest fixture; the
tests script its answers and read back the requests it received. The driver
is synchronous, so async tests call it in a worker thread while the server
answers on the event loop.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import socket
from datetime import UTC, datetime
from typing import Any

import kubernetes_validate
import pytest
import pytest_asyncio
import yaml
from kmock import KubernetesEmulator, RawHandler
from kubernetes_validate.utils import latest_version

from deployments.models import Target
from deployments.runtimes import get_driver
from deployments.runtimes import k8s_manifests as manifests
from deployments.runtimes.base import (
    Autoscale,
    DeploymentSpec,
    HealthCheck,
    InstanceSpec,
    ObservedInstance,
    RuntimeFailure,
)
from deployments.runtimes.kubernetes import KubernetesRuntime, observe_pod

NAMESPACE = "agents"
TOKEN = "t0ken-for-tests"
APPLY = "application/apply-patch+yaml"
KUBERNETES_VERSIONS = ["1.27", latest_version()]
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class Cluster(KubernetesEmulator):
    """kmock's in-memory API server with two behaviours of a real one the
    driver relies on: server-side apply creates missing objects, and lists
    honour (equality) label selectors."""

    async def _handle(self, request):
        content_type = request.headers.get("Content-Type", "")
        if (request.method.value == "PATCH" and request.name and not request.subresource
                and content_type.startswith("application/apply-patch")):
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key not in self.objects:
                    self.objects[key] = {}
                elif self.objects[key].deleted:
                    self.objects[key].create({})
        return await super()._handle(request)

    async def _serve_list(self, request):
        listing = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            wanted = dict(term.split("=", 1) for term in selector.split(","))
            listing["items"] = [
                item for item in listing["items"]
                if wanted.items() <= ((item.get("metadata") or {}).get("labels") or {}).items()
            ]
        return listing


pytestmark = pytest.mark.kmock(cls=Cluster)

RESOURCES = {
    "Secret": "v1/secrets",
    "ConfigMap": "v1/configmaps",
    "Service": "v1/services",
    "Pod": "v1/pods",
    "Deployment": "apps/v1/deployments",
    "HorizontalPodAutoscaler": "autoscaling/v2/horizontalpodautoscalers",
    "CronJob": "batch/v1/cronjobs",
    "Job": "batch/v1/jobs",
}
PATHS = {
    "Secret": f"/api/v1/namespaces/{NAMESPACE}/secrets",
    "ConfigMap": f"/api/v1/namespaces/{NAMESPACE}/configmaps",
    "Service": f"/api/v1/namespaces/{NAMESPACE}/services",
    "Pod": f"/api/v1/namespaces/{NAMESPACE}/pods",
    "Deployment": f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
    "HorizontalPodAutoscaler":
        f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers",
    "CronJob": f"/apis/batch/v1/namespaces/{NAMESPACE}/cronjobs",
    "Job": f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
}


# Specs -----------------------------------------------------------------------

def template(deployment_id: int = 12, **changes: Any) -> InstanceSpec:
    values: dict[str, Any] = dict(
        deployment_id=deployment_id,
        name=f"support-bot-production-{deployment_id}",
        generation=3,
        team="acme",
        agent="support-bot",
        pattern="realtime",
        image="hangar/reference-agent:1.0",
        command=("python3", "/app/agent.py"),
        env={"LOG_LEVEL": "info"},
        cpu=0.5,
        memory_mb=256,
        port=8080,
        health=HealthCheck(path="/healthz", ready_path="/readyz", timeout_s=2.0),
        version="7",
    )
    values.update(changes)
    return InstanceSpec(**values)


def deployment_spec(deployment_id: int = 12, **changes: Any) -> DeploymentSpec:
    values: dict[str, Any] = dict(
        deployment_id=deployment_id,
        name=f"support-bot-production-{deployment_id}",
        generation=3,
        replicas=3,
        template=template(deployment_id),
        secret_env={"OPENAI_KEY": "sk-live-secret"},
        config={"MODEL": "offline-echo"},
    )
    values.update(changes)
    return DeploymentSpec(**values)


def scheduled_spec(**changes: Any) -> DeploymentSpec:
    values: dict[str, Any] = dict(
        template=template(pattern="batch", port=None, health=None),
        replicas=0,
        schedule="*/15 * * * *",
        timezone="Europe/Paris",
        concurrency_policy="Forbid",
        timeout_s=600,
        retries=2,
    )
    values.update(changes)
    return deployment_spec(**values)


def every_manifest() -> dict[str, dict]:
    spec = deployment_spec()
    return {
        "deployment": manifests.deployment(spec),
        "deployment-autoscaled": manifests.deployment(
            dataclasses.replace(spec, autoscale=Autoscale(2, 8, "cpu", 70))),
        "service": manifests.service(spec),
        "hpa-cpu": manifests.horizontal_pod_autoscaler(
            dataclasses.replace(spec, autoscale=Autoscale(2, 8, "cpu", 70))),
        "hpa-inflight": manifests.horizontal_pod_autoscaler(
            dataclasses.replace(spec, autoscale=Autoscale(1, 10, "inflight", 2.5))),
        "hpa-lag": manifests.horizontal_pod_autoscaler(
            dataclasses.replace(spec, autoscale=Autoscale(0, 4, "lag", 100))),
        "secret": manifests.secret(spec),
        "config-map": manifests.config_map(spec),
        "cron-job": manifests.cron_job(scheduled_spec()),
        "job": manifests.job(template(), name="support-bot-run-1", timeout_s=30.5,
                             secret_name="support-bot-run-1-env"),
        "job-inline-env": manifests.job(template(port=None, health=None),
                                        name="support-bot-run-2", timeout_s=None),
        "job-secret": manifests.job_secret(template(), name="support-bot-run-1-env"),
    }


# Manifests -------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kind", list(every_manifest()))
def test_every_manifest_validates_strictly(kind, version):
    manifest = every_manifest()[kind]
    kubernetes_validate.validate(manifest, version, strict=True)


def test_the_strict_validation_does_reject_mistakes():
    broken = manifests.deployment(deployment_spec())
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullSecret"] = "oops"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, latest_version(), strict=True)


def test_every_object_carries_the_hangar_labels_and_a_valid_name():
    expected = {
        "hangar.managed": "true",
        "hangar.deployment": "12",
        "hangar.instance": "support-bot-production-12",
        "hangar.generation": "3",
        "hangar.team": "acme",
        "hangar.agent": "support-bot",
        "hangar.version": "7",
    }
    for kind, manifest in every_manifest().items():
        # Jobs (not their Secret) also say so: they are never listed as instances.
        job = {"hangar.job": "true"} if kind in ("job", "job-inline-env") else {}
        assert manifest["metadata"]["labels"] == {**expected, **job}, kind
        assert RFC1035.match(manifest["metadata"]["name"]), kind
        assert "namespace" not in manifest["metadata"], kind


def test_deployment_manifest():
    manifest = manifests.deployment(deployment_spec())
    spec = manifest["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"] == {
        "matchLabels": {"hangar.deployment": "12", "hangar.managed": "true"}}
    pod = spec["template"]
    assert pod["metadata"]["labels"]["hangar.version"] == "7"
    assert "hangar.generation" not in pod["metadata"]["labels"]  # a scale must not roll pods
    assert pod["metadata"]["annotations"][manifests.ENV_CHECKSUM_ANNOTATION]
    [container] = pod["spec"]["containers"]
    assert container["image"] == "hangar/reference-agent:1.0"
    assert container["args"] == ["python3", "/app/agent.py"]
    assert container["env"][0] == {
        "name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    env = {item["name"]: item["value"] for item in container["env"][1:]}
    assert env == {"LOG_LEVEL": "info", "PORT": "8080", "AGENT_BIND": "0.0.0.0"}
    assert "sk-live-secret" not in str(manifest)  # secret values live in the Secret
    assert container["envFrom"] == [
        {"configMapRef": {"name": "support-bot-production-12-config"}},
        {"secretRef": {"name": "support-bot-production-12-env"}},
    ]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_instance_names_can_refer_to_the_pod_name():
    spec = deployment_spec(template=template(env={"HANGAR_INSTANCE": "$(POD_NAME)"}))
    [container] = manifests.deployment(spec)["spec"]["template"]["spec"]["containers"]
    names = [item["name"] for item in container["env"]]
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert names.index("POD_NAME") < names.index("HANGAR_INSTANCE")


def test_settings_from_json_are_coerced():
    cron = manifests.cron_job(scheduled_spec(timeout_s="90.5", retries="3"))
    assert cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 91
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 3


def test_new_secret_or_config_values_roll_the_pods():
    def checksum(spec):
        return manifests.deployment(spec)["spec"]["template"]["metadata"]["annotations"][
            manifests.ENV_CHECKSUM_ANNOTATION]

    spec = deployment_spec()
    assert checksum(spec) == checksum(deployment_spec())
    assert checksum(spec) != checksum(dataclasses.replace(spec, secret_env={"OPENAI_KEY": "new"}))
    assert checksum(spec) != checksum(dataclasses.replace(spec, config={"MODEL": "other"}))


def test_scaling_leaves_the_pods_alone_and_a_restart_rolls_them():
    def pods(spec):
        return manifests.deployment(spec)["spec"]["template"]

    spec = deployment_spec()
    # A new replica count is a new generation: the pods' template stays as it is.
    scaled = dataclasses.replace(spec, replicas=5, generation=4,
                                 template=dataclasses.replace(spec.template, generation=4))
    assert manifests.deployment(scaled)["metadata"]["labels"]["hangar.generation"] == "4"
    assert pods(scaled) == pods(spec)
    # The restart verb's stamp changes it, as `kubectl rollout restart` does.
    restarted = dataclasses.replace(scaled, restarted_at="2026-12-02T15:00:00+00:00")
    annotations = pods(restarted)["metadata"]["annotations"]
    assert annotations[manifests.RESTARTED_AT_ANNOTATION] == "2026-12-02T15:00:00+00:00"
    assert pods(restarted) != pods(scaled)


def test_autoscaled_deployment_leaves_replicas_to_the_hpa():
    spec = deployment_spec(autoscale=Autoscale(2, 8, "cpu", 70))
    assert "replicas" not in manifests.deployment(spec)["spec"]


def test_hpa_manifests_per_signal():
    cpu = manifests.horizontal_pod_autoscaler(
        deployment_spec(autoscale=Autoscale(2, 8, "cpu", 70)))["spec"]
    assert cpu["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "support-bot-production-12"}
    assert (cpu["minReplicas"], cpu["maxReplicas"]) == (2, 8)
    assert cpu["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]

    inflight = manifests.horizontal_pod_autoscaler(
        deployment_spec(autoscale=Autoscale(0, 10, "inflight", 2.5)))["spec"]
    assert inflight["minReplicas"] == 1  # scale-to-zero needs an alpha feature gate
    assert inflight["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "hangar_inflight_requests"},
        "target": {"type": "AverageValue", "averageValue": "2500m"}}}]

    whole = manifests.horizontal_pod_autoscaler(
        deployment_spec(autoscale=Autoscale(1, 3, "inflight", 10)))["spec"]
    assert whole["metrics"][0]["pods"]["target"]["averageValue"] == "10"

    with pytest.raises(ValueError, match="signal"):
        manifests.horizontal_pod_autoscaler(
            deployment_spec(autoscale=Autoscale(1, 3, "vibes", 1)))


def test_service_secret_and_config_map_manifests():
    spec = deployment_spec()
    service = manifests.service(spec)["spec"]
    assert service["type"] == "ClusterIP"
    assert service["selector"] == {"hangar.deployment": "12", "hangar.managed": "true"}
    assert service["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]

    secret = manifests.secret(spec)
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["name"] == "support-bot-production-12-env"
    assert base64.b64decode(secret["data"]["OPENAI_KEY"]) == b"sk-live-secret"

    config_map = manifests.config_map(spec)
    assert config_map["metadata"]["name"] == "support-bot-production-12-config"
    assert config_map["data"] == {"MODEL": "offline-echo"}


def test_cron_job_manifest():
    manifest = manifests.cron_job(scheduled_spec())
    spec = manifest["spec"]
    assert spec["schedule"] == "*/15 * * * *"
    assert spec["timeZone"] == "Europe/Paris"
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]
    assert job["metadata"]["labels"]["hangar.deployment"] == "12"
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert job["spec"]["backoffLimit"] == 2
    pod = job["spec"]["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"]["hangar.deployment"] == "12"
    [container] = pod["spec"]["containers"]
    assert "livenessProbe" not in container and "ports" not in container


def test_job_manifest_keeps_the_environment_in_its_secret():
    job = manifests.job(template(env={"API_KEY": "sk-run"}), name="run-1", timeout_s=30.5,
                        secret_name="run-1-env")
    assert job["spec"]["activeDeadlineSeconds"] == 31
    assert job["spec"]["backoffLimit"] == 0
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "run-1-env"}}]
    assert "sk-run" not in str(job)
    secret = manifests.job_secret(template(env={"API_KEY": "sk-run"}), name="run-1-env")
    assert base64.b64decode(secret["data"]["API_KEY"]) == b"sk-run"


def test_which_objects_a_deployment_needs():
    def kinds(spec):
        return [m["kind"] for m in manifests.deployment_manifests(spec)]

    assert kinds(deployment_spec()) == ["Secret", "ConfigMap", "Deployment", "Service"]
    assert kinds(deployment_spec(secret_env={}, config={},
                                 template=template(port=None, health=None))) == ["Deployment"]
    assert kinds(deployment_spec(autoscale=Autoscale(1, 3, "cpu", 80)))[-1] == (
        "HorizontalPodAutoscaler")
    assert kinds(scheduled_spec()) == ["Secret", "ConfigMap", "CronJob"]


@pytest.mark.parametrize("value", [
    "support-bot", "Support_Bot", "9-lives", "a" * 80, "-x-", "team/agent@prod", "",
])
def test_names_and_label_values_are_always_valid(value):
    name = manifests.object_name(value)
    assert RFC1035.match(name) and len(name) <= manifests.NAME_MAX
    label = manifests.label_value(value)
    assert LABEL_VALUE.match(label) and len(label) <= 63
    assert manifests.is_label_value(label)


def test_valid_names_and_values_are_kept_and_changed_ones_stay_distinct():
    assert manifests.object_name("support-bot-production-12") == "support-bot-production-12"
    assert manifests.label_value("support-bot.v2_x") == "support-bot.v2_x"
    assert manifests.object_name("Support_Bot") != manifests.object_name("support-bot")
    assert manifests.label_value("a" * 64) != manifests.label_value("a" * 65)


# Driver without a server -------------------------------------------------------

def target(**connection: Any) -> Target:
    return Target(kind="kubernetes", name="cluster", connection=connection)


def test_driver_is_registered_with_its_features():
    driver = get_driver(target(host="http://127.0.0.1:1", namespace=NAMESPACE))
    assert isinstance(driver, KubernetesRuntime)
    assert driver.namespace == NAMESPACE
    features = driver.features
    assert features.manages_replicas and features.supports_jobs
    assert features.supports_log_follow and features.supports_health_probe
    assert driver.allocate_ports() is False


def test_ensure_instance_is_refused_permanently():
    driver = KubernetesRuntime(target(host="http://127.0.0.1:1"))
    with pytest.raises(RuntimeFailure, match="managed by the Deployment") as failure:
        driver.ensure_instance(template())
    assert failure.value.permanent


def test_bad_settings_are_permanent_failures_that_do_not_echo_secrets():
    with pytest.raises(RuntimeFailure) as failure:
        KubernetesRuntime(target()).ping()
    assert failure.value.permanent

    broken = f"users:\n- name: x\n  user: {{token: {TOKEN}\n"
    with pytest.raises(RuntimeFailure) as failure:
        KubernetesRuntime(target(kubeconfig=broken)).ping()
    assert failure.value.permanent and TOKEN not in str(failure.value)

    with pytest.raises(RuntimeFailure) as failure:
        KubernetesRuntime(target(kubeconfig="apiVersion: v1\nkind: Config\n")).ping()
    assert failure.value.permanent

    with pytest.raises(RuntimeFailure) as failure:
        KubernetesRuntime(target(host="http://127.0.0.1:1", colour="blue"))
    assert failure.value.permanent


@pytest.mark.parametrize("user", [
    {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "touch",
              "args": ["{marker}"]}},
    {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"},
    {"client-certificate": "/etc/hangar/cert.pem", "client-key": "/etc/hangar/key.pem"},
])
def test_kubeconfigs_that_run_programs_or_read_local_files_are_refused(tmp_path, user):
    marker = tmp_path / "executed"
    if "exec" in user:
        user["exec"]["args"] = [str(marker)]
    kubeconfig = yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    })
    with pytest.raises(RuntimeFailure, match="only inline credentials") as failure:
        KubernetesRuntime(target(kubeconfig=kubeconfig)).ping()
    assert failure.value.permanent
    assert not marker.exists()


def test_an_invalid_spec_fails_permanently_before_any_request():
    driver = KubernetesRuntime(target(host="http://127.0.0.1:1"))
    with pytest.raises(RuntimeFailure, match="image") as failure:
        driver.apply_deployment(deployment_spec(template=template(image="")))
    assert failure.value.permanent


def test_an_unreachable_api_is_a_transient_failure():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    driver = KubernetesRuntime(target(host=f"http://127.0.0.1:{port}", token=TOKEN))
    with pytest.raises(RuntimeFailure, match="cannot reach") as failure:
        driver.ping()
    assert not failure.value.permanent
    assert TOKEN not in str(failure.value)


def test_probe_reads_the_pod_verdict():
    def observed(**changes):
        values = dict(name="p", runtime_id="u", generation=1, phase="running")
        values.update(changes)
        return ObservedInstance(**values)

    driver = KubernetesRuntime(target(host="http://127.0.0.1:1"))
    health = HealthCheck()
    assert driver.probe(observed(runtime_health="healthy"), health).ready
    starting = driver.probe(observed(runtime_health="starting"), health)
    assert starting.live and not starting.ready
    not_ready = driver.probe(observed(runtime_health="unhealthy"), health)
    assert not_ready.live and not not_ready.ready and "readiness" in not_ready.reason
    crashing = driver.probe(
        observed(runtime_health="unhealthy", message="CrashLoopBackOff: back-off"), health)
    assert not crashing.live and crashing.reason.startswith("CrashLoopBackOff")
    pending = driver.probe(observed(phase="pending", message="ImagePullBackOff: x"), health)
    assert not pending.live and pending.reason == "ImagePullBackOff: x"


# Driver against kmock ----------------------------------------------------------

@pytest_asyncio.fixture
async def cluster(kmock: RawHandler) -> RawHandler:
    for resource in RESOURCES.values():
        kmock.resources[resource] = {}
    return kmock


def driver_for(server: RawHandler, **changes: Any) -> KubernetesRuntime:
    connection = {"host": str(server.url), "token": TOKEN, "namespace": NAMESPACE}
    connection.update(changes)
    driver = KubernetesRuntime(target(**connection))
    driver.poll_interval = 0.02
    return driver


def run(function, *args, **kwargs):
    """Call the synchronous driver off the event loop that serves kmock."""
    return asyncio.to_thread(function, *args, **kwargs)


def requests(server: RawHandler) -> list[tuple[str, str]]:
    return [(request.method.value, request.url.path) for request in server]


def stored(server: RawHandler, kind: str, name: str):
    return server.objects[RESOURCES[kind], NAMESPACE, name]


@pytest.mark.asyncio
async def test_apply_deployment_server_side_applies_each_object(cluster):
    await run(driver_for(cluster).apply_deployment, deployment_spec())

    name = "support-bot-production-12"
    assert requests(cluster) == [
        ("PATCH", f"{PATHS['Secret']}/{name}-env"),
        ("PATCH", f"{PATHS['ConfigMap']}/{name}-config"),
        ("PATCH", f"{PATHS['Deployment']}/{name}"),
        ("PATCH", f"{PATHS['Service']}/{name}"),
        ("DELETE", f"{PATHS['HorizontalPodAutoscaler']}/{name}"),  # none wanted
        ("DELETE", f"{PATHS['CronJob']}/{name}"),
    ]
    for request in list(cluster)[:4]:
        assert request.headers["Content-Type"] == APPLY
        assert request.params == {"fieldManager": "hangar", "force": "true"}
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.data["metadata"]["namespace"] == NAMESPACE
        assert request.data["metadata"]["labels"]["hangar.deployment"] == "12"
        assert request.data["metadata"]["labels"]["hangar.generation"] == "3"

    secret, config_map, deployment, service = (r.data for r in list(cluster)[:4])
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["OPENAI_KEY"]) == b"sk-live-secret"
    assert config_map["data"] == {"MODEL": "offline-echo"}
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["metadata"]["labels"]["hangar.version"] == "7"
    assert service["spec"]["ports"][0]["port"] == 8080
    for body in (secret, config_map, deployment, service):
        kubernetes_validate.validate(body, latest_version(), strict=True)

    assert stored(cluster, "Deployment", name)["spec"]["replicas"] == 3
    assert stored(cluster, "Service", name)["spec"]["type"] == "ClusterIP"


@pytest.mark.asyncio
async def test_applying_again_is_idempotent(cluster):
    driver = driver_for(cluster)
    await run(driver.apply_deployment, deployment_spec())
    first = requests(cluster)
    await run(driver.apply_deployment, deployment_spec())
    assert requests(cluster) == first * 2


@pytest.mark.asyncio
async def test_an_hpa_is_applied_and_deleted_when_autoscaling_is_removed(cluster):
    driver = driver_for(cluster)
    name = "support-bot-production-12"
    hpa_path = f"{PATHS['HorizontalPodAutoscaler']}/{name}"

    await run(driver.apply_deployment,
              deployment_spec(autoscale=Autoscale(2, 6, "inflight", 4)))
    applied = {request.url.path: request for request in cluster if request.method.value == "PATCH"}
    assert "replicas" not in applied[f"{PATHS['Deployment']}/{name}"].data["spec"]
    hpa = applied[hpa_path]
    assert hpa.headers["Content-Type"] == APPLY
    assert hpa.params == {"fieldManager": "hangar", "force": "true"}
    assert hpa.data["spec"]["metrics"][0]["pods"]["metric"]["name"] == "hangar_inflight_requests"
    assert not stored(cluster, "HorizontalPodAutoscaler", name).deleted

    seen = len(requests(cluster))
    await run(driver.apply_deployment, deployment_spec(replicas=2))
    later = requests(cluster)[seen:]
    assert ("DELETE", hpa_path) in later
    assert ("PATCH", hpa_path) not in later
    assert stored(cluster, "HorizontalPodAutoscaler", name).deleted
    deployment = next(r for r in list(cluster)[seen:] if r.url.path.startswith(PATHS["Deployment"]))
    assert deployment.data["spec"]["replicas"] == 2
    delete = next(r for r in list(cluster)[seen:] if r.url.path == hpa_path)
    assert delete.params["propagationPolicy"] == "Background"


@pytest.mark.asyncio
async def test_a_scheduled_batch_is_a_cron_job(cluster):
    await run(driver_for(cluster).apply_deployment, scheduled_spec())

    name = "support-bot-production-12"
    assert requests(cluster) == [
        ("PATCH", f"{PATHS['Secret']}/{name}-env"),
        ("PATCH", f"{PATHS['ConfigMap']}/{name}-config"),
        ("PATCH", f"{PATHS['CronJob']}/{name}"),
        ("DELETE", f"{PATHS['Deployment']}/{name}"),
        ("DELETE", f"{PATHS['Service']}/{name}"),
        ("DELETE", f"{PATHS['HorizontalPodAutoscaler']}/{name}"),
    ]
    cron = list(cluster)[2]
    assert cron.headers["Content-Type"] == APPLY
    assert cron.data["spec"]["schedule"] == "*/15 * * * *"
    assert cron.data["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 2
    kubernetes_validate.validate(cron.data, latest_version(), strict=True)


@pytest.mark.asyncio
async def test_delete_deployment_deletes_every_labelled_object(cluster):
    driver = driver_for(cluster)
    await run(driver.apply_deployment, deployment_spec(autoscale=Autoscale(1, 3, "cpu", 80)))
    await run(driver.apply_deployment, deployment_spec(13))  # a neighbour that must stay
    seen = len(requests(cluster))

    await run(driver.delete_deployment, 12)

    calls = list(cluster)[seen:]
    lists = [r for r in calls if r.method.value == "GET"]
    assert {r.url.path for r in lists} == {
        PATHS[kind] for kind in ("CronJob", "HorizontalPodAutoscaler", "Service", "Deployment",
                                 "Job", "ConfigMap", "Secret")}
    assert {r.params["labelSelector"] for r in lists} == {
        "hangar.deployment=12,hangar.managed=true"}
    name = "support-bot-production-12"
    deletes = [(r.method.value, r.url.path) for r in calls if r.method.value == "DELETE"]
    assert sorted(deletes) == sorted([
        ("DELETE", f"{PATHS['HorizontalPodAutoscaler']}/{name}"),
        ("DELETE", f"{PATHS['Service']}/{name}"),
        ("DELETE", f"{PATHS['Deployment']}/{name}"),
        ("DELETE", f"{PATHS['ConfigMap']}/{name}-config"),
        ("DELETE", f"{PATHS['Secret']}/{name}-env"),
    ])
    for kind, object_name in [("Deployment", name), ("Service", name),
                              ("HorizontalPodAutoscaler", name), ("Secret", f"{name}-env"),
                              ("ConfigMap", f"{name}-config")]:
        assert stored(cluster, kind, object_name).deleted, kind
    assert not stored(cluster, "Deployment", "support-bot-production-13").deleted
    assert not stored(cluster, "Secret", "support-bot-production-13-env").deleted


def pod(name: str, *, deployment_id: int = 12, phase: str, ready: bool = False,
        containers: list[dict] | None = None, **status: Any) -> dict:
    conditions = [{"type": "PodScheduled", "status": "True"},
                  {"type": "Ready", "status": "True" if ready else "False"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{name}",
            "labels": {"hangar.deployment": str(deployment_id), "hangar.managed": "true",
                       "hangar.generation": "3", "hangar.version": "7",
                       "pod-template-hash": "abc"},
        },
        "spec": {
            "nodeName": "node-a",
            "containers": [{"name": "agent", "image": "img",
                            "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": {
            "phase": phase,
            "conditions": conditions,
            "podIP": "10.1.0.7",
            "startTime": "2026-01-02T03:04:05Z",
            "containerStatuses": containers or [],
            **status,
        },
    }


def container_status(state: dict, *, ready: bool = False, started: bool | None = None,
                     restarts: int = 0, last: dict | None = None) -> dict:
    status = {"name": "agent", "image": "img", "imageID": "", "ready": ready,
              "restartCount": restarts, "state": state, "lastState": last or {}}
    if started is not None:
        status["started"] = started
    return status


def seed_pods(server: RawHandler) -> None:
    pods = [
        pod("web-ready", phase="Running", ready=True, containers=[container_status(
            {"running": {"startedAt": "2026-01-02T03:04:06Z"}}, ready=True, started=True)]),
        pod("web-pull", phase="Pending", containers=[container_status(
            {"waiting": {"reason": "ImagePullBackOff",
                         "message": 'Back-off pulling image "img"'}})]),
        pod("web-crash", phase="Running", containers=[container_status(
            {"waiting": {"reason": "CrashLoopBackOff",
                         "message": "back-off 40s restarting failed container"}},
            restarts=4, last={"terminated": {"reason": "Error", "exitCode": 1}})]),
        pod("web-unready", phase="Running", containers=[container_status(
            {"running": {}}, started=True)]),
        pod("web-warming", phase="Running", containers=[container_status(
            {"running": {}}, started=False)]),
        pod("web-creating", phase="Pending", podIP=None, containers=[container_status(
            {"waiting": {"reason": "ContainerCreating"}})]),
        pod("web-oom", phase="Failed", containers=[container_status(
            {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                            "finishedAt": "2026-01-02T03:10:00Z"}}, restarts=1)]),
        pod("web-lost", phase="Unknown"),
        pod("other-team", deployment_id=99, phase="Running", ready=True),
    ]
    for item in pods:
        server.objects["v1/pods", NAMESPACE, item["metadata"]["name"]] = item


@pytest.mark.asyncio
async def test_pod_status_flows_into_observed_instances(cluster):
    seed_pods(cluster)

    observed = {o.name: o for o in await run(driver_for(cluster).list_instances, 12)}

    [listing] = list(cluster)
    assert listing.url.path == PATHS["Pod"]
    assert listing.params["labelSelector"] == "hangar.deployment=12,hangar.managed=true"
    assert set(observed) == {"web-ready", "web-pull", "web-crash", "web-unready", "web-warming",
                             "web-creating", "web-oom", "web-lost"}

    ready = observed["web-ready"]
    assert (ready.phase, ready.runtime_health, ready.message) == ("running", "healthy", "")
    assert ready.runtime_id == "uid-web-ready"
    assert (ready.generation, ready.version) == (3, "7")
    assert ready.address == "10.1.0.7:8080" and ready.port == 8080
    assert ready.host == "node-a"
    assert ready.started_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    pull = observed["web-pull"]
    assert (pull.phase, pull.runtime_health) == ("pending", "")
    assert pull.message == 'ImagePullBackOff: Back-off pulling image "img"'

    crash = observed["web-crash"]
    assert (crash.phase, crash.runtime_health, crash.restarts) == ("running", "unhealthy", 4)
    assert crash.message.startswith("CrashLoopBackOff: back-off 40s")
    assert "last exit: Error, code 1" in crash.message

    assert (observed["web-unready"].runtime_health, observed["web-unready"].message) == (
        "unhealthy", "")
    assert observed["web-warming"].runtime_health == "starting"
    creating = observed["web-creating"]
    assert (creating.phase, creating.address, creating.message) == ("starting", "", "")

    oom = observed["web-oom"]
    assert (oom.phase, oom.exit_code, oom.restarts) == ("failed", 137, 1)
    assert oom.message == "OOMKilled (exit code 137)"
    assert oom.finished_at == datetime(2026, 1, 2, 3, 10, tzinfo=UTC)
    assert observed["web-lost"].phase == "lost"


def test_observe_pod_other_states():
    succeeded = observe_pod(pod("job-1", phase="Succeeded", containers=[container_status(
        {"terminated": {"reason": "Completed", "exitCode": 0}})]))
    assert (succeeded.phase, succeeded.exit_code, succeeded.message) == ("exited", 0, "")

    unschedulable = pod("web-9", phase="Pending")
    unschedulable["status"]["conditions"][0] = {
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient cpu."}
    observed = observe_pod(unschedulable)
    assert observed.phase == "pending"
    assert observed.message == "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu."

    evicted = observe_pod(pod("web-8", phase="Failed", reason="Evicted",
                              message="The node was low on resource: memory."))
    assert evicted.message == "Evicted: The node was low on resource: memory."

    leaving = pod("web-7", phase="Running", ready=True)
    leaving["metadata"]["deletionTimestamp"] = "2026-01-02T04:00:00Z"
    assert observe_pod(leaving).message == "Terminating"

    ipv6 = pod("web-6", phase="Running", podIP="fd00::7")
    assert observe_pod(ipv6).address == "[fd00::7]:8080"


@pytest.mark.parametrize(("status", "permanent"), [
    (500, False), (503, False), (429, False), (409, False), (422, True), (403, True),
    (401, True),
])
@pytest.mark.asyncio
async def test_api_errors_become_runtime_failures(cluster, status, permanent):
    cluster["patch", cluster.resource(RESOURCES["Deployment"])] << status << {
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": status,
        "message": f"the server says {status}"}

    with pytest.raises(RuntimeFailure) as failure:
        await run(driver_for(cluster).apply_deployment, deployment_spec())

    assert failure.value.permanent is permanent
    message = str(failure.value)
    assert "apply Deployment support-bot-production-12" in message
    assert f"{status}: the server says {status}" in message


@pytest.mark.asyncio
async def test_a_server_error_while_listing_is_transient(cluster):
    cluster[cluster.action.LIST, cluster.resource(RESOURCES["Pod"])] << 500

    with pytest.raises(RuntimeFailure) as failure:
        await run(driver_for(cluster).list_instances, 12)
    assert not failure.value.permanent


@pytest.mark.asyncio
async def test_ping_with_a_kubeconfig_and_a_context(cluster):
    kubeconfig = yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "mock", "cluster": {"server": str(cluster.url)}},
            {"name": "elsewhere", "cluster": {"server": "https://192.0.2.1:6443"}},
        ],
        "users": [{"name": "robot", "user": {"token": "kubeconfig-token"}}],
        "contexts": [
            {"name": "here", "context": {"cluster": "mock", "user": "robot"}},
            {"name": "there", "context": {"cluster": "elsewhere", "user": "robot"}},
        ],
        "current-context": "there",
    })
    driver = KubernetesRuntime(target(kubeconfig=kubeconfig, context="here",
                                      namespace=NAMESPACE))

    await run(driver.ping)

    [request] = list(cluster)
    assert (request.method.value, request.url.path) == ("GET", PATHS["Pod"])
    assert request.params["limit"] == "1"
    assert request.headers["Authorization"] == "Bearer kubeconfig-token"


@pytest.mark.asyncio
async def test_ping_fails_on_a_forbidden_namespace(cluster):
    cluster["get", cluster.resource(RESOURCES["Pod"])] << 403 << {
        "kind": "Status", "code": 403, "message": 'pods is forbidden: User "robot" cannot list'}
    with pytest.raises(RuntimeFailure, match="forbidden") as failure:
        await run(driver_for(cluster).ping)
    assert failure.value.permanent


def finish_job(server: RawHandler, *, exit_code: int, condition: str = "Complete",
               reason: str = "") -> Any:
    """Act as the Job controller and kubelet when the driver creates the Job."""
    def on_create(request):
        name = request.data["metadata"]["name"]
        server.objects[RESOURCES["Job"], NAMESPACE, name]["status"] = {
            "startTime": "2026-01-02T03:00:00Z",
            "completionTime": "2026-01-02T03:00:09Z" if condition == "Complete" else None,
            "conditions": [{"type": condition, "status": "True", "reason": reason,
                            "lastTransitionTime": "2026-01-02T03:00:09Z"}],
        }
        job_pod = pod(f"{name}-x7k2p", phase="Succeeded" if exit_code == 0 else "Failed",
                      containers=[container_status({"terminated": {
                          "reason": "Completed" if exit_code == 0 else "Error",
                          "exitCode": exit_code, "finishedAt": "2026-01-02T03:00:08Z"}})])
        job_pod["metadata"]["labels"]["job-name"] = name
        server.objects[RESOURCES["Pod"], NAMESPACE, job_pod["metadata"]["name"]] = job_pod

    return on_create


@pytest.mark.asyncio
async def test_run_job_runs_to_completion_and_cleans_up(cluster):
    cluster["post", cluster.resource(RESOURCES["Job"])] >> finish_job(cluster, exit_code=0)
    cluster["get", re.compile(r".*/pods/[^/]+/log")] << b"hello\nworld\n"
    spec = template(env={"API_KEY": "sk-run-secret"}, port=None, health=None, pattern="batch")

    result = await run(driver_for(cluster).run_job, spec, timeout_s=30)

    assert result.exit_code == 0 and not result.timed_out
    assert result.logs == "hello\nworld\n"
    assert result.started_at == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    assert result.finished_at == datetime(2026, 1, 2, 3, 0, 9, tzinfo=UTC)

    calls = list(cluster)
    secret, job = calls[0], calls[1]
    name = job.data["metadata"]["name"]
    assert re.fullmatch(r"support-bot-production-12-[0-9a-f]{6}", name)
    assert (secret.method.value, secret.url.path) == ("POST", PATHS["Secret"])
    assert secret.data["metadata"]["name"] == f"{name}-env"
    assert base64.b64decode(secret.data["data"]["API_KEY"]) == b"sk-run-secret"
    assert (job.method.value, job.url.path) == ("POST", PATHS["Job"])
    assert "sk-run-secret" not in job.text
    assert job.data["spec"]["activeDeadlineSeconds"] == 30
    assert job.data["metadata"]["labels"]["hangar.deployment"] == "12"
    kubernetes_validate.validate(job.data, latest_version(), strict=True)

    log = next(r for r in calls if r.url.path.endswith("/log"))
    assert log.url.path == f"{PATHS['Pod']}/{name}-x7k2p/log"
    assert log.params["container"] == "agent"
    pods = next(r for r in calls if r.url.path == PATHS["Pod"])
    assert pods.params["labelSelector"] == f"job-name={name}"
    assert requests(cluster)[-2:] == [
        ("DELETE", f"{PATHS['Job']}/{name}"),
        ("DELETE", f"{PATHS['Secret']}/{name}-env"),
    ]
    assert stored(cluster, "Job", name).deleted
    assert stored(cluster, "Secret", f"{name}-env").deleted


@pytest.mark.asyncio
async def test_run_job_reports_a_failed_exit_code(cluster):
    cluster["post", cluster.resource(RESOURCES["Job"])] >> finish_job(
        cluster, exit_code=3, condition="Failed", reason="BackoffLimitExceeded")
    cluster["get", re.compile(r".*/pods/[^/]+/log")] << b"Traceback: boom\n"

    result = await run(driver_for(cluster).run_job, template(env={}), timeout_s=30)

    assert (result.exit_code, result.timed_out) == (3, False)
    assert result.logs == "Traceback: boom\n"
    assert not any(path.startswith(PATHS["Secret"]) for _, path in requests(cluster))


@pytest.mark.asyncio
async def test_run_job_times_out_and_deletes_the_job(cluster):
    driver = driver_for(cluster)
    driver.job_grace_s = 0

    result = await run(driver.run_job, template(env={}), timeout_s=0.2)

    assert result.timed_out and result.exit_code == 124
    job_name = next(r for r in cluster if r.method.value == "POST").data["metadata"]["name"]
    assert requests(cluster)[-1] == ("DELETE", f"{PATHS['Job']}/{job_name}")
    assert stored(cluster, "Job", job_name).deleted


@pytest.mark.asyncio
async def test_logs_tail_and_follow(cluster):
    seed_pods(cluster)
    cluster["get", re.compile(r".*/pods/web-ready/log"), {"follow": "true"}] << (
        b"one\ntw", b"o\nthree")
    cluster["get", re.compile(r".*/pods/web-ready/log")] << b"last\nlines\n"
    driver = driver_for(cluster)

    tail = await run(lambda: list(driver.logs(12, "web-ready", tail=5)))
    followed = await run(lambda: list(driver.logs(12, "web-ready", follow=True)))

    assert tail == ["last", "lines"]
    assert followed == ["one", "two", "three"]
    logs = [r for r in cluster if r.url.path.endswith("/log")]
    assert logs[0].params == {"container": "agent", "follow": "false", "tailLines": "5"}
    assert logs[1].params["follow"] == "true"
    assert logs[1].params["tailLines"] == "100"

    with pytest.raises(RuntimeFailure, match="no pod") as failure:
        await run(driver.logs, 12, "other-team")  # labelled for another deployment
    assert failure.value.permanent
    with pytest.raises(RuntimeFailure, match="no pod"):
        await run(driver.logs, 12, "gone")


@pytest.mark.asyncio
async def test_remove_instance_deletes_one_pod_of_the_deployment(cluster):
    seed_pods(cluster)
    driver = driver_for(cluster)

    await run(driver.remove_instance, 12, "web-crash")
    await run(driver.remove_instance, 12, "other-team")  # not ours: left alone
    await run(driver.remove_instance, 12, "gone")  # already gone: no error

    deletes = [path for method, path in requests(cluster) if method == "DELETE"]
    assert deletes == [f"{PATHS['Pod']}/web-crash"]
    assert stored(cluster, "Pod", "web-crash").deleted
    assert not stored(cluster, "Pod", "other-team").deleted


# Through the reconciler: desired state applied, pod status back into Instances ----


def _make_k8s_deployment(url: str):
    from deployments.models import Deployment

    from .factories import AgentFactory, TargetFactory, VersionFactory

    agent = AgentFactory(slug="support-bot")
    version = VersionFactory(agent=agent, number=7, image="registry.local/agent:7", port=8080,
                             secret_refs=[])
    cluster_target = TargetFactory(team=agent.team, kind="kubernetes", name="k8s", connection={
        "host": url, "token": TOKEN, "namespace": NAMESPACE})
    return Deployment.objects.create(agent=agent, version=version, target=cluster_target,
                                     replicas=2, ingest_token="ingest-token-value")


def _reconcile_and_read(deployment_id: int):
    from django.db import connections

    from deployments.models import Deployment, Instance
    from deployments.reconciler import reconcile_deployment

    try:
        reconcile_deployment(deployment_id)
        deployment = Deployment.objects.get(pk=deployment_id)
        rows = {i.name: (i.phase, i.health, i.health_reason, i.restarts)
                for i in Instance.objects.filter(deployment_id=deployment_id)}
        return deployment, rows
    finally:
        connections.close_all()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_reconciler_applies_and_mirrors_pods_into_instances(cluster):
    deployment = await run(_make_k8s_deployment, str(cluster.url))
    name = f"support-bot-production-{deployment.pk}"
    dep, rows = await run(_reconcile_and_read, deployment.pk)
    assert rows == {}
    assert dep.health == "Progressing" and dep.health_reason == "0 of 2 replicas healthy"
    applied = [(r.method.value, r.url.path) for r in cluster
               if r.method.value == "PATCH"]
    assert ("PATCH", f"{PATHS['Deployment']}/{name}") in applied
    body = stored(cluster, "Deployment", name)
    assert body["spec"]["replicas"] == 2
    assert body["metadata"]["labels"]["hangar.deployment"] == str(deployment.pk)
    pod_env = json.dumps(body["spec"]["template"], default=lambda o: dict(o))
    assert "ingest-token-value" not in pod_env  # the ingest token lives in the Secret
    secret_data = stored(cluster, "Secret", f"{name}-env")["data"]
    assert base64.b64decode(secret_data["OTEL_EXPORTER_OTLP_HEADERS"]).decode() == \
        "authorization=Bearer ingest-token-value"

    for item in [
        pod("web-a", deployment_id=deployment.pk, phase="Running", ready=True,
            containers=[container_status({"running": {}}, ready=True, started=True)]),
        pod("web-b", deployment_id=deployment.pk, phase="Pending", containers=[
            container_status({"waiting": {"reason": "ImagePullBackOff",
                                          "message": "Back-off pulling image"}})]),
    ]:
        cluster.objects["v1/pods", NAMESPACE, item["metadata"]["name"]] = item
    dep, rows = await run(_reconcile_and_read, deployment.pk)
    assert rows["web-a"][:2] == ("running", "Healthy")
    assert rows["web-b"][:3] == ("pending", "Degraded",
                                 "ImagePullBackOff: Back-off pulling image")
    assert dep.health == "Degraded"
    assert dep.health_reason.startswith("1 of 2 replicas healthy; web-b ImagePullBackOff")

    fixed = pod("web-b", deployment_id=deployment.pk, phase="Running", ready=True,
                containers=[container_status({"running": {}}, ready=True, started=True)])
    cluster.objects["v1/pods", NAMESPACE, "web-b"] = fixed
    del cluster.objects["v1/pods", NAMESPACE, "web-a"]
    dep, rows = await run(_reconcile_and_read, deployment.pk)
    assert set(rows) == {"web-b"} and rows["web-b"][1] == "Healthy"
    assert dep.health == "Progressing"  # one replica short until the ReplicaSet adds one
