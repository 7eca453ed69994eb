"""Test settings: the production shape (PostgreSQL + Redis) with fixed test keys.

Values already in the environment win, so CI can point at other services.
"""
import os

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
