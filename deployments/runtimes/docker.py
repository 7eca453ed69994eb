"""Docker driver: one Target per Docker host, over the docker SDK.

Containers are named ``hangar-<deployment>-<instance>`` and labelled; the
driver finds them by label, never by memory. Restarts are decided by the
reconciler (Nomad-like budget), so containers run with no restart policy.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.tls import TLSConfig

from .base import (
    LABEL_DEPLOYMENT,
    LABEL_GENERATION,
    LABEL_INSTANCE,
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_PORT,
    LABEL_VERSION,
    Features,
    InstanceSpec,
    ObservedInstance,
    Runtime,
    RuntimeFailure,
    Usage,
    loopback_port_free,
    managed_value,
    unit_prefix,
)
from .docker_jobs import INSPECT_PARALLEL, DockerJobs, parse_time

STOP_TIMEOUT_S = 5
# How `docker ps` shows a HEALTHCHECK verdict in a container's status.
HEALTH_IN_STATUS = (("(unhealthy)", "unhealthy"), ("(healthy)", "healthy"),
                    ("(health: starting)", "starting"))


class DockerFeatures(Features):
    supports_log_follow = True
    supports_resource_usage = True
    supports_jobs = True
    supports_health_probe = True
    lists_orphans = True


class DockerRuntime(DockerJobs, Runtime):
    features = DockerFeatures()

    def __init__(self, target):
        super().__init__(target)
        self._client: docker.DockerClient | None = None
        self.url = self.connection.get("url", "unix:///var/run/docker.sock")
        self.host_network = self.connection.get("network", "host") == "host"
        self.bind_address = self.connection.get("bind_address", "127.0.0.1")

    # Connection ---------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.DockerClient(
                    base_url=self.url, timeout=30, tls=self._tls(),
                    use_ssh_client=self.url.startswith("ssh://"),
                )
            except DockerException as exc:
                raise RuntimeFailure(f"cannot reach Docker at {self.url}: {exc}") from None
        return self._client

    def _tls(self) -> TLSConfig | bool:
        conn = self.connection
        if not (conn.get("tls_cert") or conn.get("tls_ca")):
            return False
        folder = Path(tempfile.mkdtemp(prefix="hangar-tls-"))
        paths = {}
        for key in ("tls_ca", "tls_cert", "tls_key"):
            if conn.get(key):
                path = folder / key
                path.write_text(conn[key])
                path.chmod(0o600)
                paths[key] = str(path)
        cert = (paths["tls_cert"], paths["tls_key"]) if "tls_cert" in paths else None
        return TLSConfig(client_cert=cert, ca_cert=paths.get("tls_ca"),
                         verify=bool(paths.get("tls_ca")))

    def _call(self, what: str, fn, *args, **kwargs):
        """Run an SDK call; only RuntimeFailure leaves."""
        try:
            return fn(*args, **kwargs)
        except ImageNotFound as exc:
            raise RuntimeFailure(f"{what}: image not found: {exc.explanation}",
                                 permanent=True) from None
        except APIError as exc:
            status = exc.status_code or 500
            permanent = 400 <= status < 500 and status not in (404, 409, 429)
            raise RuntimeFailure(f"{what}: {exc.explanation or exc}", permanent=permanent) \
                from None
        except (requests.RequestException, DockerException, OSError) as exc:
            raise RuntimeFailure(f"{what}: Docker at {self.url} unreachable: {exc}") from None

    def ping(self) -> None:
        self._call("ping", self.client.ping)

    # Ports ------------------------------------------------------------------------
    @property
    def on_this_machine(self) -> bool:
        """A daemon on this machine (unix socket or loopback TCP): its
        containers' ports are this machine's ports."""
        if self.url.startswith("unix://"):
            return True
        host = urlsplit(self.url).hostname or ""
        return host in ("localhost", "::1") or host.startswith("127.")

    def port_space(self) -> str:
        """Ports are published on ``bind_address`` of the daemon's machine, so
        every daemon on one machine shares one space (the test and bench setups
        run two daemons on this machine's loopback)."""
        machine = "this-machine" if self.on_this_machine else urlsplit(self.url).hostname
        return f"{machine}:{self.bind_address}"

    def port_free(self, port: int) -> bool:
        # Binding tells something only when the daemon's machine is this one;
        # for a remote host, Hangar's own records (per port space) decide, and
        # a clash shows up as a failed start.
        return loopback_port_free(self.bind_address, port) if self.on_this_machine else True

    # Instances ----------------------------------------------------------------
    @staticmethod
    def container_name(deployment_id: int, name: str) -> str:
        return f"{unit_prefix()}-{deployment_id}-{name}"

    def _find(self, deployment_id: int, name: str):
        try:
            return self.client.containers.get(self.container_name(deployment_id, name))
        except NotFound:
            return None
        except (APIError, requests.RequestException, DockerException) as exc:
            raise RuntimeFailure(f"inspect {name}: {exc}") from None

    def ensure_instance(self, spec: InstanceSpec) -> ObservedInstance:
        # The common case is a new instance: create and start it in two calls
        # (no lookup, no image check — a missing image fails the create — and
        # no inspect; the next list reads its state). A name clash means it
        # exists (a crash after create, or a restart): start it if stopped.
        created = self._call(f"create {spec.name}", self._create_unless_exists, spec)
        if created is None:
            return self._ensure_existing(spec)
        self._call(f"start {spec.name}", self.client.api.start, created["Id"])
        port = spec.port
        return ObservedInstance(
            name=spec.name, runtime_id=created["Id"][:12], generation=spec.generation,
            version=spec.version, phase="starting", host=self.target.name,
            address=f"{self.bind_address}:{port}" if port else "", port=port,
            started_at=datetime.now(UTC))

    def _create_unless_exists(self, spec: InstanceSpec) -> dict | None:
        try:
            return self.client.api.create_container(**self._create_args(spec))
        except APIError as exc:
            if exc.status_code == 409:  # the name is taken: it exists
                return None
            raise

    def _ensure_existing(self, spec: InstanceSpec) -> ObservedInstance:
        container = self._find(spec.deployment_id, spec.name)
        if container is None:
            raise RuntimeFailure(f"create {spec.name}: name in use, container gone; retrying")
        if container.status != "running":
            self._call(f"start {spec.name}", container.start)
            self._call(f"inspect {spec.name}", container.reload)
        return self._observe(container)

    def _create_args(self, spec: InstanceSpec) -> dict:
        """Low-level create_container arguments (one API call)."""
        env = dict(spec.env)
        labels = spec.labels()
        host_config: dict = {"nano_cpus": int(spec.cpu * 1e9), "mem_limit": f"{spec.memory_mb}m",
                             "restart_policy": {"Name": "no"}}
        ports = None
        if spec.port:
            env["PORT"] = str(spec.port)
            labels[LABEL_PORT] = str(spec.port)
            if self.host_network:
                env.setdefault("AGENT_BIND", self.bind_address)
            else:
                env.setdefault("AGENT_BIND", "0.0.0.0")
                ports = [spec.port]
                host_config["port_bindings"] = {spec.port: (self.bind_address, spec.port)}
        if self.host_network:
            host_config["network_mode"] = "host"
        return {
            "image": spec.image, "command": list(spec.command) or None,
            "name": self.container_name(spec.deployment_id, spec.name), "labels": labels,
            "environment": env, "detach": True, "ports": ports,
            "host_config": self.client.api.create_host_config(**host_config),
        }

    def remove_instance(self, deployment_id: int, name: str) -> None:
        container = self._find(deployment_id, name)
        if container is None:
            return
        try:
            if container.status == "running":
                container.stop(timeout=STOP_TIMEOUT_S)
            container.remove(force=True)
        except NotFound:
            return
        except (APIError, requests.RequestException, DockerException) as exc:
            raise RuntimeFailure(f"remove {name}: {exc}") from None

    def list_instances(self, deployment_id: int) -> list[ObservedInstance]:
        """One list call. A running container is read from the listing alone;
        the others (exited, dead, …: their exit code and error matter) are
        inspected, in parallel."""
        found = self._call(
            "list containers", self.client.api.containers, all=True,
            filters={"label": [f"{LABEL_DEPLOYMENT}={deployment_id}",
                               f"{LABEL_MANAGED}={managed_value()}"]})
        found = [c for c in found if LABEL_JOB not in (c.get("Labels") or {})]
        observed = [self._observe_listed(c) for c in found if c.get("State") == "running"]
        others = [c["Id"] for c in found if c.get("State") != "running"]
        if len(others) <= 1:
            details = [self._inspect(i) for i in others]
        else:
            with ThreadPoolExecutor(max_workers=min(INSPECT_PARALLEL, len(others))) as pool:
                details = list(pool.map(self._inspect, others))
        observed += [self._observe(self.client.containers.prepare_model(attrs))
                     for attrs in details if attrs is not None]
        return sorted(observed, key=lambda o: o.name)

    def _observe_listed(self, summary: dict) -> ObservedInstance:
        """A running container from its listing entry ("Up 3 seconds (healthy)");
        its start time is not in the listing (the row keeps the one it has)."""
        labels = summary.get("Labels") or {}
        text = summary.get("Status") or ""
        health = next((word for marker, word in HEALTH_IN_STATUS if marker in text), "")
        port = int(labels[LABEL_PORT]) if labels.get(LABEL_PORT, "").isdigit() else None
        names = summary.get("Names") or [""]
        return ObservedInstance(
            name=labels.get(LABEL_INSTANCE, names[0].lstrip("/")),
            runtime_id=summary["Id"][:12],
            generation=int(labels.get(LABEL_GENERATION, "0") or 0),
            version=labels.get(LABEL_VERSION, ""), phase="running", host=self.target.name,
            address=f"{self.bind_address}:{port}" if port else "", port=port,
            runtime_health=health)

    def _inspect(self, container_id: str) -> dict | None:
        """A container's details, or None if it was removed since the list."""
        try:
            return self.client.api.inspect_container(container_id)
        except NotFound:
            return None
        except (APIError, requests.RequestException, DockerException, OSError) as exc:
            raise RuntimeFailure(f"inspect: Docker at {self.url}: {exc}") from None

    def managed_deployment_ids(self) -> set[int]:
        containers = self._call("list containers", self.client.containers.list, all=True,
                                filters={"label": f"{LABEL_MANAGED}={managed_value()}"},
                                ignore_removed=True)
        return {int(c.labels[LABEL_DEPLOYMENT]) for c in containers
                if c.labels.get(LABEL_DEPLOYMENT, "").isdigit()}

    def _observe(self, container) -> ObservedInstance:
        attrs = container.attrs
        state = attrs.get("State", {})
        labels = container.labels
        status = state.get("Status", "")
        health = (state.get("Health") or {}).get("Status", "")
        exit_code = state.get("ExitCode")
        phase = {"created": "pending", "running": "running", "restarting": "starting",
                 "paused": "running", "exited": "exited", "dead": "failed",
                 "removing": "exited"}.get(status, "lost")
        message = ""
        if state.get("OOMKilled"):
            message = "OOMKilled"
        elif state.get("Error"):
            message = state["Error"]
        elif phase == "exited":
            message = f"exited with code {exit_code}"
        port = int(labels[LABEL_PORT]) if labels.get(LABEL_PORT, "").isdigit() else None
        return ObservedInstance(
            name=labels.get(LABEL_INSTANCE, container.name),
            runtime_id=container.id[:12],
            generation=int(labels.get(LABEL_GENERATION, "0") or 0),
            version=labels.get(LABEL_VERSION, ""),
            phase=phase,
            host=self.target.name,
            address=f"{self.bind_address}:{port}" if port else "",
            port=port,
            exit_code=exit_code if phase in ("exited", "failed") else None,
            started_at=parse_time(state.get("StartedAt")),
            finished_at=parse_time(state.get("FinishedAt")),
            runtime_health=health,
            message=message,
        )

    def logs(self, deployment_id: int, name: str, *, tail: int = 100,
             follow: bool = False) -> Iterator[str]:
        container = self._find(deployment_id, name)
        if container is None:
            raise RuntimeFailure(f"instance {name} not found on {self.target.name}",
                                 permanent=True)
        if not follow:
            raw = self._call("logs", container.logs, tail=tail, timestamps=False)
            yield from raw.decode(errors="replace").splitlines()
            return
        stream = self._call("logs", container.logs, tail=tail, stream=True, follow=True)
        buffer = b""
        try:
            for chunk in stream:
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    yield line.decode(errors="replace")
        except (requests.RequestException, DockerException) as exc:
            raise RuntimeFailure(f"logs: {exc}") from None

    def usage(self, deployment_id: int, name: str) -> Usage | None:
        container = self._find(deployment_id, name)
        if container is None or container.status != "running":
            return None
        stats = self._call("stats", container.stats, stream=False)
        cpu, pre = stats.get("cpu_stats", {}), stats.get("precpu_stats", {})
        cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - \
            pre.get("cpu_usage", {}).get("total_usage", 0)
        system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        cores = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or [1])
        percent = (cpu_delta / system_delta) * cores * 100 if system_delta > 0 else 0.0
        memory = stats.get("memory_stats", {}).get("usage", 0)
        return Usage(cpu_percent=round(percent, 2), memory_bytes=int(memory))
