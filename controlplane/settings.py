"""Hangar settings: one module, read from the environment.

Two shapes share this file. *Standalone* (no ``DATABASE_URL``): SQLite, a
filesystem Celery broker and an in-memory channel layer under
``HANGAR_DATA_DIR``, with the secret key and encryption key generated there on
first start. *Production* (``DATABASE_URL`` set): PostgreSQL, Redis as broker
and channel layer, and the keys must come from the environment.
"""
from __future__ import annotations

import re
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet

from .env import (
    ConfigError,
    env_bool,
    env_int,
    env_list,
    env_str,
    persistent_secret,
    random_secret_key,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("HANGAR_DATA_DIR") or BASE_DIR / "var").resolve()

DEBUG = env_bool("HANGAR_DEBUG", False)
DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
STANDALONE = not DATABASE_URL

if STANDALONE:
    SECRET_KEY = persistent_secret("HANGAR_SECRET_KEY", DATA_DIR, random_secret_key)
    _encryption_keys = persistent_secret(
        "HANGAR_ENCRYPTION_KEY", DATA_DIR, lambda: Fernet.generate_key().decode()
    )
else:
    SECRET_KEY = env_str("HANGAR_SECRET_KEY") or ""
    _encryption_keys = env_str("HANGAR_ENCRYPTION_KEY") or ""
    if not SECRET_KEY:
        raise ConfigError("HANGAR_SECRET_KEY (or HANGAR_SECRET_KEY_FILE) must be set")
    if not _encryption_keys:
        raise ConfigError("HANGAR_ENCRYPTION_KEY (or HANGAR_ENCRYPTION_KEY_FILE) must be set")

# Comma-separated Fernet keys; the first encrypts, all decrypt (key rotation).
HANGAR_ENCRYPTION_KEYS = [k.strip() for k in _encryption_keys.split(",") if k.strip()]
for _key in HANGAR_ENCRYPTION_KEYS:
    try:
        Fernet(_key)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            "HANGAR_ENCRYPTION_KEY must be comma-separated Fernet keys "
            "(32 url-safe base64-encoded bytes each)"
        ) from exc

ALLOWED_HOSTS = env_list("HANGAR_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("HANGAR_CSRF_TRUSTED_ORIGINS", [])

# Serving behind TLS (a load balancer that terminates HTTPS): secure cookies,
# HSTS and redirects. `manage.py check --deploy` is clean with this on.
HTTPS = env_bool("HANGAR_HTTPS", False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("HANGAR_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("HANGAR_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("HANGAR_HSTS_PRELOAD", True)
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "channels",
    "ninja",
    "deployments",
    "telemetry",
    "edge",
    "rollouts",
    "gateway",
    "threads",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "controlplane.staticfiles.WhiteNoiseMiddleware",  # async file streaming under ASGI
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"
ASGI_APPLICATION = "controlplane.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if STANDALONE:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "hangar.sqlite3",
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }
else:
    try:
        # CONN_MAX_AGE=0: persistent per-thread connections leak under ASGI (every
        # request runs in a thread of its own); the pool below bounds them instead.
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL is not a database URL: {exc}") from exc
    if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise ConfigError("DATABASE_URL must be a postgres:// URL (Hangar runs on PostgreSQL)")

# PostgreSQL connections: one psycopg pool per process (Django's OPTIONS["pool"]),
# so what a deployment holds is easy to add up (README, "Database connections"):
#   web processes × (HANGAR_DB_POOL_MAX + HANGAR_INGEST_CONNECTIONS + 3 for edge devices)
#   + worker processes × HANGAR_WORKER_DB_POOL_MAX  ≤  max_connections − reserve.
# A request that finds the pool exhausted waits up to HANGAR_DB_POOL_TIMEOUT
# seconds for a connection to come back, then fails (503 from the API).
HANGAR_DB_POOL_MIN = env_int("HANGAR_DB_POOL_MIN", 2, minimum=0)
HANGAR_DB_POOL_MAX = env_int("HANGAR_DB_POOL_MAX", 10, minimum=1)
HANGAR_DB_POOL_TIMEOUT = env_int("HANGAR_DB_POOL_TIMEOUT", 10, minimum=1)
# Per Celery worker process (each prefork child, or the one solo/threads process)
# and per beat: a task runs on one connection at a time.
HANGAR_WORKER_DB_POOL_MAX = env_int("HANGAR_WORKER_DB_POOL_MAX", 2, minimum=1)
if HANGAR_DB_POOL_MIN > HANGAR_DB_POOL_MAX:
    raise ConfigError("HANGAR_DB_POOL_MIN must not exceed HANGAR_DB_POOL_MAX")
# Keyword arguments of psycopg_pool.ConnectionPool for the web processes; the
# Celery app swaps in the worker sizes (controlplane/celery.py).
HANGAR_DB_POOL = {"min_size": HANGAR_DB_POOL_MIN, "max_size": HANGAR_DB_POOL_MAX,
                  "timeout": float(HANGAR_DB_POOL_TIMEOUT)}
HANGAR_WORKER_DB_POOL = {"min_size": 0, "max_size": HANGAR_WORKER_DB_POOL_MAX,
                         "timeout": float(HANGAR_DB_POOL_TIMEOUT)}
if not STANDALONE:
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options["pool"] = dict(HANGAR_DB_POOL)
    _options.setdefault("application_name", "hangar-web")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "deployments:fleet"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("HANGAR_STATIC_ROOT") or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = True

# Several installations may share a Docker host, a cluster or a Redis server:
# a name keeps their units (the ``hangar.managed`` label, unit names) and their
# live-update channels apart. Empty: the single-installation defaults.
HANGAR_INSTALLATION = env_str("HANGAR_INSTALLATION") or ""
if not re.fullmatch(r"([a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?)?", HANGAR_INSTALLATION):
    raise ConfigError(f"HANGAR_INSTALLATION={HANGAR_INSTALLATION!r}: up to 20 lowercase "
                      "letters, digits and inner hyphens")

# Channels: Redis in production, in-memory in standalone.
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # Pub/sub: one Redis PUBLISH per group message, fanned out by each
            # web process to its own sockets (live updates are at-most-once).
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": (
                f"asgi-{HANGAR_INSTALLATION}" if HANGAR_INSTALLATION else "asgi")},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery: Redis broker in production; a filesystem broker under the data dir in
