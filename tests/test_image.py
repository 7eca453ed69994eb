"""The production image builds (offline, from the project's Python base and
wheels downloaded on the host) and runs: migrate, the web server and a worker
as containers on host networking against this machine's PostgreSQL and Redis.
A login works, the containerised worker reconciles a deployment, and Docker
reports the web container's HEALTHCHECK healthy."""
from __future__ import annotations

import os
import time
import uuid

import docker
import psycopg
import pytest
import redis
import requests
from cryptography.fernet import Fernet

from .docker_support import script
from .processes import free_port

pytestmark = pytest.mark.slow

TAG = "hangar/controlplane:test"
PASSWORD = "image-test-password-1"


@pytest.fixture(scope="module")
def daemon():
    script("scripts/docker-hosts.sh", "start", "1")
    url = script("scripts/docker-hosts.sh", "hosts", "1").split()[0]
    script("scripts/images.sh", "controlplane", url, TAG, timeout=1800)
    return docker.DockerClient(base_url=url)


@pytest.fixture
def services():
    database = f"{os.environ.get('HANGAR_TEST_DB_NAME', 'test_hangar')}_image"
    admin_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    redis.Redis.from_url(redis_url).flushdb()
    yield {"DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
           "REDIS_URL": redis_url}
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_image_serves_logs_in_and_reconciles(daemon, services):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**services, "HANGAR_SECRET_KEY": uuid.uuid4().hex * 2,
           "HANGAR_ENCRYPTION_KEY": Fernet.generate_key().decode(),
           "HANGAR_ADMIN_PASSWORD": PASSWORD, "HANGAR_HEALTHCHECK_PORT": str(port),
           "HANGAR_OTLP_ENDPOINT": base, "HANGAR_SWEEP_SECONDS": "2"}
    label = {"hangar.test": f"image-{uuid.uuid4().hex[:8]}"}
    containers = []

    def run(command, **kwargs):
        container = daemon.containers.run(TAG, command, network_mode="host", environment=env,
                                          labels=label, detach=True, **kwargs)
        containers.append(container)
        return container

    def logs() -> str:
        return "\n".join(f"--- {c.name}\n{c.logs(tail=80).decode(errors='replace')}"
                         for c in containers)

    try:
        migrate = run(["python", "manage.py", "migrate", "--noinput"])
        assert migrate.wait(timeout=300)["StatusCode"] == 0, logs()
        bootstrap = run(["python", "manage.py", "bootstrap", "--no-demo", "--url", base])
        assert bootstrap.wait(timeout=120)["StatusCode"] == 0, logs()
        web = run(["uvicorn", "controlplane.asgi:application", "--host", "127.0.0.1", "--port",
                   str(port), "--ws", "websockets-sansio", "--lifespan", "on",
                   "--proxy-headers", "--timeout-graceful-shutdown", "5"])
        run(["celery", "-A", "controlplane", "worker", "--loglevel=INFO", "--pool=solo"])
        run(["celery", "-A", "controlplane", "beat", "--loglevel=INFO",
             "--schedule", "/tmp/celerybeat-schedule"])

        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=3).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or too busy starting to answer in time
            assert time.monotonic() < deadline, logs()
            time.sleep(0.5)

        # A login, as in the browser.
        session = requests.Session()
        session.get(f"{base}/login/", timeout=10)
        answer = session.post(f"{base}/login/", timeout=10, data={
            "username": "admin", "password": PASSWORD,
            "csrfmiddlewaretoken": session.cookies["csrftoken"]},
            headers={"Referer": f"{base}/login/"})
        assert answer.url == f"{base}/fleet/", logs()
        session.headers.update({"X-CSRFToken": session.cookies["csrftoken"],
                                "Referer": f"{base}/fleet/"})

        def post(path: str, body: dict) -> dict:
            created = session.post(f"{base}/api/v1{path}", json=body, timeout=10)
            assert created.status_code == 201, (path, created.text, logs())
            return created.json()

        # A deployment on the worker container's own machine: a small HTTP server.
        team = post("/teams", {"name": "Image", "slug": "image"})
        target = post("/targets", {"team_id": team["id"], "name": "in-the-worker",
                                   "kind": "local"})
        agent = post("/agents", {"team_id": team["id"], "slug": "static", "name": "Static",
                                 "pattern": "realtime"})
        version = post(f"/agents/{agent['id']}/versions", {
            "command": ["sh", "-c", 'exec python -m http.server "$PORT" --bind 127.0.0.1'],
            "port": 8080, "health": {"path": "/", "ready_path": "/"}})
        deployment = post("/deployments", {"agent_id": agent["id"], "version_id": version["id"],
                                           "target_id": target["id"], "replicas": 1})
        deadline = time.monotonic() + 120
        while True:
            current = session.get(f"{base}/api/v1/deployments/{deployment['id']}",
                                  timeout=10).json()
            if current["health"] == "Healthy":
                break
            assert time.monotonic() < deadline, (current, logs())
            time.sleep(1)
        assert current["health_reason"] == "1 of 1 replicas healthy"
        assert current["observed_generation"] == current["generation"]

        # Docker's own verdict on the image's HEALTHCHECK.
        deadline = time.monotonic() + 120
        while True:
            web.reload()
            health = web.attrs["State"].get("Health", {}).get("Status")
            if health == "healthy":
                break
            assert health in ("starting", None) and time.monotonic() < deadline, \
                (health, web.attrs["State"].get("Health"), logs())
            time.sleep(1)
    finally:
        for container in containers:
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                pass
