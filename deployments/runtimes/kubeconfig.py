"""Kubeconfig checks, shared by the connection schema and the Kubernetes driver.

Pure functions (YAML in, a mapping or a ValueError out); no client imported, so
``base`` can use them in ``KubernetesConnection`` without importing the driver.
"""
from __future__ import annotations

from typing import Any

import yaml

# Kubeconfig entries that make the client run a program or read a file on the
# control plane. A kubeconfig comes from a team admin: accepting these would
# let them execute commands here or send a local file (say, the control
# plane's own service-account token) to a server of their choosing.
UNSAFE_USER_KEYS = ("exec", "auth-provider", "tokenFile", "client-certificate", "client-key")
UNSAFE_CLUSTER_KEYS = ("certificate-authority",)


def parse(text: str) -> dict[str, Any]:
    """The kubeconfig as a mapping, or ValueError saying why not (never quoting
    the document: a YAML error would show the offending line, maybe a token)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"the kubeconfig is not valid YAML{where}") from None
    if not isinstance(document, dict):
        raise ValueError("the kubeconfig is not a YAML mapping")
    check(document)
    return document


def check(document: dict[str, Any]) -> None:
    """Refuse kubeconfigs that are not self-contained (see UNSAFE_*_KEYS)."""
    for section, field, unsafe in (("users", "user", UNSAFE_USER_KEYS),
                                   ("clusters", "cluster", UNSAFE_CLUSTER_KEYS)):
        for entry in document.get(section) or []:
            if not isinstance(entry, dict):
                continue
            settings = entry.get(field) or {}
            found = [key for key in unsafe if isinstance(settings, dict) and settings.get(key)]
            if found:
                raise ValueError(
                    f"kubeconfig {field} {entry.get('name')!r} uses {', '.join(found)}; "
                    "only inline credentials (token, *-data) are accepted")
