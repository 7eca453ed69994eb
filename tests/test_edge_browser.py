"""The fleet pages in real Chromium against uvicorn on this test database:
devices with search and the online filter, a device coming online shown
live; the enrolment-token form's errors on their fields and the new token
shown once; the rollout form's errors, then a rollout whose waves advance
live as its device reports healthy, aborted from the page; a device page
with its timeline and the spans it uploaded with its own token, quarantined
from the page; a viewer sees no buttons. Screenshots go to test-artifacts/."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import requests
from django.utils import timezone

from deployments.audit import Actor
from deployments.models import Membership
from edge import actions
from edge import device as device_verbs
from edge.models import Device

from .browser_support import ARTIFACTS, new_page
from .edge_server_support import bundle_bytes, device_public_key
from .factories import AgentFactory, DeploymentFactory, TargetFactory, TeamFactory, UserFactory
from .otlp_support import export, make_span, new_trace_id
from .processes import database_env, free_port, start_web, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(tmp_path: Path, settings):
    settings.HANGAR_EDGE_BUNDLE_DIR = tmp_path / "bundles"
    port = free_port()
    log = tmp_path / "web.log"
    process = start_web(port, database_env(HANGAR_EDGE_BUNDLE_DIR=str(tmp_path / "bundles")),
                        log)
    wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
    yield f"http://127.0.0.1:{port}"
    stop(process)


@pytest.fixture
def fleet(server):
    team = TeamFactory(slug="shops", name="Shops")
    users = {}
    for name, role in (("ops", "operator"), ("watcher", "viewer")):
        users[name] = UserFactory(username=name, password=f"{name}-password-123")
        Membership.objects.create(team=team, user=users[name], role=role)
    actor = Actor(user=users["ops"])
    deployment = DeploymentFactory(agent=AgentFactory(team=team, slug="tills", pattern="edge"),
                                   target=TargetFactory(team=team, name="edge", kind="edge"))
    group = actions.create_group(team, name="lyon", deployment=deployment, actor=actor)
    _, secret = actions.create_enrolment_token(
        group, max_uses=3, expires_at=timezone.now() + timedelta(hours=1), actor=actor)
    devices = [device_verbs.enrol(token=secret, public_key=device_public_key(),
                                  name=f"till-{i}", labels={"floor": str(i)})
               for i in range(3)]
    v1 = actions.upload_bundle(team, version="v1", chunks=[bundle_bytes("v1")], actor=actor)
    return {"team": team, "group": group, "devices": devices, "v1": v1}


def login(page, base: str, who: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}/login/")
    page.fill("input[name=username]", who)
    page.fill("input[name=password]", f"{who}-password-123")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Fleet")


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"edge-{name}.png"), full_page=True)


def test_fleet_pages_in_chromium(server, fleet):
    from playwright.sync_api import expect

    devices = [d.device for d in fleet["devices"]]
    with new_page(height=1400) as page:
        page.on("dialog", lambda dialog: dialog.accept())
        login(page, server, "ops")
        page.click("nav.mainnav >> text=Edge")
        rows = page.locator("[data-testid=devices] tbody tr")
        expect(rows).to_have_count(3)
        expect(page.locator("[data-testid=online]")).to_have_count(0)
        Device.objects.filter(pk=devices[1].pk).update(last_seen=timezone.now())
        expect(page.locator(f"tr[data-device='{devices[1].pk}'] [data-testid=online]")
               ).to_be_visible()  # live: no reload
        page.select_option("select[name=online]", "yes")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("till-1")
        page.select_option("select[name=online]", "")
        expect(rows).to_have_count(3)
        page.locator("input[name=q]").press_sequentially("till-2")
        expect(rows.first).to_contain_text("till-2")
        expect(rows).to_have_count(1)
        shot(page, "devices")

        # Enrolment tokens: each error on its field, then the secret shown once.
        page.click("text=Enrolment tokens")
        page.fill("input[name=max_uses]", "0")
        page.fill("input[name=expires_in_hours]", "0")
        page.click("#enrolment-token-form button[type=submit]")
        expect(page.locator("label.invalid:has(input[name=expires_in_hours]) .error")
               ).to_contain_text("Give 1 to 8784 hours")
        page.fill("input[name=expires_in_hours]", "2")
        page.click("#enrolment-token-form button[type=submit]")
        expect(page.locator("label.invalid:has(input[name=max_uses]) .error")
               ).to_contain_text("uses from 1")
        expect(page.locator("input[name=expires_in_hours]")).to_have_value("2")  # kept
        page.fill("input[name=max_uses]", "5")
        page.fill("input[name=name]", "spring batch")
        page.click("#enrolment-token-form button[type=submit]")
        secret = page.locator("[data-testid=token-value]").inner_text().strip()
        assert secret.startswith("hge_")
        expect(page.locator("[data-testid=enrolment-tokens]")).to_contain_text("spring batch")
        shot(page, "tokens")
        enrolled = requests.post(f"{server}/api/v1/edge/enrol", timeout=10, json={
            "token": secret, "public_key": device_public_key(), "name": "till-9"})
        assert enrolled.status_code == 201

        # Rollouts: errors, then waves advancing live and an abort.
        page.click("text=Rollouts")
        page.fill("input[name=waves]", "ten, 100%")
        page.click("#rollout-form button[type=submit]")
        expect(page.locator("label.invalid:has(input[name=waves]) .error")
               ).to_contain_text("neither a count")
        page.fill("input[name=waves]", "0%, 100%")
        page.click("#rollout-form button[type=submit]")
        expect(page.locator("[data-testid=rollout-errors]")).to_contain_text("from 1 to 100")
        page.fill("input[name=waves]", "1, 100%")
        page.click("#rollout-form button[type=submit]")
        expect(page.locator("h1")).to_contain_text("Rollout")
        waves = page.locator("[data-testid=waves] tbody tr")
        expect(waves).to_have_count(2)
        expect(waves.nth(0).locator("[data-testid=wave-status]")).to_have_text("Running")
        first = Device.objects.filter(waves__index=0).get()
        device_verbs.report_status(first, {
            "phase": "running", "health": "Healthy", "version": "v1",
            "digest": f"sha256:{fleet['v1'].digest}"})
        expect(waves.nth(0).locator("[data-testid=wave-status]")).to_have_text("Healthy")
        expect(waves.nth(0).locator("[data-testid=wave-healthy]")).to_have_text("1")
        expect(waves.nth(1).locator("[data-testid=wave-status]")).to_have_text("Running")
        shot(page, "rollout")
        page.click("[data-testid=abort]")
        expect(page.locator("[data-testid=rollout-status]")).to_have_text(
            "Aborted (rolled back)")
        expect(page.locator("[data-testid=abort]")).to_have_count(0)

        # A device page: its timeline and the spans it uploaded itself.
        token = fleet["devices"][0].device_token
        spans = [make_span(trace_id=new_trace_id(), name="till.sale")]
        sent = requests.post(f"{server}/v1/traces", data=export(spans).SerializeToString(),
                             timeout=10, headers={"Authorization": f"Device {token}",
                                                  "Content-Type": "application/x-protobuf"})
        assert sent.status_code == 200, sent.text
        page.goto(f"{server}/edge/devices/{devices[0].pk}/")
        expect(page.locator("[data-testid=spans]")).to_contain_text("till.sale")
        expect(page.locator("[data-testid=timeline]")).to_contain_text("enrolled in lyon")
        page.click("[data-testid=quarantine]")
        expect(page.locator("[data-testid=device-state]")).to_have_text("Quarantined")
        expect(page.locator("[data-testid=timeline]")).to_contain_text("quarantined by ops")
        state = requests.get(f"{server}/api/v1/edge/state", timeout=10,
                             headers={"Authorization": f"Device {token}"}).json()
        assert state["run"] is False
        shot(page, "device")

    with new_page() as page:
        login(page, server, "watcher")
        page.goto(f"{server}/edge/devices/{devices[1].pk}/")
        expect(page.locator("[data-testid=device-state]")).to_have_text("Active")
        expect(page.locator("[data-testid=quarantine]")).to_have_count(0)
        expect(page.locator("[data-testid=revoke]")).to_have_count(0)
    assert Device.objects.get(pk=devices[1].pk).state == "active"
