"""The live dashboard in real Chromium, against the production shape: uvicorn
(HTTP + websockets) and a Celery worker with beat as processes, the Redis
channel layer, PostgreSQL and two real Docker hosts. Screenshots are saved
under test-artifacts/ for a person to look at."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
import requests
from django.db import connection

from deployments.models import Deployment, Membership

from .browser_support import ARTIFACTS, new_page
from .docker_support import IMAGE, ROOT, start_hosts
from .factories import AgentFactory, TargetFactory, TeamFactory, UserFactory, VersionFactory
from .processes import free_port, start_web, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def service_env() -> dict:
    params = connection.get_connection_params()
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=f"postgres://{params['user']}@{params['host']}:{params['port']}/"
                     f"{params['dbname']}",
        HANGAR_SWEEP_SECONDS="1", HANGAR_RESTART_DELAY_S="3", HANGAR_PROGRESS_DEADLINE_S="30",
    )
    return env


class Services:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.web: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_web(self) -> None:
        log = self.tmp / "web.log"
        self.web = start_web(self.port, service_env(), log)
        wait_for(f"{self.base}/healthz", self.web, log)

    def start_worker(self) -> None:
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--beat",
             "--concurrency=2", "--loglevel=INFO",
             "--schedule", str(self.tmp / "beat-schedule")], cwd=ROOT, env=service_env(),
            stdout=(self.tmp / "worker.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True)

    stop = staticmethod(stop)


@pytest.fixture
def services(tmp_path):
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")
    found = Services(tmp_path)
    found.start_web()
    found.start_worker()
    yield found
    found.stop(found.web)
    found.stop(found.worker)


@pytest.fixture
def setup(services):
    urls = start_hosts(2)
    user = UserFactory(username="ops", password="ops-password-123")
    team = TeamFactory(slug="live", name="Live team")
    Membership.objects.create(team=team, user=user, role="operator")
    agent = AgentFactory(team=team, slug="ref-live", name="Reference agent")
    VersionFactory(agent=agent, number=1, image=IMAGE, port=8080, cpu="0.2", memory_mb=128,
                   env={"AGENT_MODE": "realtime"})
    TargetFactory(team=team, name="docker-a", kind="docker", connection={"url": urls[0]})
    yield {"agent": agent, "urls": urls}
    for deployment in Deployment.objects.filter(agent=agent):
        Deployment.objects.filter(pk=deployment.pk).update(state="stopped")
    from deployments.reconciler import reconcile_deployment

    for deployment in Deployment.objects.filter(agent=agent):
        for _ in range(3):
            reconcile_deployment(deployment.pk)
    for url in urls:
        client = docker.DockerClient(base_url=url)
        for c in client.containers.list(all=True, filters={"label": "hangar.managed=true"}):
            c.remove(force=True)


@pytest.fixture
def page(services):
    with new_page() as found:
        yield found


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def text_of(page, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def test_operator_watches_the_fleet_change_live(services, setup, page):
    from playwright.sync_api import expect

    agent = setup["agent"]
    page.goto(f"{services.base}/login/")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", "ops-password-123")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Fleet")

    # Deploy the reference agent from the UI.
    page.goto(f"{services.base}/agents/{agent.pk}/")
    page.fill("#deploy-form input[name=replicas]", "2")
    page.click("#deploy-form button[type=submit]")
    page.wait_for_url("**/deployments/*/")
    expect(page.locator("#live-status")).to_have_text("Live", timeout=15_000)
    page.evaluate("window.__sameDocument = true")

    # Replicas become healthy without a reload.
    ready = page.locator("#deployment-status [data-testid=ready]")
    expect(ready).to_have_text("2", timeout=90_000)
    expect(page.locator("#deployment-status .statusline .badge")).to_have_text("Healthy")
    shot(page, "01-deployed-healthy")

    # Scale from the UI and watch it converge.
    page.fill("#scale input[name=replicas]", "3")
    page.click("#scale button[type=submit]")
    expect(page.locator("#scale .done")).to_contain_text("Scaling to 3")
    expect(ready).to_have_text("3", timeout=90_000)
    expect(page.locator("#deployment-status [data-testid=health-reason]")).to_have_text(
        "3 of 3 replicas healthy", timeout=30_000)
    shot(page, "02-scaled-to-3")

    # Kill a container out of band: the badge turns, then recovers.
    deployment = Deployment.objects.get(agent=agent)
    victim = docker.DockerClient(base_url=setup["urls"][0]).containers.list(
        filters={"label": f"hangar.deployment={deployment.pk}"})[0]
    victim.kill()
    badge = page.locator("#deployment-status .statusline .badge")
    expect(badge).to_have_text("Degraded", timeout=30_000)
    expect(page.locator("#timeline")).to_contain_text("exited with code 137", timeout=15_000)
    shot(page, "03-container-killed")
    expect(badge).to_have_text("Healthy", timeout=60_000)
    shot(page, "04-recovered")

    # Log lines arrive while following.
    page.locator("#deployment-status a", has_text="Logs").first.click()
    logs = page.locator("[data-testid=logs]")
    expect(logs).to_contain_text("listening on", timeout=15_000)
    page.click("[data-testid=follow]")
    instance = page.locator("#logs h2 .mono").inner_text()
    address = deployment.instances.get(name=instance).address
    time.sleep(1)
    requests.post(f"http://{address}/invoke", json={"input": "browser-check"}, timeout=10)
    expect(logs).to_contain_text("POST /invoke", timeout=15_000)
    shot(page, "05-logs")

    # Restart the web process: the page reconnects by itself and re-syncs.
    services.stop(services.web)
    expect(page.locator("#live-status")).to_have_text("Reconnecting…", timeout=15_000)
    Deployment.objects.filter(pk=deployment.pk).update(health_reason="changed while offline")
    services.start_web()
    expect(page.locator("#live-status")).to_have_text("Live", timeout=30_000)
    page.fill("#scale input[name=replicas]", "1")
    page.click("#scale button[type=submit]")
    expect(ready).to_have_text("1", timeout=90_000)
    expect(page.locator("#deployment-status [data-testid=desired]")).to_have_text("1")
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    shot(page, "06-after-web-restart")

    # The fleet overview shows it too.
    page.goto(f"{services.base}/fleet/")
    expect(page.locator(f"tr[data-deployment='{deployment.pk}']")).to_contain_text("Healthy")
    shot(page, "07-fleet")
