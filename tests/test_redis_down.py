"""Redis is broker and channel layer only: with it down, committed writes still
answer their normal 2xx through the API, the UI and the admin (the lost
enqueue and event are logged and counted), errors that reach an API client are
JSON, and the deployment converges once Redis is back (beat's sweep)."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from unittest import mock

import pytest
import redis
import requests
from django.db import OperationalError
from kombu.exceptions import OperationalError as BrokerError

from deployments import actions, effects
from deployments.audit import Actor
from deployments.models import Deployment, Instance, Membership
from deployments.reconciler import reconcile_deployment
from deployments.runtimes import get_driver
from deployments.tasks import reconcile

from .factories import AgentFactory, TargetFactory, TeamFactory, UserFactory, VersionFactory
from .processes import ROOT, database_env, free_port, start_web, stop, wait_for

PASSWORD = "ops-password-123"


class RedisServer:
    """A redis-server of this test's own, on a free port, stopped and started
    again by pid (never the shared one)."""

    def __init__(self, tmp):
        self.port = free_port()
        self.tmp = tmp
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=(self.tmp / "redis.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=1).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise AssertionError("redis-server did not start:\n" + (self.tmp / "redis.log").read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
        self.process = None


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


# In-process: the hand-off after commit ----------------------------------------------------


def test_a_lost_enqueue_is_logged_and_counted_never_raised(world, caplog,
                                                            django_capture_on_commit_callbacks):
    before = effects.counts()["enqueue_failed"]
    with mock.patch.object(reconcile, "delay", side_effect=BrokerError("Error 111 refused")), \
            django_capture_on_commit_callbacks(execute=True) as callbacks:
        scaled = actions.scale_deployment(world.deployment, replicas=3,
                                          actor=Actor(user=world.users["operator"]))
    assert len(callbacks) >= 1
    assert scaled.replicas == 3 and Deployment.objects.get(pk=scaled.pk).replicas == 3
    assert effects.counts()["enqueue_failed"] == before + 1
    assert "enqueue failed after commit (deployments.tasks.reconcile(" in caplog.text
    assert "the periodic sweep repairs it" in caplog.text


def test_unexpected_api_errors_are_json_without_details(world):
    client = world.client("viewer")
    with mock.patch("deployments.access.readable",
                    side_effect=RuntimeError("password=hunter2 in a traceback")):
        response = client.get("/api/v1/agents")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"detail": "Internal server error."}
    assert b"hunter2" not in response.content


def test_no_pooled_connection_in_time_is_a_retryable_503(world):
    client = world.client("viewer")
    with mock.patch("deployments.access.readable",
                    side_effect=OperationalError("couldn't get a connection after 10.00 sec")):
        response = client.get("/api/v1/agents")
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json() == {"detail": "The database is busy or unavailable; retry shortly."}


# The real processes ----------------------------------------------------------------------


def csrf_of(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def logged_in(base: str, username: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/login/", timeout=30)
    answer = session.post(f"{base}/login/", data={
        "username": username, "password": PASSWORD, "csrfmiddlewaretoken": csrf_of(page.text)},
        headers={"Referer": f"{base}/login/"}, timeout=30)
    assert answer.status_code == 200 and "/login/" not in answer.url, answer.text[:500]
    return session


@pytest.fixture
def local_world(tmp_path):
    team = TeamFactory(slug="redisless", name="Redisless")
    operator = UserFactory(username="ops", password=PASSWORD)
    Membership.objects.create(team=team, user=operator, role="operator")
    UserFactory(username="root", password=PASSWORD, is_staff=True, is_superuser=True)
    agent = AgentFactory(team=team, slug="ref", name="Reference")
    version = VersionFactory(agent=agent, number=1, image="",
                             command=[sys.executable, str(ROOT / "agents/reference/agent.py")],
                             port=8080, env={"AGENT_MODE": "realtime"})
    target = TargetFactory(team=team, kind="local", name="here",
                           connection={"workdir": str(tmp_path / "runtime")})
    deployment = Deployment.objects.create(agent=agent, version=version, target=target,
                                           replicas=0)
    spare = Deployment.objects.create(agent=agent, version=version, target=target,
                                      environment="spare", replicas=0)
    _, token = actions.create_token(team, name="ci", scope="deploy", expires_at=None,
                                    actor=Actor(user=operator))
    yield {"deployment": deployment, "spare": spare, "token": token, "team": team}
    Deployment.objects.filter(pk=deployment.pk).update(state="stopped")
    for _ in range(3):
        reconcile_deployment(deployment.pk)
    driver = get_driver(target)
    for item in driver.list_instances(deployment.pk):
        driver.remove_instance(deployment.pk, item.name)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_writes_succeed_while_redis_is_down_and_converge_when_it_is_back(
        own_redis, local_world, tmp_path):
    deployment, spare = local_world["deployment"], local_world["spare"]
    env = database_env(REDIS_URL=own_redis.url, HANGAR_SWEEP_SECONDS="1",
                       HANGAR_PROGRESS_DEADLINE_S="30")
    port, web_log = free_port(), tmp_path / "web.log"
    base = f"http://127.0.0.1:{port}"
    web = start_web(port, env, web_log)
    worker = None
    try:
        wait_for(f"{base}/healthz", web, web_log)
        ui = logged_in(base, "ops")
        admin = logged_in(base, "root")
        own_redis.stop()

        # The API: the change answers 200 JSON, and a create 201 (a client
        # retrying a 500 here would have made a duplicate).
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {local_world['token']}"
        patched = api.patch(f"{base}/api/v1/deployments/{deployment.pk}", json={"replicas": 1},
                            timeout=30)
        assert patched.status_code == 200, patched.text[:2000]
        assert patched.json()["replicas"] == 1
        created = api.post(f"{base}/api/v1/agents", json={
            "team_id": local_world["team"].pk, "slug": "made-offline", "name": "Made offline",
            "pattern": "realtime"}, timeout=30)
        assert created.status_code == 201, created.text[:2000]

        # The UI's scale form (htmx) answers its partial, not an error.
        page = ui.get(f"{base}/deployments/{deployment.pk}/", timeout=30)
        scaled = ui.post(f"{base}/deployments/{deployment.pk}/scale/",
                         data={"replicas": 2, "csrfmiddlewaretoken": csrf_of(page.text)},
                         headers={"HX-Request": "true", "Referer": page.url}, timeout=30)
        assert scaled.status_code == 200, scaled.text[:2000]
        assert "Scaling to 2" in scaled.text

        # The admin deletes a deployment (its teardown would be enqueued).
        url = f"{base}/admin/deployments/deployment/{spare.pk}/delete/"
        confirm = admin.get(url, timeout=30)
        assert confirm.status_code == 200, confirm.text[:2000]
        deleted = admin.post(url, data={"post": "yes", "csrfmiddlewaretoken":
                                        csrf_of(confirm.text)},
                             headers={"Referer": url}, timeout=30)
        assert deleted.status_code == 200 and "/delete/" not in deleted.url, deleted.text[:2000]
        assert not Deployment.objects.filter(pk=spare.pk).exists()

        fresh = Deployment.objects.get(pk=deployment.pk)
        assert fresh.replicas == 2 and fresh.observed_generation < fresh.generation
        health = requests.get(f"{base}/healthz", timeout=30).json()
        assert health["status"] == "ok"
        assert health["side_effects"]["enqueue_failed"] >= 3, health  # API, UI, admin
        log = web_log.read_text()
        assert "enqueue failed after commit" in log
        assert "Internal Server Error" not in log

        # Redis is back: a worker with beat sweeps, and the deployment converges.
        own_redis.start()
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--beat",
             "--concurrency=1", "--loglevel=INFO", "--schedule", str(tmp_path / "beat")],
            cwd=ROOT, env=env, stdout=(tmp_path / "worker.log").open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            fresh = Deployment.objects.get(pk=deployment.pk)
            running = Instance.objects.filter(deployment=fresh, phase="running",
                                              health="Healthy").count()
            if fresh.observed_generation == fresh.generation and running == 2 \
                    and fresh.health == "Healthy":
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            if time.monotonic() > deadline:
                raise AssertionError(f"{fresh.health}: {fresh.health_reason}; {running} running\n"
                                     + (tmp_path / "worker.log").read_text()[-3000:])
            time.sleep(0.5)
        # New writes enqueue again; the counter stays where it was.
        again = api.patch(f"{base}/api/v1/deployments/{deployment.pk}", json={"replicas": 1},
                          timeout=30)
        assert again.status_code == 200
        assert requests.get(f"{base}/healthz", timeout=30).json()["side_effects"][
            "enqueue_failed"] == health["side_effects"]["enqueue_failed"]
    finally:
        stop(worker)
        stop(web)
