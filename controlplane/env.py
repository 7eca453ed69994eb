"""Reading configuration from the environment, failing loudly on bad values.

Every setting Hangar reads comes through one of these helpers so that a typo in
an operator's environment stops the process at start-up with a message naming
the variable, instead of silently running with a default.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """A configuration value in the environment is missing or malformed."""


def env_str(name: str, default: str | None = None) -> str | None:
    """A string, or the contents of the file named by ``NAME_FILE`` (for secrets)."""
    file_var = os.environ.get(f"{name}_FILE")
    if file_var:
        try:
            return Path(file_var).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={file_var!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def persistent_secret(name: str, data_dir: Path, generate) -> str:
    """Return ``name`` from the environment, else a value kept in ``data_dir``.

    Used only by the standalone shape: the first start generates the value and
    writes it (mode 0600) so that restarts keep sessions and can decrypt what
    was encrypted before.
    """
    value = env_str(name)
    if value:
        return value
    path = data_dir / name.lower()
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def random_secret_key() -> str:
    return secrets.token_urlsafe(50)
