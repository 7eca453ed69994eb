"""Edge driver: devices pull their desired state; nothing is pushed.

Until the edge issue lands, an edge target reports no instances and refuses
to push (permanent), so the reconciler shows the reason instead of retrying.
"""
from __future__ import annotations

from .base import Features, InstanceSpec, ObservedInstance, Runtime, RuntimeFailure


class EdgeFeatures(Features):
    pushes_instances = False


class EdgeRuntime(Runtime):
    features = EdgeFeatures()

    def ping(self) -> None:
        return None

    def ensure_instance(self, spec: InstanceSpec) -> ObservedInstance:
        raise RuntimeFailure("edge devices pull their desired state; enrolment is not "
                             "available yet", permanent=True)

    def remove_instance(self, deployment_id: int, name: str) -> None:
        return None

    def list_instances(self, deployment_id: int) -> list[ObservedInstance]:
        return []
