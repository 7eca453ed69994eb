"""The Docker driver's one-off jobs: a blocking ``run_job`` and the
level-triggered batch operations (start, list, logs, remove), as a mixin of
:class:`.docker.DockerRuntime` (it uses the driver's client, ``_call``,
``_create_args`` and ``_inspect``)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import requests
from docker.errors import APIError, DockerException, NotFound

from .base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_JOB,
    LABEL_MANAGED,
    InstanceSpec,
    JobResult,
    JobState,
    RuntimeFailure,
    managed_value,
)

INSPECT_PARALLEL = 8  # the SDK's connection pool holds 10


def parse_time(value: str | None) -> datetime | None:
    if not value or value.startswith("0001-"):
        return None
    value = value.rstrip("Z")
    if "." in value:
        head, frac = value.split(".", 1)
        value = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(value + "+00:00")


class DockerJobs:
    # Work and observation -----------------------------------------------------
    def run_job(self, spec: InstanceSpec, *, timeout_s: float) -> JobResult:
        labels = {**spec.labels(), "hangar.job": "true"}
        self._call(f"image {spec.image}", self.client.images.get, spec.image)
        container = self._call(
            "create job", self.client.containers.create, spec.image,
            command=list(spec.command) or None, labels=labels, environment=dict(spec.env),
            network_mode="host" if self.host_network else None, detach=True,
            nano_cpus=int(spec.cpu * 1e9), mem_limit=f"{spec.memory_mb}m",
            name=self.container_name(spec.deployment_id, spec.name),
        )
        timed_out = False
        try:
            self._call("start job", container.start)
            try:
                result = container.wait(timeout=timeout_s)
                exit_code = int(result.get("StatusCode", -1))
            except requests.exceptions.ConnectionError:
                timed_out, exit_code = True, -1
                container.kill()
            container.reload()
            logs = container.logs().decode(errors="replace")
            state = container.attrs["State"]
            return JobResult(exit_code=exit_code, logs=logs, timed_out=timed_out,
                             started_at=parse_time(state.get("StartedAt")),
                             finished_at=parse_time(state.get("FinishedAt")))
        finally:
            try:
                container.remove(force=True)
            except (APIError, requests.RequestException, DockerException):
                pass

    # Batch jobs (level-triggered) --------------------------------------------
    def start_job(self, spec: InstanceSpec, *, timeout_s: float | None = None) -> JobState:
        """Create and start a one-off container (no restart policy, labelled
        ``hangar.job``); a name clash means it exists: report it as it is."""
        args = self._create_args(spec)
        args["labels"] = {**args["labels"], LABEL_JOB: "true"}
        created = self._call(f"create job {spec.name}", self._create_job, args)
        if created is None:
            existing = self._inspect(self.container_name(spec.deployment_id, spec.name))
            if existing is not None:
                state = self._job_state(existing)
                if state.phase != "pending":
                    return state
                created = existing
            else:
                raise RuntimeFailure(f"create job {spec.name}: name in use, container gone")
        self._call(f"start job {spec.name}", self.client.api.start, created["Id"])
        return JobState(name=spec.name, phase="running", started_at=datetime.now(UTC))

    def _create_job(self, args: dict) -> dict | None:
        try:
            return self.client.api.create_container(**args)
        except APIError as exc:
            if exc.status_code == 409:
                return None
            raise

    def list_jobs(self, deployment_id: int) -> dict[str, JobState]:
        """One list call; finished containers are inspected (exit code, times)."""
        found = self._call(
            "list jobs", self.client.api.containers, all=True,
            filters={"label": [f"{LABEL_DEPLOYMENT}={deployment_id}", f"{LABEL_JOB}=true",
                               f"{LABEL_MANAGED}={managed_value()}"]})
        states: dict[str, JobState] = {}
        finished = []
        for summary in found:
            name = (summary.get("Labels") or {}).get(LABEL_INSTANCE, "")
            if summary.get("State") == "running":
                states[name] = JobState(name=name, phase="running")
            else:
                finished.append(summary["Id"])
        if len(finished) <= 1:
            details = [self._inspect(i) for i in finished]
        else:
            with ThreadPoolExecutor(max_workers=min(INSPECT_PARALLEL, len(finished))) as pool:
                details = list(pool.map(self._inspect, finished))
        for attrs in details:
            if attrs is not None:
                state = self._job_state(attrs)
                states[state.name] = state
        return states

    @staticmethod
    def _job_state(attrs: dict) -> JobState:
        state = attrs.get("State", {})
        name = (attrs.get("Config", {}).get("Labels") or {}).get(LABEL_INSTANCE, "")
        status = state.get("Status", "")
        phase = {"created": "pending", "running": "running", "restarting": "running",
                 "paused": "running"}.get(status, "exited")
        message = "OOMKilled" if state.get("OOMKilled") else state.get("Error") or ""
        return JobState(name=name, phase=phase,
                        exit_code=state.get("ExitCode") if phase == "exited" else None,
                        started_at=parse_time(state.get("StartedAt")),
                        finished_at=parse_time(state.get("FinishedAt")), message=message)

    def job_logs(self, deployment_id: int, name: str, *, tail: int = 200) -> str:
        container_name = self.container_name(deployment_id, name)
        raw = self._call(f"logs of job {name}", self.client.api.logs, container_name,
                         stdout=True, stderr=True, tail=tail)
        return raw.decode(errors="replace") if raw else ""

    def remove_job(self, deployment_id: int, name: str) -> None:
        try:
            self.client.api.remove_container(self.container_name(deployment_id, name),
                                             force=True)
        except NotFound:
            return
        except (APIError, requests.RequestException, DockerException) as exc:
            if isinstance(exc, APIError) and exc.status_code == 409:
                return  # removal already in progress
            raise RuntimeFailure(f"remove job {name}: {exc}") from None
