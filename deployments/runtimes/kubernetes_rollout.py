"""The Kubernetes driver's part of a rollout (#15): apply the two Deployments
and the Services of :mod:`.k8s_manifests_rollout`, and hand over to the
primary Deployment when the rollout ends.

Level-triggered, by names and labels only:

- under a rollout (``spec.rollout``) every rollout object is applied, and
  those the step no longer wants are deleted (the preview Service after a
  blue-green promotion);
- without one, a canary Deployment left by a finished rollout is kept while
  the primary rolls to the same revision — the Service then selects that
  revision only, so no request goes back to the old pods — and deleted with
  its Secret, ConfigMap and the preview Service once the primary has as many
  Ready pods of it as it should (the canary of another revision goes at once).
  With no canary Deployment this costs one GET per pass.
"""
from __future__ import annotations

from .base import LABEL_REVISION, DeploymentSpec
from .k8s_manifests import Manifest, deployment_selector, label_value
from .k8s_manifests_rollout import LABEL_TRACK, canary_names, rollout_manifests, selecting


class RolloutMixin:
    """Mixed into :class:`~.kubernetes.KubernetesRuntime` (which gives
    ``_apply``, ``_delete``, ``_list``, ``_json`` and ``namespace``)."""

    def _manifests(self, spec: DeploymentSpec, plain: list[Manifest]) -> tuple[
            list[Manifest], set[tuple[str, str]]]:
        """What to apply for ``spec`` (``plain``: its manifests without a
        rollout), and which rollout objects to delete after."""
        extra = canary_names(spec)
        if spec.rollout is not None:
            manifests = rollout_manifests(spec)
            wanted = {(m["kind"], m["metadata"]["name"]) for m in manifests}
            return manifests, {(kind, name) for kind, name in extra.items()
                               if (kind, name) not in wanted}
        if not spec.revision:
            return plain, set()  # no revision label, no rollout could have left a canary
        canary = self._json("AppsV1Api", "read_namespaced_deployment", extra["Deployment"],
                            self.namespace, action=f"read Deployment {extra['Deployment']}",
                            missing_ok=True)
        if canary is None:
            return plain, set()
        pods = ((canary.get("spec") or {}).get("template") or {}).get("metadata") or {}
        revision = (pods.get("labels") or {}).get(LABEL_REVISION)
        if revision == label_value(spec.revision) and not self._primary_ready(spec):
            # The primary rolls to the canary's revision: keep the canary serving,
            # and the Service on that revision only.
            return [selecting(m, spec.revision) if m["kind"] == "Service" else m
                    for m in plain], set()
        return plain, set(extra.items())

    def _primary_ready(self, spec: DeploymentSpec) -> bool:
        """The primary Deployment has its replicas Ready on ``spec``'s revision."""
        want = spec.replicas if spec.autoscale is None else spec.autoscale.min_replicas
        selector = (f"{deployment_selector(spec.deployment_id)},"
                    f"{LABEL_REVISION}={label_value(spec.revision)}")
        ready = 0
        for pod in self._list("Pod", selector):
            metadata = pod.get("metadata") or {}
            if LABEL_TRACK in (metadata.get("labels") or {}) or metadata.get("deletionTimestamp"):
                continue
            conditions = (pod.get("status") or {}).get("conditions") or []
            ready += any(c.get("type") == "Ready" and c.get("status") == "True"
                         for c in conditions)
        return ready >= max(1, want)

    def _delete_rollout_objects(self, doomed: set[tuple[str, str]]) -> None:
        for kind in ("Service", "Deployment", "ConfigMap", "Secret"):
            for name in sorted(n for k, n in doomed if k == kind):
                self._delete(kind, name)