# standalone so the embedded worker needs no service. Results are not stored:
# every task writes its outcome to PostgreSQL rows.
CELERY_BROKER_URL = REDIS_URL or "filesystem://"
if not REDIS_URL:
    _queue_dir = DATA_DIR / "queue"
    (_queue_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_queue_dir / "processed"),
        "control_folder": str(_queue_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = env_bool("HANGAR_TASKS_EAGER", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if REDIS_URL:
    # A web request enqueues after its commit: with Redis down, give up within
    # about a second (logged and counted, deployments.effects) instead of
    # holding the request; the beat sweep re-reconciles when Redis is back.
    CELERY_BROKER_CONNECTION_TIMEOUT = 2
    CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 2}
    CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0,
                                        "interval_step": 0.2, "interval_max": 0.2}
CELERY_TIMEZONE = "UTC"

# Reconciler and runtimes.
HANGAR_SWEEP_SECONDS = env_int("HANGAR_SWEEP_SECONDS", 5, minimum=1)
HANGAR_PROGRESS_DEADLINE_S = env_int("HANGAR_PROGRESS_DEADLINE_S", 60, minimum=1)
# A pass that launched instances watches the ones still starting this long
# (seconds, 0 = not at all), probing only them every 100 ms.
HANGAR_SETTLE_SECONDS = env_int("HANGAR_SETTLE_SECONDS", 10, minimum=0)
HANGAR_SETTLE_INTERVAL = 0.1
HANGAR_RESTART_POLICY = {
    "attempts": env_int("HANGAR_RESTART_ATTEMPTS", 3, minimum=0),
    "interval_s": env_int("HANGAR_RESTART_INTERVAL_S", 300, minimum=1),
    "delay_s": env_int("HANGAR_RESTART_DELAY_S", 1, minimum=0),
    "max_delay_s": env_int("HANGAR_RESTART_MAX_DELAY_S", 30, minimum=0),
}
HANGAR_PORT_RANGE = (env_int("HANGAR_PORT_MIN", 20000, minimum=1024),
                     env_int("HANGAR_PORT_MAX", 29999, minimum=1025))
if HANGAR_PORT_RANGE[0] >= HANGAR_PORT_RANGE[1]:
    raise ConfigError("HANGAR_PORT_MIN must be below HANGAR_PORT_MAX")
