"""What a user sees of the gateway: each proxied request is a run (the
gateway's span as its root when the agent sends no trace, inside the agent's
own run when it does), and the deployment page's gateway panel in real
Chromium — the URL with a curl, request rate, latency, error rate and
in-flight per replica, live without a reload."""
from __future__ import annotations

import threading

import pytest
import requests

from deployments import actions
from deployments.audit import Actor
from telemetry.models import Run, Span

from .browser_support import ARTIFACTS, new_page
from .gateway_support import ready_instance, serves, start_agent, start_gateway, wait_until
from .processes import database_env, free_port, start_web, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(tmp_path):
    started = []
    web_port, gw_port = free_port(), free_port()
    gateway_url = f"http://127.0.0.1:{gw_port}"
    # The page shows the gateway's URL as the web process is told it.
    web = start_web(web_port, database_env(HANGAR_GATEWAY_URL=gateway_url), tmp_path / "web.log")
    started.append(web)
    wait_for(f"http://127.0.0.1:{web_port}/healthz", web, tmp_path / "web.log")

    class Stack:
        web = f"http://127.0.0.1:{web_port}"
        gateway = gateway_url

        @staticmethod
        def agent(name: str, **env):
            process, port = start_agent(name, tmp_path / f"{name}.log", **env)
            started.append(process)
            return port

        @staticmethod
        def start_gateway():
            started.append(start_gateway(
                gw_port, database_env(), tmp_path / "gateway.log",
                HANGAR_GATEWAY_REFRESH_S="0.3", HANGAR_GATEWAY_TRACE_WAIT_S="1.5"))

    yield Stack
    for process in started:
        stop(process, timeout=10)


def token(world) -> dict:
    _, plaintext = actions.create_token(world.team, name="caller", scope="read",
                                        expires_at=None, actor=Actor(user=world.users["admin"]))
    return {"Authorization": f"Bearer {plaintext}"}


def test_each_request_is_a_run_alone_or_merged_with_the_agents_trace(world, stack):
    d = world.deployment
    d.ingest_token = f"{d.pk}.gateway-runs-ingest-token-xxxxxxxxxxxx"
    d.save(update_fields=["ingest_token"])
    plain = stack.agent("bot-plain")
    traced = stack.agent("bot-traced", OTEL_EXPORTER_OTLP_ENDPOINT=stack.web,
                         OTEL_BSP_SCHEDULE_DELAY="100",
                         OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer {d.ingest_token}")
    ready_instance(d, "bot-plain", plain)
    stack.start_gateway()
    url = f"{stack.gateway}/gw/acme/support-bot/production/invoke"
    headers = token(world)
    wait_until(lambda: serves(url, headers, "bot-plain"), what="the gateway")
    wait_until(lambda: Run.objects.filter(deployment_id=d.pk, name__startswith="gateway ")
               .exists(), what="the warm-up run")
    Run.objects.filter(deployment_id=d.pk).delete()
    Span.objects.filter(deployment_id=d.pk).delete()

    answer = requests.post(url, json={"input": "alone"}, headers=headers, timeout=10)
    assert answer.headers["x-hangar-replica"] == "bot-plain"
    run = wait_until(lambda: Run.objects.filter(deployment_id=d.pk,
                                                root_span_id__isnull=False).first(),
                     what="the gateway's run")
    assert run.name == "gateway POST /invoke" and run.status == "ok"
    assert run.instance == "" and run.duration_ms > 0
    root = Span.objects.get(trace_id=run.trace_id, span_id=run.root_span_id)
    assert b"hangar.gateway.caller" in bytes(root.data)
    assert b"hangar.gateway.replica" in bytes(root.data) and b"bot-plain" in bytes(root.data)

    # The traced replica alone now: its invoke_agent span is the run's root, the
    # gateway's span a child in the same trace.
    from deployments.models import Instance

    Instance.objects.filter(deployment=d, name="bot-plain").delete()
    ready_instance(d, "bot-traced", traced)
    wait_until(lambda: serves(url, headers, "bot-traced"), what="the traced replica")
    def merged_runs():
        """Runs whose trace holds both services' spans, read again after the
        spans were seen (the gateway's export may land between the two reads)."""
        found = [r.pk for r in Run.objects.filter(deployment_id=d.pk, input_tokens__gt=0)
                 if Span.objects.filter(trace_id=r.trace_id, name__startswith="gateway ").exists()
                 and Span.objects.filter(trace_id=r.trace_id, name="invoke_agent").exists()]
        return list(Run.objects.filter(pk__in=found))
    merged = wait_until(merged_runs, what="one run holding the agent's and the gateway's spans")[0]
    assert merged.span_count >= 3  # gateway, invoke_agent and its chat span
    gateway_span = Span.objects.get(trace_id=merged.trace_id, name__startswith="gateway ")
    if merged.name == "invoke_agent":  # the agent's span is the root: ours is its child
        assert gateway_span.parent_span_id == merged.root_span_id


def test_the_gateway_panel_shows_the_url_and_live_traffic(world, stack):
    from playwright.sync_api import expect

    port = stack.agent("bot-1", AGENT_LATENCY_MS="8000")  # outlasts a 5 s re-render
    ready_instance(world.deployment, "bot-1", port)
    stack.start_gateway()
    url = f"{stack.gateway}/gw/acme/support-bot/production/"
    headers = token(world)
    with new_page(height=1400, timeout_ms=20_000) as page:
        page.goto(f"{stack.web}/login/")
        page.fill("input[name=username]", "viewer")
        page.fill("input[name=password]", "pw-for-tests")
        page.click("button[type=submit]")
        page.wait_for_url(lambda u: "/login/" not in u)
        page.goto(f"{stack.web}/deployments/{world.deployment.pk}/")
        panel = page.locator("#panel-gateway")
        expect(panel.get_by_test_id("gateway-curl")).to_contain_text(url + "invoke")
        expect(panel.get_by_test_id("gateway-p50")).to_have_text("—")
        page.evaluate("window.__sameDocument = true")
        call = threading.Thread(target=lambda: requests.post(
            url + "invoke", json={"input": "hi"}, headers=headers, timeout=30))
        call.start()
        # In flight through the gateway, shown while the request runs.
        expect(panel.get_by_test_id("inflight-bot-1")).to_have_text("1", timeout=15_000)
        call.join()
        expect(panel.get_by_test_id("gateway-p50")).not_to_have_text("—", timeout=20_000)
        expect(panel.get_by_test_id("inflight-bot-1")).to_have_text("0", timeout=15_000)
        expect(panel.get_by_test_id("gateway-errors")).to_have_text("0%")
        assert page.evaluate("window.__sameDocument") is True  # no reload
        page.screenshot(path=str(ARTIFACTS / "gateway-panel.png"), full_page=True)
