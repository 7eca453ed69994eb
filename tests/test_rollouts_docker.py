"""Progressive delivery end to end: the reference agent on a real Docker host,
real traffic through the real gateway, real runs from the agent's own spans
(OTLP to the real web server). One deployment lives through: a good revision
promoted 10 % → 50 % → 100 %; a revision failing 30 % of its requests aborted
automatically (traffic back on stable, the timeline and the webhook saying
why, no request dropped); a revision with ×5 tokens (same errors and latency)
aborted on cost per run; an undo to the good revision; blue-green, whose
preview answers only on the preview URL until the promotion switches all
traffic at once."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import docker
import pytest
import requests

from deployments import actions as registry
from deployments.audit import SYSTEM, Actor
from deployments.models import Deployment, DeploymentEvent, Instance
from deployments.reconciler import reconcile_deployment
from rollouts import actions, engine

from .docker_support import IMAGE, start_hosts
from .factories import AgentFactory, TargetFactory, VersionFactory
from .processes import stop
from .rollouts_support import Driver, Servers, Traffic, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ANALYSIS = {"interval_s": 5, "count": 1, "min_runs": 5, "window_s": 30,
            "metrics": [{"name": "error_rate", "max": 0.1},
                        {"name": "p95_latency_ms", "max": 5000},
                        {"name": "cost_per_run", "max_ratio": 1.5}]}
STEPS = [{"set_weight": 10}, {"analysis": ANALYSIS}, {"set_weight": 50},
         {"analysis": ANALYSIS}, {"set_weight": 100}]
BASE_ENV = {"AGENT_MODE": "realtime", "AGENT_MODEL": "gpt-4o-mini",
            "OTEL_BSP_SCHEDULE_DELAY": "200", "AGENT_LATENCY_MS": "30", "AGENT_DRAIN_S": "10"}


class Hooked:
    """A webhook receiver on loopback (the tests allow private addresses)."""

    def __init__(self):
        self.bodies: list[dict] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def stack(world, settings, tmp_path):
    (url,) = start_hosts(1)
    settings.HANGAR_PROGRESS_DEADLINE_S = 60
    servers = Servers(tmp_path)
    settings.HANGAR_OTLP_ENDPOINT = servers.web_url
    agent = AgentFactory(team=world.team, slug="canary-bot")
    target = TargetFactory(team=world.team, name="rollouts-docker", kind="docker",
                           connection={"url": url})
    v1 = VersionFactory(agent=agent, number=1, image=IMAGE, port=8080, cpu="0.2",
                        memory_mb=128, env=BASE_ENV)
    d = registry.create_deployment(agent, version=v1, target=target, replicas=2, actor=SYSTEM)
    hooked = Hooked()
    actions.create_hook(world.team, actor=SYSTEM, name="ops", url=hooked.url)
    _, key = registry.create_token(world.team, name="caller", scope="read", expires_at=None,
                                   actor=Actor(user=world.users["admin"]))
    driver = Driver(d.pk)
    driver.start()
    yield d, servers, driver, hooked, {"Authorization": f"Bearer {key}"}, url
    driver.stop()
    stop(servers.gateway)
    Deployment.objects.filter(pk=d.pk).update(state="stopped")
    for _ in range(3):
        reconcile_deployment(d.pk)
    stop(servers.web)
    hooked.server.shutdown()
    client = docker.DockerClient(base_url=url)
    for c in client.containers.list(all=True, filters={"label": f"hangar.deployment={d.pk}"}):
        c.remove(force=True)
    client.close()


def version(d, number, **env):
    return VersionFactory(agent=d.agent, number=number, image=IMAGE, port=8080, cpu="0.2",
                          memory_mb=128, env={**BASE_ENV, **env})


def names_of(d, revision_number):
    return set(Instance.objects.filter(deployment=d, revision__number=revision_number)
               .values_list("name", flat=True))


def rollout_ended(d, number):
    rollout = engine.latest(d.pk)
    return rollout is not None and rollout.number == number and rollout.finished and rollout


def test_canary_and_blue_green_on_docker(stack, world):
    d, servers, driver, hooked, headers, _ = stack
    main = servers.gw("acme/canary-bot/production/invoke")
    operator = world.client("operator")
    wait_until(lambda: Deployment.objects.get(pk=d.pk).health == "Healthy", timeout=180,
               what="revision 1 healthy", driver=driver)
    answer = operator.put(f"/api/v1/deployments/{d.pk}/rollout/strategy",
                          data=json.dumps({"strategy": "canary", "steps": STEPS}),
                          content_type="application/json")
    assert answer.status_code == 200, answer.content
    traffic = Traffic(main, headers, clients=4).start()
    try:
        wait_until(lambda: len(traffic.answers) > 20, timeout=60, what="traffic flowing")

        # A good revision: 10 % → 50 % → 100 %, every request answered.
        t0 = time.monotonic()
        registry.update_deployment(d, version=version(d, 2, AGENT_VARIANT="good"),
                                   actor=SYSTEM)
        good = wait_until(lambda: rollout_ended(d, 1), timeout=300,
                          what="the good revision promoted", driver=driver)
        assert good.phase == "Healthy" and not good.aborted, good.message
        weights = [m.rsplit(" ", 1)[1] for m in DeploymentEvent.objects.filter(
            deployment=d, reason="RolloutWeight").order_by("at", "id")
            .values_list("message", flat=True)]
        assert weights == ["10%", "50%", "100%"]
        assert [m.verdict for m in good.measurements.all()] == ["passed", "passed"]
        wait_until(lambda: names_of(d, 1) == set(), timeout=120, what="stable scaled down")
        served = traffic.since(t0)
        assert served and all(a.status == 200 for a in served), \
            [a for a in served if a.status != 200][:5]
        canary = names_of(d, 2)
        assert {a.replica for a in served} & canary

        # 30 % errors: aborted automatically, traffic back on revision 2.
        t1 = time.monotonic()
        registry.update_deployment(d, version=version(d, 3, AGENT_ERROR_RATE="0.3"),
                                   actor=SYSTEM)
        bad = wait_until(lambda: rollout_ended(d, 2), timeout=300, what="the abort",
                         driver=driver)
        aborted_at = time.monotonic()
        assert bad.aborted and bad.message.startswith("rollout aborted: error rate"), \
            bad.message
        d.refresh_from_db()
        wait_until(lambda: Deployment.objects.get(pk=d.pk).health == "Degraded", timeout=60,
                   what="the deployment Degraded")
        assert "rollout aborted: error rate" in Deployment.objects.get(pk=d.pk).health_reason
        assert DeploymentEvent.objects.filter(deployment=d, reason="RolloutAborted",
                                              message__contains="error rate").exists()
        wait_until(lambda: any(b.get("event") == "rollout.aborted" for b in hooked.bodies),
                   timeout=30, what="the webhook")
        sent = next(b for b in hooked.bodies if b.get("event") == "rollout.aborted")
        assert "error rate" in sent["text"] and sent["rollout"]["canary_revision"] == 3
        wait_until(lambda: names_of(d, 3) == set(), timeout=60, what="canary removed")
        time.sleep(2)
        window = traffic.since(t1)
        # No request dropped: the only failures are the canary's own 500s.
        assert all(a.status == 200 or (a.status == 500 and "injected" in a.detail)
                   for a in window), [a for a in window if a.status not in (200, 500)][:5]
        after = [a for a in traffic.since(aborted_at + 2)]
        assert after and all(a.status == 200 and a.replica in names_of(d, 2) for a in after)

        # ×5 tokens, same errors and latency: aborted on cost per run.
        registry.update_deployment(d, version=version(d, 4, AGENT_TOKEN_MULTIPLIER="5"),
                                   actor=SYSTEM)
        costly = wait_until(lambda: rollout_ended(d, 3), timeout=300, what="the cost abort",
                            driver=driver)
        assert costly.aborted and "cost per run" in costly.message, costly.message
        assert "error rate" not in costly.message and "p95" not in costly.message
        assert costly.stable_revision.number == 2

        # Undo to revision 2: immediate (it is what stable runs), Healthy again.
        answer = operator.post(f"/api/v1/deployments/{d.pk}/rollout/undo",
                               data=json.dumps({"revision": 2}),
                               content_type="application/json")
        assert answer.status_code == 200, answer.content
        wait_until(lambda: Deployment.objects.get(pk=d.pk).health == "Healthy", timeout=120,
                   what="healthy after the undo", driver=driver)
        d.refresh_from_db()
        assert d.revision.number == 5 and len(names_of(d, 5)) == 2

        # Blue-green: the preview answers on its URL only; promotion switches at once.
        actions.set_strategy(d, actor=SYSTEM, strategy="blue_green", scale_down_delay_s=5)
        registry.update_deployment(d, version=version(d, 6, AGENT_VARIANT="green"),
                                   actor=SYSTEM)
        wait_until(lambda: engine.latest(d.pk).phase == "Paused", timeout=180,
                   what="the preview ready", driver=driver)
        green, blue = names_of(d, 6), names_of(d, 5)
        preview = servers.gw("acme/canary-bot/production/preview/invoke")
        wait_until(lambda: requests.post(preview, json={"input": "p"}, headers=headers,
                                         timeout=30).headers.get("x-hangar-replica") in green,
                   timeout=30, what="the preview URL")
        for _ in range(5):
            assert requests.post(preview, json={"input": "p"}, headers=headers,
                                 timeout=30).headers["x-hangar-replica"] in green
        t2 = time.monotonic()
        time.sleep(1)
        assert {a.replica for a in traffic.since(t2)} <= blue
        answer = operator.post(f"/api/v1/deployments/{d.pk}/rollout/promote",
                               data="{}", content_type="application/json")
        assert answer.status_code == 200 and answer.json()["rollout"]["phase"] == "Healthy"
        wait_until(lambda: any(a.replica in green for a in traffic.since(t2)), timeout=30,
                   what="traffic on green")
        first = min((a for a in traffic.since(t2) if a.replica in green),
                    key=lambda a: a.ended)
        time.sleep(2)
        later = [a for a in traffic.since(first.ended)]
        assert later and all(a.replica in green for a in later), "the switch was not atomic"
        wait_until(lambda: names_of(d, 5) == set(), timeout=60,
                   what="blue removed after its scale-down delay")
        no_preview = requests.post(preview, json={"input": "p"}, headers=headers, timeout=30)
        assert no_preview.status_code == 404 and "no preview" in no_preview.json()["detail"]
    finally:
        traffic.stop()
    assert not driver.errors, driver.errors
    assert all(a.status in (200, 500) for a in traffic.answers), \
        [a for a in traffic.answers if a.status not in (200, 500)][:5]
