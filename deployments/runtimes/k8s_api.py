"""The Kubernetes API as the driver uses it: a client from the connection
settings (a kubeconfig, or a host and bearer token), generic object verbs
(server-side apply, create, delete, list) by kind in one namespace, answers
read as plain JSON, and every client error turned into a RuntimeFailure."""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pydantic
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException, OpenApiException
from kubernetes.config.config_exception import ConfigException

from . import kubeconfig
from .base import RuntimeFailure
from .k8s_manifests import Manifest

FIELD_MANAGER = "hangar"
APPLY_PATCH = "application/apply-patch+yaml"
MESSAGE_MAX = 500

# kind -> (API class in kubernetes.client, method suffix after patch_/list_/delete_…)
KINDS: dict[str, tuple[str, str]] = {
    "Secret": ("CoreV1Api", "namespaced_secret"),
    "ConfigMap": ("CoreV1Api", "namespaced_config_map"),
    "Service": ("CoreV1Api", "namespaced_service"),
    "Pod": ("CoreV1Api", "namespaced_pod"),
    "Deployment": ("AppsV1Api", "namespaced_deployment"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "namespaced_horizontal_pod_autoscaler"),
    "CronJob": ("BatchV1Api", "namespaced_cron_job"),
    "Job": ("BatchV1Api", "namespaced_job"),
}
# Custom resources (KEDA's), reached through CustomObjectsApi: kind -> (group, version, plural).
CUSTOM_KINDS: dict[str, tuple[str, str, str]] = {
    "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects"),
    "TriggerAuthentication": ("keda.sh", "v1alpha1", "triggerauthentications"),
}
# 4xx answers that are worth retrying: timeouts, conflicts, rate limits.
TRANSIENT_CLIENT_ERRORS = frozenset({408, 409, 425, 429})


def _truncate(message: str, limit: int = MESSAGE_MAX) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _api_failure(exc: ApiException, action: str) -> RuntimeFailure:
    status = int(exc.status or 0)
    detail = str(exc.reason or "")
    try:
        detail = json.loads(exc.body or "").get("message") or detail
    except (ValueError, TypeError, AttributeError):
        pass
    permanent = 400 <= status < 500 and status not in TRANSIENT_CLIENT_ERRORS
    return RuntimeFailure(
        _truncate(f"{action}: Kubernetes API answered {status}: {detail}"), permanent=permanent
    )


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn whatever the client raises into a RuntimeFailure."""
    try:
        yield
    except ApiException as exc:
        raise _api_failure(exc, action) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise RuntimeFailure(
            _truncate(f"{action}: cannot reach the Kubernetes API: {exc}"), permanent=False
        ) from None
    except (OpenApiException, pydantic.ValidationError) as exc:
        raise RuntimeFailure(
            _truncate(f"{action}: invalid request: {exc}"), permanent=True
        ) from None


def check_kubeconfig(document: Manifest) -> None:
    """Refuse kubeconfigs that are not self-contained (see ``kubeconfig.check``)."""
    try:
        kubeconfig.check(document)
    except ValueError as exc:
        raise RuntimeFailure(str(exc), permanent=True) from None



class NamespacedApi:
    """The object verbs of a driver bound to one namespace. The driver sets
    ``settings`` (a ``KubernetesConnection``), ``namespace``, ``_client``
    (None until first used) and ``_client_lock``."""

    # (connect, read) seconds for every call but a followed log stream.
    request_timeout: tuple[float, float] = (5.0, 30.0)

    def _api_client(self) -> client.ApiClient:
        with self._client_lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> client.ApiClient:
        settings = self.settings
        if settings.kubeconfig:
            try:
                document = kubeconfig.parse(settings.kubeconfig)
            except ValueError as exc:
                raise RuntimeFailure(str(exc), permanent=True) from None
            try:
                return config.new_client_from_config_dict(
                    document, context=settings.context or None, persist_config=False
                )
            except (ConfigException, ValueError, KeyError, TypeError, OSError) as exc:
                raise RuntimeFailure(
                    _truncate(f"cannot use the kubeconfig: {type(exc).__name__}: {exc}"),
                    permanent=True,
                ) from None
        if settings.host:
            configuration = client.Configuration(host=settings.host.rstrip("/"))
            configuration.verify_ssl = settings.verify_ssl
            if settings.token:
                configuration.api_key = {"authorization": settings.token}
                configuration.api_key_prefix = {"authorization": "Bearer"}
            return client.ApiClient(configuration)
        raise RuntimeFailure("the connection needs a kubeconfig or a host", permanent=True)

    def _call(
        self, api: str, method: str, *args: Any, action: str, missing_ok: bool = False,
        **kwargs: Any,
    ) -> bytes | None:
        """Call one client method and return the raw body, or None for a 404
        when ``missing_ok``."""
        function = getattr(getattr(client, api)(self._api_client()), method)
        kwargs.setdefault("_request_timeout", self.request_timeout)
        with translated(action):
            try:
                response = function(*args, _preload_content=False, **kwargs)
            except ApiException as exc:
                if missing_ok and exc.status == 404:
                    return None
                raise
            try:
                return response.data
            finally:
                response.release_conn()

    def _json(self, api: str, method: str, *args: Any, action: str, missing_ok: bool = False,
              **kwargs: Any) -> Manifest | None:
        raw = self._call(api, method, *args, action=action, missing_ok=missing_ok, **kwargs)
        if raw is None:
            return None
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise RuntimeFailure(f"{action}: the answer is not JSON", permanent=False) from None

    # Generic object verbs ---------------------------------------------------
    def _target(self, verb: str, kind: str, name: str | None = None
                ) -> tuple[str, str, tuple[str, ...]]:
        """(API class, method, leading arguments) for ``verb`` on ``kind``: a
        built-in kind's own method (name, namespace), or a custom object's
        (group, version, namespace, plural, name)."""
        named = (name,) if name is not None else ()
        if kind in CUSTOM_KINDS:
            group, version, plural = CUSTOM_KINDS[kind]
            return ("CustomObjectsApi", f"{verb}_namespaced_custom_object",
                    (group, version, self.namespace, plural, *named))
        api, suffix = KINDS[kind]
        return api, f"{verb}_{suffix}", (*named, self.namespace)

    def _apply(self, manifest: Manifest) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        api, method, args = self._target("patch", kind, name)
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": self.namespace}}
        self._call(
            api, method, *args, body,
            field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH,
            action=f"apply {kind} {name}",
        )

    def _create(self, manifest: Manifest) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        api, suffix = KINDS[kind]
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": self.namespace}}
        self._call(api, f"create_{suffix}", self.namespace, body, action=f"create {kind} {name}")

    def _delete(self, kind: str, name: str) -> bool:
        """Delete one object with its dependents; False if it was not there."""
        api, method, args = self._target("delete", kind, name)
        found = self._json(
            api, method, *args, propagation_policy="Background",
            action=f"delete {kind} {name}", missing_ok=True,
        )
        return found is not None

    def _list(self, kind: str, label_selector: str) -> list[Manifest]:
        api, method, args = self._target("list", kind)
        found = self._json(
            api, method, *args, label_selector=label_selector,
            action=f"list {kind} objects",
        )
        return list((found or {}).get("items") or [])

    def _read_pod(self, name: str) -> Manifest | None:
        return self._json(
            "CoreV1Api", "read_namespaced_pod", name, self.namespace,
            action=f"read Pod {name}", missing_ok=True,
        )
