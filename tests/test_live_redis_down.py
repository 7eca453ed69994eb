"""Live pages while Redis (the channel layer) is down, with a redis-server of
the test's own stopped and started again: open pages are told that live
updates are interrupted ("Reconnecting…"), and once Redis is back they re-sync
and show what changed meanwhile, without a reload."""
from __future__ import annotations

import pytest
import requests
from asgiref.sync import sync_to_async
from channels.layers import channel_layers, get_channel_layer

from deployments.events import team_group
from deployments.models import Deployment

from .browser_support import ARTIFACTS, new_page
from .processes import database_env, free_port, start_web, stop, wait_for
from .test_consumers import connect, event, world_async  # noqa: F401 - a fixture
from .test_redis_down import PASSWORD, local_world, own_redis  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis_layer(settings, own_redis):  # noqa: F811 - the imported fixture
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [own_redis.url]}}}
    channel_layers.backends.clear()
    yield own_redis
    channel_layers.backends.clear()


@pytest.mark.asyncio
async def test_the_hub_on_a_real_redis_that_stops_and_starts(redis_layer, world_async):  # noqa: F811
    """Sockets open before the stop and one opened during it (its team's group
    cannot be joined then) are told; after the start all are told to re-sync
    and both teams' events reach them."""
    viewer, connected, _ = await connect(world_async.users["viewer"])
    assert connected
    await sync_to_async(redis_layer.stop)()
    assert (await viewer.receive_json_from(timeout=10))["event"] == "live.interrupted"

    # The outsider reads only the other team, whose group nobody joined yet.
    late, connected, _ = await connect(world_async.users["outsider"])
    assert connected
    assert (await late.receive_json_from(timeout=10))["event"] == "live.interrupted"

    await sync_to_async(redis_layer.start)()
    for socket in (viewer, late):
        assert (await socket.receive_json_from(timeout=20))["event"] == "live.resumed"
    layer = get_channel_layer()
    for team in (world_async.team, world_async.other_team):
        await layer.group_send(team_group(team.pk), event(team.pk, team.pk))
    assert (await viewer.receive_json_from(timeout=5))["payload"] == {
        "replicas": world_async.team.pk}
    assert (await late.receive_json_from(timeout=5))["payload"] == {
        "replicas": world_async.other_team.pk}
    await viewer.disconnect()
    await late.disconnect()


@pytest.fixture
def page():
    with new_page(height=900, timeout_ms=15_000) as found:
        yield found


def test_the_deployment_page_says_reconnecting_and_shows_a_change_made_meanwhile(
        own_redis, local_world, tmp_path, page):  # noqa: F811 - the imported fixtures
    from playwright.sync_api import expect

    deployment = local_world["deployment"]
    port, web_log = free_port(), tmp_path / "web.log"
    base = f"http://127.0.0.1:{port}"
    web = start_web(port, database_env(REDIS_URL=own_redis.url), web_log)
    try:
        wait_for(f"{base}/healthz", web, web_log)
        page.goto(f"{base}/login/")
        page.fill("input[name=username]", "ops")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/login/" not in url)
        page.goto(f"{base}/deployments/{deployment.pk}/")
        status = page.locator("#live-status")
        desired = page.locator("#deployment-status [data-testid=desired]")
        expect(status).to_have_text("Live")
        expect(desired).to_have_text("0")
        page.evaluate("window.__sameDocument = true")

        own_redis.stop()
        expect(status).to_have_text("Reconnecting…")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "redis-down-reconnecting.png"), full_page=True)

        # Another client scales the deployment while Redis is down: committed,
        # its live event lost.
        patched = requests.patch(
            f"{base}/api/v1/deployments/{deployment.pk}", json={"replicas": 3},
            headers={"Authorization": f"Bearer {local_world['token']}"}, timeout=30)
        assert patched.status_code == 200, patched.text[:2000]
        assert Deployment.objects.get(pk=deployment.pk).replicas == 3
        expect(status).to_have_text("Reconnecting…")

        own_redis.start()
        expect(status).to_have_text("Live", timeout=30_000)
        expect(desired).to_have_text("3")
        assert page.evaluate("window.__sameDocument") is True  # never reloaded
        page.screenshot(path=str(ARTIFACTS / "redis-back-resynced.png"), full_page=True)
        log = web_log.read_text()
        assert "live updates are interrupted" in log and "sockets re-sync" in log
    finally:
        stop(web)
