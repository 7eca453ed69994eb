"""The gateway keys page in Chromium against uvicorn: the new-key form's errors
on their fields with the input kept (an agent the team does not have, from the
verb; a limit out of range, refused by the browser), then the key shown once and
revoked; a viewer sees the keys and no form."""
from __future__ import annotations

import pytest

from deployments.models import Membership
from gateway.models import GatewayKey

from .browser_support import ARTIFACTS, new_page
from .factories import AgentFactory, TeamFactory, UserFactory
from .processes import database_env, free_port, start_web, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log = tmp_path / "web.log"
    process = start_web(port, database_env(), log)
    wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
    yield f"http://127.0.0.1:{port}"
    stop(process)


def login(page, base: str, who: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", who)
    page.fill("input[name=password]", f"{who}-password-123")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


def test_the_keys_form_shows_its_errors_then_the_key_once(server):
    from playwright.sync_api import expect

    team = TeamFactory(slug="shops", name="Shops")
    AgentFactory(team=team, slug="tills", pattern="realtime")
    for name, role in (("ops", "operator"), ("watcher", "viewer")):
        user = UserFactory(username=name, password=f"{name}-password-123")
        Membership.objects.create(team=team, user=user, role=role)
    with new_page(height=1200) as page:
        page.on("dialog", lambda dialog: dialog.accept())
        login(page, server, "ops")
        page.click("nav.mainnav >> text=Gateway keys")
        expect(page.locator("h1")).to_have_text("Gateway keys")
        form = "#gateway-key-form"
        page.fill(f"{form} input[name=name]", "checkout")
        page.fill(f"{form} input[name=agents]", "tills, nobody")
        page.click(f"{form} button[type=submit]")
        agents_error = page.locator("label.invalid:has(input[name=agents]) .error")
        expect(agents_error).to_contain_text("No agent nobody in this team")
        expect(page.locator(f"{form} input[name=name]")).to_have_value("checkout")
        page.fill(f"{form} input[name=agents]", "tills")
        page.fill(f"{form} input[name=rate_per_s]", "0")
        page.click(f"{form} button[type=submit]")
        # Out of range: the browser itself refuses to send it (min=1 on the field).
        expect(page.locator(f"{form} input[name=rate_per_s]:invalid")).to_have_count(1)
        expect(page.locator(f"{form} input[name=agents]")).to_have_value("tills")
        assert not GatewayKey.objects.exists()

        page.fill(f"{form} input[name=rate_per_s]", "20")
        page.fill(f"{form} input[name=expires_in_days]", "30")
        page.click(f"{form} button[type=submit]")
        value = page.locator("[data-testid=key-value]")
        expect(value).to_contain_text("hgk_")
        key = GatewayKey.objects.get()
        assert value.inner_text().startswith(f"hgk_{key.prefix}_")
        assert key.agents == ["tills"] and key.rate_per_s == 20 and key.expires_at
        row = page.locator(f"tr[data-key='{key.pk}']")
        expect(row).to_contain_text("active")
        page.screenshot(path=str(ARTIFACTS / "gateway-keys.png"), full_page=True)
        page.reload()  # shown once: not on the page again
        expect(page.locator("[data-testid=key-value]")).to_have_count(0)
        page.click(f"[data-testid=revoke-{key.pk}]")
        expect(page.locator(f"tr[data-key='{key.pk}']")).to_contain_text("revoked")
        key.refresh_from_db()
        assert key.revoked_at is not None

    with new_page() as page:
        login(page, server, "watcher")
        page.goto(f"{server}/gateway/keys/")
        expect(page.locator(f"tr[data-key='{key.pk}']")).to_contain_text("checkout")
        expect(page.locator("#gateway-key-form")).to_have_count(0)
