"""The runtime contract, typed per-kind connection settings, and the registry."""
from __future__ import annotations

from typing import Any, ClassVar

from django.utils.module_loading import import_string
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import Invalid


class RuntimeFailure(Exception):
    """The one error type that leaves a driver.

    ``permanent`` means retrying will not help (bad image, invalid spec);
    otherwise the reconciler retries with backoff.
    """

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


# Typed connection settings per kind. Fields listed in ``sensitive`` are
# write-only: encrypted at rest, never logged, rendered or returned.


class ConnectionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sensitive: ClassVar[frozenset[str]] = frozenset()


class DockerConnection(ConnectionSettings):
    url: str = Field(
        "unix:///var/run/docker.sock",
        description="unix:///path, tcp://host:port (with TLS fields) or ssh://user@host",
    )
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    network: str = Field("host", description="'host' (loopback, port per replica) or a bridge")
    bind_address: str = "127.0.0.1"

    sensitive: ClassVar[frozenset[str]] = frozenset({"tls_key", "tls_cert", "tls_ca"})

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("unix://", "tcp://", "ssh://", "http://", "https://")):
            raise ValueError("url must start with unix://, tcp://, ssh://, http:// or https://")
        return value


class KubernetesConnection(ConnectionSettings):
    kubeconfig: str | None = Field(None, description="kubeconfig YAML")
    context: str | None = None
    namespace: str = "default"
    host: str | None = Field(None, description="API server URL when no kubeconfig is given")
    token: str | None = None
    verify_ssl: bool = True

    sensitive: ClassVar[frozenset[str]] = frozenset({"kubeconfig", "token"})


class LocalConnection(ConnectionSettings):
    workdir: str | None = Field(None, description="where process logs and state live")


class EdgeConnection(ConnectionSettings):
    fleet: str = ""


CONNECTION_SCHEMAS: dict[str, type[ConnectionSettings]] = {
    "docker": DockerConnection,
    "kubernetes": KubernetesConnection,
    "local": LocalConnection,
    "edge": EdgeConnection,
}

# Drivers by kind, as dotted paths loaded on first use.
DRIVERS: dict[str, str] = {
    "docker": "deployments.runtimes.docker.DockerRuntime",
    "kubernetes": "deployments.runtimes.kubernetes.KubernetesRuntime",
    "local": "deployments.runtimes.local.LocalRuntime",
    "edge": "deployments.runtimes.edge.EdgeRuntime",
}


def validate_connection(kind: str, data: dict[str, Any] | None) -> dict[str, Any]:
    schema = CONNECTION_SCHEMAS.get(kind)
    if schema is None:
        raise Invalid({"kind": [f"Unknown target kind {kind!r}."]})
    try:
        parsed = schema.model_validate(data or {})
    except ValidationError as exc:
        raise Invalid({"connection": [
            f"{'.'.join(str(p) for p in err['loc']) or 'connection'}: {err['msg']}"
            for err in exc.errors()
        ]}) from None
    return parsed.model_dump(exclude_none=True)


def connection_public_view(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """Connection settings safe to show: sensitive values become a 'set' flag."""
    schema = CONNECTION_SCHEMAS.get(kind, ConnectionSettings)
    view: dict[str, Any] = {}
    for key, value in (data or {}).items():
        if key in schema.sensitive:
            view[key] = "set" if value else None
        else:
            view[key] = value
    return view


class Features:
    """Capability flags a driver declares (like Django's DatabaseFeatures)."""

    supports_log_follow = False
    supports_resource_usage = False
    supports_jobs = False
    supports_health_probe = False
    pushes_instances = True  # False for edge: devices pull desired state


def get_driver(target):
    """The driver instance for a Target row."""
    path = DRIVERS.get(target.kind)
    if path is None:
        raise RuntimeFailure(f"unknown runtime kind {target.kind!r}", permanent=True)
    return import_string(path)(target)
