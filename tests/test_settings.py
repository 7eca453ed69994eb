"""Configuration from the environment: production values pass `check --deploy`,
bad values stop the process with a message naming the variable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/hangar",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
    "HANGAR_SECRET_KEY": "k" * 20 + "-production-like-secret-key-with-enough-entropy-9f8e7d6c",
    "HANGAR_ENCRYPTION_KEY": "dGVzdC1lbmNyeXB0aW9uLWtleS0zMi1ieXRlcyEhISE=",
    "HANGAR_ALLOWED_HOSTS": "hangar.example.com",
    "HANGAR_HTTPS": "true",
    "HANGAR_DEBUG": "false",
}


def manage(*args, env_overrides=None, drop=()):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HANGAR_", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS"))}
    env.update(PRODUCTION)
    env.update(env_overrides or {})
    for name in drop:
        env.pop(name, None)
    env["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_production_values():
    result = manage("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_flags_missing_https_hardening():
    result = manage("check", "--deploy", env_overrides={"HANGAR_HTTPS": "false"})
    assert "security.W004" in result.stderr + result.stdout  # HSTS
    assert "security.W012" in result.stderr + result.stdout  # session cookie secure


@pytest.mark.parametrize("overrides,drop,message", [
    ({"HANGAR_DEBUG": "maybe"}, (), "HANGAR_DEBUG='maybe' is not a boolean"),
    ({"DATABASE_URL": "mysql://u@h/db"}, (), "DATABASE_URL must be a postgres:// URL"),
    ({"DATABASE_URL": "not a url"}, (), "DATABASE_URL"),
    ({"HANGAR_ENCRYPTION_KEY": "short"}, (), "HANGAR_ENCRYPTION_KEY must be"),
    ({}, ("HANGAR_SECRET_KEY",), "HANGAR_SECRET_KEY (or HANGAR_SECRET_KEY_FILE) must be set"),
    ({}, ("HANGAR_ENCRYPTION_KEY",), "HANGAR_ENCRYPTION_KEY (or HANGAR_ENCRYPTION_KEY_FILE)"),
    ({"HANGAR_SECRET_KEY_FILE": "/nonexistent/key"}, (), "HANGAR_SECRET_KEY_FILE"),
    ({"HANGAR_HSTS_SECONDS": "soon"}, (), "HANGAR_HSTS_SECONDS='soon' is not an integer"),
])
def test_bad_configuration_fails_loudly(overrides, drop, message):
    result = manage("check", env_overrides=overrides, drop=drop)
    assert result.returncode != 0
    assert message in result.stderr


def test_secrets_can_come_from_files(tmp_path):
    key_file = tmp_path / "secret"
    key_file.write_text(PRODUCTION["HANGAR_SECRET_KEY"] + "\n")
    result = manage("check", "--deploy", "--fail-level", "WARNING",
                    env_overrides={"HANGAR_SECRET_KEY_FILE": str(key_file)},
                    drop=("HANGAR_SECRET_KEY",))
    assert result.returncode == 0, result.stderr


def test_standalone_generates_and_keeps_its_keys(tmp_path):
    env = {"HANGAR_DATA_DIR": str(tmp_path)}
    drop = ("DATABASE_URL", "REDIS_URL", "HANGAR_SECRET_KEY", "HANGAR_ENCRYPTION_KEY")
    first = manage("shell", "-c", "from django.conf import settings;"
                   "print(settings.DATABASES['default']['ENGINE'], settings.CELERY_BROKER_URL,"
                   " settings.CHANNEL_LAYERS['default']['BACKEND'])",
                   env_overrides=env, drop=drop)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1].split() == [
        "django.db.backends.sqlite3", "filesystem://",
                                    "channels.layers.InMemoryChannelLayer"]
    key = (tmp_path / "hangar_encryption_key").read_text()
    assert oct((tmp_path / "hangar_encryption_key").stat().st_mode)[-3:] == "600"
    manage("check", env_overrides=env, drop=drop)
    assert (tmp_path / "hangar_encryption_key").read_text() == key
