"""Typed connection settings per target kind, validated when a target is saved
and shown with their sensitive values hidden. Fields listed in ``sensitive``
are write-only: encrypted at rest, never logged, rendered or returned."""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import Invalid
from . import kubeconfig


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
    keda: bool = Field(False, description="KEDA is installed in the cluster: stream "
                       "deployments scaling on lag get a ScaledObject and KEDA scales them")

    sensitive: ClassVar[frozenset[str]] = frozenset({"kubeconfig", "token"})

    @field_validator("kubeconfig")
    @classmethod
    def _self_contained(cls, value: str | None) -> str | None:
        if value:
            kubeconfig.parse(value)  # ValueError says why, never quoting the document
        return value


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

def validate_connection(kind: str, data: dict[str, Any] | None) -> dict[str, Any]:
    schema = CONNECTION_SCHEMAS.get(kind)
    if schema is None:
        raise Invalid({"kind": [f"Unknown target kind {kind!r}."]})
    try:
        parsed = schema.model_validate(data or {})
    except ValidationError as exc:
        raise Invalid({"connection": [
            f"{'.'.join(str(p) for p in err['loc']) or 'connection'}: {error_text(err)}"
            for err in exc.errors()
        ]}) from None
    return parsed.model_dump(exclude_none=True)


def error_text(err) -> str:
    """A pydantic error's message without its "Value error, " prefix."""
    return str(err["msg"]).removeprefix("Value error, ")


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
