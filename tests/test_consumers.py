"""The events websocket: session required, Origin checked, team-scoped."""
from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

from controlplane.asgi import application
from deployments.events import team_group

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
    """Closed with 4401 after the handshake, so that the page sees the code (a
    refused handshake reaches the browser as 1006, and the page would retry)."""
    communicator, connected, _ = await connect()
    assert connected
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close",
                                                            "code": 4401}


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
    # Events go to one group per team (none per deployment: no socket would join
    # it); its name is what Channels accepts, for any team id.
    assert team_group(255) == "team.ff"
    assert layer.require_valid_group_name(team_group(2**63 - 1))
    await viewer.disconnect()
    await outsider.disconnect()


def event(team_id, n=0):
    return {"type": "hangar.event", "event": "deployment.scaled", "team_id": team_id,
            "deployment_id": 7, "payload": {"replicas": n}}


async def test_team_changes_reach_open_sockets(in_memory_layer, world_async):
    """Access is re-checked while the socket is open: joining a team starts its
    events, leaving every team stops them all (the socket stays open: a user in
    no team is still signed in, and may be added to one again)."""
    from channels.layers import get_channel_layer

    from deployments.hub import hub
    from deployments.models import Membership

    layer = get_channel_layer()
    viewer_user = world_async.users["viewer"]
    viewer, connected, _ = await connect(viewer_user)
    assert connected
    await layer.group_send(team_group(world_async.other_team.pk), event(world_async.other_team.pk))
    assert await viewer.receive_nothing(timeout=0.3)

    await sync_to_async(Membership.objects.create)(team=world_async.other_team, user=viewer_user,
                                                   role="viewer")
    await hub().refresh_access()
    await layer.group_send(team_group(world_async.other_team.pk),
                           event(world_async.other_team.pk, 5))
    assert (await viewer.receive_json_from(timeout=2))["payload"] == {"replicas": 5}

    await sync_to_async(Membership.objects.filter(user=viewer_user).delete)()
    await hub().refresh_access()
    for team in (world_async.team, world_async.other_team):
        await layer.group_send(team_group(team.pk), event(team.pk))
    assert await viewer.receive_nothing(timeout=0.3)

    await sync_to_async(Membership.objects.create)(team=world_async.team, user=viewer_user,
                                                   role="viewer")
    await hub().refresh_access()
    await layer.group_send(team_group(world_async.team.pk), event(world_async.team.pk, 6))
    assert (await viewer.receive_json_from(timeout=2))["payload"] == {"replicas": 6}
    await viewer.disconnect()


async def down(*args, **kwargs):
    raise ConnectionError("redis is down")


