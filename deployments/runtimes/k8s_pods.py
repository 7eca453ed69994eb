"""Pods as Kubernetes reports them, read into ObservedInstance: phase,
readiness, a human message, and whether the pod is failing. Pure functions over
plain JSON (no client), used by the Kubernetes driver."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .base import LABEL_GENERATION, LABEL_REVISION, LABEL_VERSION, ObservedInstance
from .k8s_manifests import CONTAINER_NAME, Manifest

MESSAGE_MAX = 500


def _truncate(message: str, limit: int = MESSAGE_MAX) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


POD_PHASES = {"Running": "running", "Succeeded": "exited", "Failed": "failed", "Unknown": "lost"}
CREATING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})
# Waiting/terminated reasons that mean "failing, and waiting will not help":
# CrashLoopBackOff, ImagePullBackOff, ErrImagePull, CreateContainerConfigError,
# InvalidImageName, OOMKilled, Error, …  (families, as the kubelet names them).
FAILING_REASON_PARTS = ("BackOff", "Err", "Invalid", "OOM")


def _failing_reason(reason: str | None) -> bool:
    return bool(reason) and any(part in reason for part in FAILING_REASON_PARTS)


def _failing(status: Manifest) -> bool:
    """Whether any container of the pod is failing (see FAILING_REASON_PARTS)."""
    statuses = (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or [])
    for item in statuses:
        state = item.get("state") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        last = (item.get("lastState") or {}).get("terminated") or {}
        if waiting and waiting.get("reason") not in CREATING_REASONS and (
                _failing_reason(waiting.get("reason")) or last and _failing_reason(
                    last.get("reason") or "Error")):
            return True
        if terminated and terminated.get("exitCode") and _failing_reason(
                terminated.get("reason") or "Error"):
            return True
    return _failing_reason(status.get("reason"))


def _time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _container_port(pod_spec: Manifest) -> int | None:
    containers = pod_spec.get("containers") or []
    ordered = sorted(containers, key=lambda c: c.get("name") != CONTAINER_NAME)
    for item in ordered:
        for port in item.get("ports") or []:
            if port.get("containerPort"):
                return int(port["containerPort"])
    return None


def _agent_status(statuses: list[Manifest]) -> Manifest:
    for item in statuses:
        if item.get("name") == CONTAINER_NAME:
            return item
    return statuses[0] if statuses else {}


def _pod_phase(status: Manifest, statuses: list[Manifest]) -> str:
    phase = status.get("phase") or "Pending"
    if phase == "Pending":
        creating = any(
            ((s.get("state") or {}).get("waiting") or {}).get("reason") in CREATING_REASONS
            for s in statuses
        )
        return "starting" if creating else "pending"
    return POD_PHASES.get(phase, "lost")


def _runtime_health(phase: str, ready: bool, statuses: list[Manifest]) -> str:
    if ready:
        return "healthy"
    if phase != "running":
        return ""
    states = [s.get("state") or {} for s in statuses]
    if any("running" not in state for state in states):
        return "unhealthy"  # waiting (e.g. CrashLoopBackOff) or terminated
    if any(s.get("started") is False for s in statuses):
        return "starting"  # the startup probe has not passed yet
    return "unhealthy"  # running, but failing readiness


def _reason(reason: str, message: str) -> str:
    return f"{reason}: {message}" if reason and message else reason or message


def _pod_message(metadata: Manifest, status: Manifest, conditions: dict[str, Manifest]) -> str:
    parts: list[str] = []
    if metadata.get("deletionTimestamp"):
        parts.append("Terminating")
    if status.get("reason"):  # e.g. Evicted
        parts.append(_reason(status["reason"], status.get("message") or ""))
    scheduled = conditions.get("PodScheduled") or {}
    if scheduled.get("status") == "False":
        parts.append(_reason(scheduled.get("reason") or "", scheduled.get("message") or ""))
    statuses = (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    )
    for item in statuses:
        state = item.get("state") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        if waiting and waiting.get("reason") not in CREATING_REASONS:
            text = _reason(waiting.get("reason") or "", waiting.get("message") or "")
            last = (item.get("lastState") or {}).get("terminated") or {}
            if last:
                last_reason = last.get("reason") or "Error"
                text += f" (last exit: {last_reason}, code {last.get('exitCode')})"
            parts.append(text)
        elif terminated and terminated.get("exitCode"):
            parts.append(
                f"{terminated.get('reason') or 'Error'} (exit code {terminated['exitCode']})"
            )
    return _truncate("; ".join(p for p in parts if p))


def observe_pod(pod: Manifest) -> ObservedInstance:
    """Map a pod (plain JSON, as the API returns it) to an ObservedInstance."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    phase = _pod_phase(status, statuses)
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    port = _container_port(spec)
    pod_ip = status.get("podIP") or ""
    host_part = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    finished = phase in ("exited", "failed")
    terminated = ((_agent_status(statuses).get("state") or {}).get("terminated") or {})
    labels = metadata.get("labels") or {}
    return ObservedInstance(
        name=metadata.get("name") or "",
        runtime_id=metadata.get("uid") or "",
        generation=_int(labels.get(LABEL_GENERATION)),
        phase=phase,
        host=spec.get("nodeName") or "",
        address=f"{host_part}:{port}" if pod_ip and port else "",
        port=port,
        exit_code=terminated.get("exitCode") if finished and terminated else None,
        started_at=_time(status.get("startTime")),
        finished_at=_time(terminated.get("finishedAt")) if finished else None,
        runtime_health=_runtime_health(phase, ready, statuses),
        message=_pod_message(metadata, status, conditions),
        restarts=sum(_int(s.get("restartCount")) for s in statuses),
        version=labels.get(LABEL_VERSION) or "",
        revision=labels.get(LABEL_REVISION) or "",
        failing=_failing(status),
    )


def _job_outcome(job: Manifest) -> tuple[str | None, Manifest]:
    """(None, {}) while the Job runs, else ("complete" | "failed" | "deadline",
    the condition that says so)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "complete", condition
        if condition.get("type") == "Failed":
            reason = "deadline" if condition.get("reason") == "DeadlineExceeded" else "failed"
            return reason, condition
    return None, {}
