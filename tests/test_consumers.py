"""The events websocket: session required, Origin checked, team-scoped."""
from __future__ import annotations

import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

from controlplane.asgi import application
from deployments.events import deployment_group, team_group

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def in_memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def session_cookie(user) -> str:
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return f"sessionid={store.session_key}"


async def connect(user=None, origin=b"http://127.0.0.1"):
    headers = [(b"origin", origin), (b"host", b"127.0.0.1")]
    if user is not None:
        cookie = await sync_to_async(session_cookie)(user)
        headers.append((b"cookie", cookie.encode()))
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def test_anonymous_is_rejected(in_memory_layer):
    communicator, connected, code = await connect()
    assert not connected and code == 4401


async def test_foreign_origin_is_rejected(in_memory_layer, world_async):
    communicator, connected, _ = await connect(world_async.users["viewer"],
                                               origin=b"http://evil.example")
    assert not connected


async def test_viewer_receives_its_team_events_and_outsider_nothing(in_memory_layer, world_async):
    from channels.layers import get_channel_layer

    viewer, ok1, _ = await connect(world_async.users["viewer"])
    outsider, ok2, _ = await connect(world_async.users["outsider"])
    assert ok1 and ok2
    layer = get_channel_layer()
    message = {"type": "hangar.event", "event": "deployment.scaled",
               "team_id": world_async.team.pk, "deployment_id": 7, "payload": {"replicas": 3}}
    await layer.group_send(team_group(world_async.team.pk), message)
    assert await viewer.receive_json_from(timeout=2) == {
        "event": "deployment.scaled", "deployment_id": 7, "payload": {"replicas": 3}}
    assert await outsider.receive_nothing(timeout=0.3)
    # Even a message wrongly routed to the outsider's channel is dropped by the re-check.
    await layer.group_send(team_group(world_async.other_team.pk), message)
    assert await outsider.receive_nothing(timeout=0.3)
    assert deployment_group(255) == "deployment.ff"
    await viewer.disconnect()
    await outsider.disconnect()


@pytest.fixture
def world_async(transactional_db):
    from .conftest import world as make_world

    return make_world.__wrapped__(transactional_db)


async def test_events_through_redis_are_coalesced_per_object(world_async):
    """Real Redis pub/sub layer: a burst for one deployment reaches the browser as
    a few messages, the last one carrying the final state."""
    from channels.layers import channel_layers
    from django.db import transaction

    from deployments.events import publish

    channel_layers.backends.clear()
    viewer, connected, _ = await connect(world_async.users["viewer"])
    assert connected
    team_id, deployment_id = world_async.team.pk, world_async.deployment.pk

    def burst():
        for n in range(40):
            with transaction.atomic():
                publish(team_id, "deployment.health",
                        {"health": "Progressing", "reason": f"step {n}", "replicas": 3},
                        deployment_id=deployment_id)
            time.sleep(0.005)
        with transaction.atomic():
            publish(team_id, "deployment.health",
                    {"health": "Healthy", "reason": "final", "replicas": 3},
                    deployment_id=deployment_id)

    await sync_to_async(burst)()
    received = []
    while not await viewer.receive_nothing(timeout=1.5, interval=0.05):
        received.append(await viewer.receive_json_from(timeout=1))
    await viewer.disconnect()
    channel_layers.backends.clear()
    health = [m for m in received if m["event"] == "deployment.health"]
    assert 1 <= len(health) <= 4, len(health)  # 41 published within ~0.3 s
    assert health[-1]["payload"]["reason"] == "final"
    assert health[-1]["deployment_id"] == deployment_id
