"""WebSocket pass-through (#13 point 3) with a real client (``websockets``)
against a real gateway process and reference agents: the caller's key checked
before the upgrade, text and binary both ways, close codes passed in both
directions, the session counted in flight, limits, a refusal by the agent, and
a replica that leaves closing its sessions with 1012 so clients reconnect."""
from __future__ import annotations

import json

import pytest
import redis
from django.conf import settings
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from deployments.events import Instances, publish
from deployments.models import Instance

from .gateway_support import ready_instance, wait_until
from .test_gateway import bearer, procs  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def ws_url(gateway: str, path: str = "ws", agent: str = "support-bot") -> str:
    return gateway.replace("http://", "ws://") + f"/gw/acme/{agent}/production/{path}"


def refused(url: str, headers: dict | None = None) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as caught:
        connect(url, additional_headers=headers, proxy=None, open_timeout=10)
    response = caught.value.response
    return response.status_code, json.loads(response.body)["detail"]


def inflight(deployment) -> int:
    store = redis.Redis.from_url(settings.REDIS_URL)
    return sum(int(v) for key in store.scan_iter(match=f"gw:inflight:{deployment.pk}:*")
               for v in store.hgetall(key).values())


def test_a_websocket_passes_both_ways_with_its_close_codes(world, procs):  # noqa: F811
    _, port = procs.agent("bot-1")
    ready_instance(world.deployment, "bot-1", port)
    gateway = procs.gateway()
    url, headers = ws_url(gateway), bearer(world)

    # The caller's key is checked before the upgrade: plain HTTP answers, with reasons.
    assert refused(url)[0] == 401
    assert refused(url, {"Authorization": "Bearer hgr_nothing_here"})[0] == 401
    assert refused(url, bearer(world, "outsider", world.other_team))[0] == 404
    status, detail = refused(ws_url(gateway, agent="nobody"), headers)
    assert status == 404 and "acme/nobody/production" in detail
    status, detail = refused(ws_url(gateway, path="nope"), headers)  # the agent's own 404
    assert status == 404 and "bot-1 refused the WebSocket: 404" in detail

    with connect(url, additional_headers=headers, proxy=None) as ws:
        assert ws.response.headers["x-hangar-replica"] == "bot-1"
        ws.send("hello there")
        assert ws.recv(timeout=10) == "hello there"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv(timeout=10) == b"\x00\x01binary\xff"
        ws.send(json.dumps({"input": "one two three"}))
        messages = [json.loads(ws.recv(timeout=10))]
        while messages[-1].get("event") != "done":
            messages.append(json.loads(ws.recv(timeout=10)))
        tokens = [m["token"] for m in messages[:-1]]
        assert tokens and " ".join(tokens) == messages[-1]["output"]
        # The open session is a request in flight on its replica (the page's figure).
        wait_until(lambda: inflight(world.deployment) == 1, what="the session in flight")
        ws.close(code=4001, reason="bye from the client")
    wait_until(lambda: "ws closed by the peer: 4001 bye from the client" in procs.log("bot-1"),
               what="the agent to get the client's close code")
    wait_until(lambda: inflight(world.deployment) == 0, what="the session to end")

    with connect(url, additional_headers=headers, proxy=None) as ws:
        ws.send(json.dumps({"close": 4002, "reason": "the agent is done"}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4002, "the agent is done")


def test_websockets_count_against_the_callers_concurrency(world, procs):  # noqa: F811
    _, port = procs.agent("bot-1")
    ready_instance(world.deployment, "bot-1", port)
    gateway = procs.gateway(HANGAR_GATEWAY_CONCURRENT="1")
    url, headers = ws_url(gateway), bearer(world)
    with connect(url, additional_headers=headers, proxy=None) as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        status, detail = refused(url, headers)
        assert status == 429 and "requests in flight" in detail

    def opens() -> bool:
        try:
            with connect(url, additional_headers=headers, proxy=None):
                pass
        except InvalidStatus:
            return False
        return True
    wait_until(opens, what="the slot back after the session ended")


def test_a_replica_that_leaves_closes_its_sessions_so_clients_reconnect(world,
                                                                        procs):  # noqa: F811
    ports = {name: procs.agent(name)[1] for name in ("bot-1", "bot-2")}
    rows = {name: ready_instance(world.deployment, name, port) for name, port in ports.items()}
    gateway = procs.gateway(HANGAR_GATEWAY_WS_DRAIN_S="0.5")
    url, headers = ws_url(gateway), bearer(world)
    with connect(url, additional_headers=headers, proxy=None) as ws:
        first = ws.response.headers["x-hangar-replica"]
        ws.send("still there?")
        assert ws.recv(timeout=10) == "still there?"
        # The reconciler drains it (out of the gateway's choices) before removing it.
        Instance.objects.filter(pk=rows[first].pk).update(health="Progressing",
                                                          health_reason="draining")
        publish(world.team.pk, Instances(), deployment_id=world.deployment.pk)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1012 and first in closed.value.rcvd.reason
    with connect(url, additional_headers=headers, proxy=None) as again:
        assert again.response.headers["x-hangar-replica"] != first
        again.send("hello")
        assert again.recv(timeout=10) == "hello"
