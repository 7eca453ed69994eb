"""Following an instance's log under ASGI: lines and heartbeats arrive as
Server-Sent Events, and a client that goes away ends the stream and its reader
thread without waiting for the next log line."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.core.asgi import get_asgi_application

from deployments import actions, logs
from deployments.audit import Actor
from deployments.models import Instance

from .factories import DeploymentFactory, MembershipFactory, TargetFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hangar-log-follow"]


@pytest.fixture
def followed(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "HEARTBEAT_S", 0.3)
    target = TargetFactory(kind="local", connection={"workdir": str(tmp_path)})
    deployment = DeploymentFactory(agent__team=target.team, target=target)
    Instance.objects.create(deployment=deployment, target=target, name="web-1", phase="running")
    output = tmp_path / f"deployment-{deployment.pk}" / "web-1" / "output.log"
    output.parent.mkdir(parents=True)
    output.write_text("old line\nlast line before\n")
    user = UserFactory(username="follower")
    MembershipFactory(team=target.team, user=user, role="viewer")
    _, token = actions.create_token(target.team, name="logs", scope="read", expires_at=None,
                                    actor=Actor(user=user))
    path = f"/api/v1/deployments/{deployment.pk}/instances/web-1/logs"
    return path, token, output


def scope(path: str, token: str) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"follow=true&tail=1",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
    }


@pytest.mark.asyncio
async def test_follow_streams_lines_and_heartbeats_and_stops_when_the_client_leaves(followed):
    path, token, output = followed
    before = len(readers())
    gone = asyncio.Event()
    requested = False
    start: dict = {}
    events: list[str] = []

    async def receive():
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            start.update(message)
            return
        chunk = message.get("body", b"").decode()
        if chunk:
            events.append(chunk)
        if chunk == logs.HEARTBEAT and "data: \"new line\"\n\n" not in events:
            output.open("a").write("new line\n")
        if "data: \"new line\"\n\n" in events and events.count(logs.HEARTBEAT) >= 2:
            gone.set()  # the browser tab is closed

    await asyncio.wait_for(get_asgi_application()(scope(path, token), receive, send), 20)

    assert start["status"] == 200
    assert dict(start["headers"])[b"Content-Type"] == b"text/event-stream"
    assert events[0] == logs.FOLLOWING
    assert events[1] == 'data: "last line before"\n\n'
    assert 'data: "new line"\n\n' in events
    assert events.count(logs.HEARTBEAT) >= 2
    assert logs.END not in events  # it was the client who left
    # No reader is left behind waiting for a line that may never come.
    deadline = time.monotonic() + 10
    while len(readers()) > before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(readers()) == before