HANGAR_AUTOSCALE_DOWN_WINDOW_S = env_int("HANGAR_AUTOSCALE_DOWN_WINDOW_S", 60, minimum=0)
HANGAR_OTLP_ENDPOINT = env_str("HANGAR_OTLP_ENDPOINT", "http://127.0.0.1:8000")

# Telemetry: OTLP ingestion limits, retention, cost accrual.
# A request body (compressed or not) larger than this is refused with 413.
HANGAR_INGEST_MAX_BYTES = env_int("HANGAR_INGEST_MAX_BYTES", 8 * 1024 * 1024, minimum=1024)
# Attribute values (strings, bytes) longer than this are truncated and the span flagged.
HANGAR_INGEST_MAX_ATTRIBUTE_BYTES = env_int("HANGAR_INGEST_MAX_ATTRIBUTE_BYTES", 16 * 1024,
                                            minimum=256)
# Database connections per ASGI web process for span ingestion (PostgreSQL): the
# ingest path's own pool, beside Django's; 0 serves /v1/traces through Django's
# request cycle (and its pool) instead.
HANGAR_INGEST_CONNECTIONS = env_int("HANGAR_INGEST_CONNECTIONS", 4, minimum=0)
# Keyword arguments of psycopg_pool.AsyncConnectionPool for that ingest pool.
HANGAR_INGEST_POOL = {"min_size": min(1, HANGAR_INGEST_CONNECTIONS),
                      "max_size": max(1, HANGAR_INGEST_CONNECTIONS),
                      "timeout": float(HANGAR_DB_POOL_TIMEOUT)}
# Exports in progress per web process beyond this are refused with 503 (retryable).
HANGAR_INGEST_MAX_PENDING = env_int("HANGAR_INGEST_MAX_PENDING", 64, minimum=1)
HANGAR_SPAN_RETENTION_DAYS = env_int("HANGAR_SPAN_RETENTION_DAYS", 14, minimum=1)
HANGAR_RUN_RETENTION_DAYS = env_int("HANGAR_RUN_RETENTION_DAYS", 400, minimum=31)
HANGAR_COST_TICK_SECONDS = env_int("HANGAR_COST_TICK_SECONDS", 60, minimum=5)
# Budget webhooks go to public addresses only, unless this allows loopback,
# private and link-local ones (a team admin must not reach internal services).
HANGAR_WEBHOOK_ALLOW_PRIVATE = env_bool("HANGAR_WEBHOOK_ALLOW_PRIVATE", False)
# A notification still pending, retrying or sending after this long lost its
# enqueue, retry or worker (Redis was down): beat enqueues it again.
HANGAR_WEBHOOK_RESEND_AFTER_S = env_int("HANGAR_WEBHOOK_RESEND_AFTER_S", 300, minimum=10)

# Edge fleet: what devices are told about polling, when one counts as offline,
# where bundles are kept (content-addressed) and how large one may be.
HANGAR_EDGE_POLL_INTERVAL_S = env_int("HANGAR_EDGE_POLL_INTERVAL_S", 30, minimum=1)
HANGAR_EDGE_JITTER_S = env_int("HANGAR_EDGE_JITTER_S", 10, minimum=0)
HANGAR_EDGE_OFFLINE_AFTER_S = env_int(
    "HANGAR_EDGE_OFFLINE_AFTER_S", 3 * (HANGAR_EDGE_POLL_INTERVAL_S + HANGAR_EDGE_JITTER_S),
    minimum=1)
HANGAR_EDGE_LONG_POLL_MAX_S = env_int("HANGAR_EDGE_LONG_POLL_MAX_S", 60, minimum=0)
# A poll writes nothing: last seen is kept in memory and written this often.
HANGAR_EDGE_LAST_SEEN_FLUSH_S = float(env_int("HANGAR_EDGE_LAST_SEEN_FLUSH_MS", 5000,
                                              minimum=10)) / 1000
