"""Test settings: the production shape (PostgreSQL + Redis) with fixed test keys.

Values already in the environment win, so CI can point at other services.
"""
import os

# Under pytest-xdist (scripts/test runs two workers) each worker has its own
# test database (pytest-django adds _gw<n>), Redis database, live-update
# channels (pub/sub ignores the database), port range for local agents and data
# dir; the servers a test starts inherit them. The modules that use the shared
# Docker hosts or NATS run on one worker, one after another (tests/conftest.py).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER and os.environ.get("HANGAR_TEST_WORKER") != _WORKER:
    _n = int(_WORKER.removeprefix("gw"))
    _redis, _, _db = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15").rpartition("/")
    os.environ["REDIS_URL"] = f"{_redis}/{(int(_db or 15) - _n) % 16}"
    os.environ["HANGAR_TEST_WORKER"] = _WORKER
    os.environ["HANGAR_PORT_MIN"], os.environ["HANGAR_PORT_MAX"] = (
        str(20000 + 2500 * _n), str(22499 + 2500 * _n))
    os.environ.setdefault("HANGAR_DATA_DIR", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "var", f"test-{_WORKER}"))

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/hangar")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("HANGAR_SECRET_KEY", "test-secret-key-not-for-production-" + "x" * 20)
os.environ.setdefault("HANGAR_ENCRYPTION_KEY", "dGVzdC1lbmNyeXB0aW9uLWtleS0zMi1ieXRlcyEhISE=")

from controlplane.settings import *  # noqa: E402,F403

HANGAR_WEBHOOK_ALLOW_PRIVATE = True  # the webhook tests listen on 127.0.0.1
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast test logins
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405

# Separate runs (several engineers, CI) can use separate test databases.
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("HANGAR_TEST_DB_NAME", "test_hangar")}  # noqa: F405
if _WORKER and "CONFIG" in CHANNEL_LAYERS["default"]:  # noqa: F405
    CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"asgi-test-{_WORKER}"  # noqa: F405