@pytest.fixture
def quick_heartbeat(monkeypatch):
    from deployments import hub

    monkeypatch.setattr(hub, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(hub, "STALE_S", 0.5)


async def test_a_socket_joining_while_the_layer_is_down_is_told_and_resynced(
        in_memory_layer, world_async, monkeypatch, quick_heartbeat):
    """The channel layer fails when a socket connects: the socket is accepted
    all the same and told that live updates are interrupted; once the layer
    answers, the hub joins the team's group again and tells the page to re-sync,
    and events flow."""
    from channels.layers import get_channel_layer

    from deployments.hub import hub

    layer = get_channel_layer()
    with monkeypatch.context() as patch:
        patch.setattr(hub().layer, "group_add", down)
        viewer, connected, _ = await connect(world_async.users["viewer"])
        assert connected
        assert (await viewer.receive_json_from(timeout=2))["event"] == "live.interrupted"
        assert hub().interrupted
    assert (await viewer.receive_json_from(timeout=2))["event"] == "live.resumed"
    await layer.group_send(team_group(world_async.team.pk), event(world_async.team.pk, 4))
    assert (await viewer.receive_json_from(timeout=2))["payload"] == {"replicas": 4}
    await viewer.disconnect()


async def test_open_sockets_are_told_when_the_layer_goes_and_comes_back(
        in_memory_layer, world_async, monkeypatch, quick_heartbeat):
    """A heartbeat that cannot be sent interrupts live updates on every open
    socket; the first one echoed back resumes them (the page re-syncs)."""
    from deployments.hub import hub

    viewer, connected, _ = await connect(world_async.users["viewer"])
    operator, connected2, _ = await connect(world_async.users["operator"])
    assert connected and connected2
    assert await viewer.receive_nothing(timeout=0.3)  # heartbeats are not sent to pages
    with monkeypatch.context() as patch:
        patch.setattr(hub().layer, "send", down)
        for socket in (viewer, operator):
            assert (await socket.receive_json_from(timeout=2))["event"] == "live.interrupted"
        assert await viewer.receive_nothing(timeout=0.3)  # said once
    for socket in (viewer, operator):
        assert (await socket.receive_json_from(timeout=2))["event"] == "live.resumed"
    assert not hub().interrupted
    await viewer.disconnect()
    await operator.disconnect()


async def test_heartbeats_lost_on_the_way_interrupt_then_resync(
        in_memory_layer, world_async, monkeypatch, quick_heartbeat):
    """The layer takes every heartbeat but none comes back (the subscription is
    broken): after STALE_S the page is told; heartbeats echoed again, with a
    gap in their numbers, resume live updates."""
    from deployments.hub import hub

    async def swallowed(*args, **kwargs):
        return None

    viewer, connected, _ = await connect(world_async.users["viewer"])
    assert connected
    with monkeypatch.context() as patch:
        patch.setattr(hub().layer, "send", swallowed)
        assert (await viewer.receive_json_from(timeout=3))["event"] == "live.interrupted"
        sent = hub().sent
        assert sent > hub().heard
    assert (await viewer.receive_json_from(timeout=2))["event"] == "live.resumed"
    assert hub().heard > sent
    await viewer.disconnect()


async def test_leaving_while_the_layer_is_down_leaves_nothing_behind(
        in_memory_layer, world_async, monkeypatch):
    """Sockets close while the layer is down: neither the hub nor a writer task
    keeps them, and the hub stops."""
    from deployments.hub import hub

    viewer, connected, _ = await connect(world_async.users["viewer"])
    assert connected
    monkeypatch.setattr(hub().layer, "group_discard", down)
    monkeypatch.setattr(hub().layer, "send", down)
    await viewer.disconnect()
    assert hub().subscribers == set() and hub().by_team == {} and hub().tasks == []
    assert hub().channel is None and not hub().interrupted
    writers = [t for t in asyncio.all_tasks() if "_write" in repr(t.get_coro())]
    assert writers == []


async def test_a_deactivated_user_is_disconnected(in_memory_layer, world_async):
    from django.contrib.auth import get_user_model

    from deployments.hub import hub

    viewer, connected, _ = await connect(world_async.users["viewer"])
    operator, connected2, _ = await connect(world_async.users["operator"])
    assert connected and connected2
    await sync_to_async(get_user_model().objects.filter(username="viewer").update)(
        is_active=False)
    await hub().refresh_access()
    assert await viewer.receive_output(timeout=2) == {"type": "websocket.close", "code": 4403}
    assert await operator.receive_nothing(timeout=0.3)  # still connected, still served
    hub().dispatch(event(world_async.team.pk, 9))
    assert (await operator.receive_json_from(timeout=2))["payload"] == {"replicas": 9}
    await operator.disconnect()


async def test_a_socket_that_falls_behind_is_closed_not_buffered(in_memory_layer, world_async):
    """More than OUTBOX_SIZE events queued for one socket before it could send
    any: the backlog is dropped and the socket closed with 1013 (the page
    reconnects and re-fetches), while a socket that keeps up gets them all."""
    from deployments.hub import CLOSE_TOO_SLOW, OUTBOX_SIZE, hub

    viewer, connected, _ = await connect(world_async.users["viewer"])
    assert connected
    for n in range(OUTBOX_SIZE + 10):  # one loop turn: the writer cannot drain meanwhile
        hub().dispatch(event(world_async.team.pk, n))
    assert await viewer.receive_output(timeout=2) == {"type": "websocket.close",
                                                      "code": CLOSE_TOO_SLOW}

    other, connected, _ = await connect(world_async.users["operator"])
    assert connected
    for n in range(OUTBOX_SIZE + 10):
        hub().dispatch(event(world_async.team.pk, n))
        await asyncio.sleep(0)  # the writer sends as they come
    received = [(await other.receive_json_from(timeout=2))["payload"]["replicas"]
                for _ in range(OUTBOX_SIZE + 10)]
    assert received == list(range(OUTBOX_SIZE + 10))
    await other.disconnect()


async def test_ping_is_answered(in_memory_layer, world_async):
    viewer, connected, _ = await connect(world_async.users["viewer"])
    assert connected
    await viewer.send_to(text_data="not json")
    await viewer.send_json_to({"type": "ping"})
    assert (await viewer.receive_json_from(timeout=2))["event"] == "pong"
    await viewer.disconnect()


@pytest.fixture
def world_async(transactional_db):
    from .conftest import world as make_world

    return make_world.__wrapped__(transactional_db)


async def test_events_through_redis_are_coalesced_per_object(world_async):
    """Real Redis pub/sub layer: a burst for one deployment reaches the browser as
    a few messages, the last one carrying the final state."""
    from channels.layers import channel_layers
    from django.db import connection, transaction

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
        connection.close()  # this thread's connection would outlive the test database

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
