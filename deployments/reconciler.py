"""The reconciler: compares desired and observed state and converges them."""
from __future__ import annotations


def reconcile_deployment(deployment_id: int) -> None:
    raise NotImplementedError