# How long an untouched device stays in a web process's token cache (changes
# drop it at once: edge.devicecache listens to PostgreSQL).
HANGAR_EDGE_DEVICE_CACHE_S = env_int("HANGAR_EDGE_DEVICE_CACHE_S", 300, minimum=1)
HANGAR_EDGE_BUNDLE_DIR = Path(env_str("HANGAR_EDGE_BUNDLE_DIR") or DATA_DIR / "bundles")
HANGAR_EDGE_MAX_BUNDLE_BYTES = env_int("HANGAR_EDGE_MAX_BUNDLE_BYTES", 64 * 1024 * 1024,
                                       minimum=1024)

# Threads (threads/): the LangGraph-compatible API the gateway process serves,
# by prefix (the gateway loads these by dotted path: it does not import threads).
HANGAR_GATEWAY_MOUNTS = {"/lg/": "threads.server.ThreadsServer"}
# A run's lease: the gateway process running it renews it; one that stops
# renewing (killed) loses its runs to the sweep after this long (seconds).
HANGAR_THREADS_LEASE_S = float(env_int("HANGAR_THREADS_LEASE_MS", 10_000, minimum=200)) / 1000
HANGAR_THREADS_SWEEP_S = float(env_int("HANGAR_THREADS_SWEEP_MS", 2000, minimum=50)) / 1000
HANGAR_THREADS_HEARTBEAT_S = float(env_int("HANGAR_THREADS_HEARTBEAT_MS", 15_000,
                                           minimum=50)) / 1000
HANGAR_THREADS_MAX_STATE_BYTES = env_int("HANGAR_THREADS_MAX_STATE_BYTES", 1024 * 1024,
                                         minimum=64)
# Called by the batch scheduler's every tick with ``now`` (threads' crons fire there).
HANGAR_SCHEDULER_HOOKS = ["threads.crons.tick"]

# Batch: how often beat fires due schedules and supervises jobs (seconds).
HANGAR_BATCH_TICK_S = float(env_int("HANGAR_BATCH_TICK_MS", 1000, minimum=100)) / 1000
# Streams: how often beat schedules the lag readings due before its next tick
# (each at its own time, so a polling_s under the sweep interval is honoured).
HANGAR_LAG_TICK_S = float(env_int("HANGAR_LAG_TICK_MS", 1000, minimum=100)) / 1000

# Rollouts (#15): how often steps, pauses and analysis measurements come due.
HANGAR_ROLLOUT_TICK_S = float(env_int("HANGAR_ROLLOUT_TICK_MS", 2000, minimum=100)) / 1000

CELERY_BEAT_SCHEDULE = {
    "sweep": {"task": "deployments.tasks.sweep", "schedule": float(HANGAR_SWEEP_SECONDS)},
    "probe-targets": {"task": "deployments.tasks.probe_targets", "schedule": 30.0},
    "collect-orphans": {"task": "deployments.tasks.collect_orphans", "schedule": 60.0},
    "accrue-compute-cost": {"task": "telemetry.tasks.accrue_compute",
                            "schedule": float(HANGAR_COST_TICK_SECONDS)},
    "evaluate-budgets": {"task": "telemetry.tasks.evaluate_budgets",
                         "schedule": float(HANGAR_COST_TICK_SECONDS)},
    "resend-budget-webhooks": {"task": "telemetry.tasks.resend_budget_webhooks",
                               "schedule": 60.0},
    "telemetry-retention": {"task": "telemetry.tasks.retention", "schedule": 3600.0},
    "prune-samples": {"task": "deployments.tasks.prune_samples", "schedule": 3600.0},
    "rollouts-tick": {"task": "rollouts.tasks.tick", "schedule": HANGAR_ROLLOUT_TICK_S,
                      "options": {"expires": HANGAR_ROLLOUT_TICK_S * 2}},
    "batch-tick": {"task": "deployments.tasks.batch_tick", "schedule": HANGAR_BATCH_TICK_S,
                   "options": {"expires": HANGAR_BATCH_TICK_S * 2}},
    "lag-tick": {"task": "deployments.tasks.poll_lag", "schedule": HANGAR_LAG_TICK_S,
                 "options": {"expires": HANGAR_LAG_TICK_S * 2}},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("HANGAR_LOG_LEVEL", "INFO")},
    # uvicorn's per-request access log follows HANGAR_LOG_LEVEL too (WARNING
    # silences it: at high OTLP request rates it costs ~6 % of throughput).
    "loggers": {"uvicorn.access": {"level": env_str("HANGAR_LOG_LEVEL", "INFO"),
                                   "propagate": True}},
}
