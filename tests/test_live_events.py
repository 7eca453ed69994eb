"""Typed live events: checked where published, one group per team, the relay
started with the web process, run announcements through the coalescer."""
from __future__ import annotations

import ast
import asyncio
import threading
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction

from deployments import events, relay
from deployments.events import (
    EVENTS,
    BudgetReverted,
    Coalescer,
    DeploymentHealth,
    Timeline,
    publish,
    team_group,
)
from deployments.models import Deployment, DeploymentEvent
from telemetry import storage

from .test_consumers import connect

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def in_memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def sent(monkeypatch):
    """The (group, message) pairs handed to the channel layer."""
    calls = []
    monkeypatch.setattr(events, "_send", lambda group, body: calls.append((group, body)))
    return calls


# Checked where published --------------------------------------------------------------


def test_every_event_name_has_one_dataclass_and_pages_listen_only_for_known_names():
    assert set(EVENTS) == {"deployment.health", "deployment.changed", "instances", "sample",
                           "timeline", "run.finished", "cost.tick", "budget.triggered",
                           "budget.reverted", "deadletters", "schedule.changed",
                           "job_run.changed", "rollout.changed"}
    assert all(EVENTS[name].name == name for name in EVENTS)
    listened = set()
    for template in (ROOT / "templates").rglob("*.html"):
        for node in template.read_text().split('data-live-events="')[1:]:
            listened.update(node.split('"', 1)[0].split())
    assert listened - {"*"} <= set(EVENTS), listened - set(EVENTS)


@pytest.mark.parametrize("name, payload, error", [
    ("deployment.scaled", {"replicas": 3}, "unknown live event 'deployment.scaled'"),
    ("deployment.health", {"health": "Healthy", "replicas": 3}, "is missing reason"),
    ("deployment.health", {"health": "Healthy", "reason": "", "replicas": 3, "x": 1},
     "has no field x"),
    ("deployment.health", {"health": "Healthy", "reason": "", "replicas": "3"}, "replicas='3'"),
    ("budget.reverted", {"budget_id": 1, "budget_event_id": 2, "restored": ["7"]}, "restored"),
])
def test_a_wrong_event_fails_where_it_is_published(sent, name, payload, error):
    with pytest.raises(ValueError, match=error):
        publish(1, name, payload, deployment_id=2)
    assert sent == []


def test_event_objects_check_their_fields_when_made():
    with pytest.raises(TypeError):
        DeploymentHealth(health="Healthy", reason="ok")  # replicas missing
    with pytest.raises(TypeError, match="replicas=True"):
        DeploymentHealth(health="Healthy", reason="ok", replicas=True)
    with pytest.raises(TypeError, match="an event object carries its own payload"):
        publish(1, Timeline(reason="Scaled", message="2 → 3"), {"reason": "x"})
    assert Timeline(reason="Scaled", message="2 → 3").payload == {
        "reason": "Scaled", "message": "2 → 3", "type": "Normal", "instance": ""}


def test_a_published_event_goes_once_to_its_team_group_after_commit(
        db, sent, in_memory_layer, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            publish(5, BudgetReverted(budget_id=1, budget_event_id=2, restored=[7]))
            publish(5, "timeline", {"reason": "Scaled", "message": "2 → 3"}, deployment_id=9)
        assert sent == []  # nothing before the commit
    assert sent == [
        (team_group(5), {"type": "hangar.event", "event": "budget.reverted", "team_id": 5,
                         "deployment_id": None,
                         "payload": {"budget_id": 1, "budget_event_id": 2, "restored": [7]}}),
        (team_group(5), {"type": "hangar.event", "event": "timeline", "team_id": 5,
                         "deployment_id": 9,
                         "payload": {"reason": "Scaled", "message": "2 → 3", "type": "Normal",
                                     "instance": ""}}),
    ]


# The relay starts with the web process --------------------------------------------------


async def lifespan_started():
    """Run the ASGI app's lifespan startup as uvicorn does; returns the shutdown."""
    from controlplane.asgi import application

    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(application({"type": "lifespan", "asgi": {"version": "3.0"}},
                                           inbox.get, outbox.put))
    assert (await asyncio.wait_for(outbox.get(), 5))["type"] == "lifespan.startup.complete"

    async def shutdown():
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await asyncio.wait_for(outbox.get(), 5))["type"] == \
            "lifespan.shutdown.complete"
        await task

    return shutdown


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_relay_runs_from_startup_and_turns_worker_writes_into_events(
        in_memory_layer, settings, world_async):
    """Standalone: the worker is another process with no channel layer to the web
    process; what it writes reaches open pages as typed events, relayed by a task
    the web process started (not the first socket)."""
    settings.STANDALONE = True
    viewer, connected, _ = await connect(world_async.users["viewer"])
    assert connected
    assert relay._task is None  # a socket does not start it
    shutdown = await lifespan_started()
    try:
        assert relay._task is not None and not relay._task.done()
        await asyncio.sleep(relay.INTERVAL_S * 1.5)  # its first tick marks the start
        deployment = world_async.deployment

        def worker_writes():
            Deployment.objects.filter(pk=deployment.pk).update(replicas=4)
            Deployment.objects.get(pk=deployment.pk).save(update_fields=["updated_at"])
            DeploymentEvent.objects.create(deployment_id=deployment.pk, reason="Scaled",
                                           message="2 → 4")

        await sync_to_async(worker_writes)()
        received = {}
        while len(received) < 2:
            message = await viewer.receive_json_from(timeout=5)
            received[message["event"]] = message
        assert received["deployment.changed"]["payload"]["replicas"] == 4
        assert received["deployment.changed"]["deployment_id"] == deployment.pk
        assert received["timeline"]["payload"]["message"] == "2 → 4"
    finally:
        await shutdown()
        await viewer.disconnect()
    assert relay._task is None


@pytest.fixture
def world_async(transactional_db):
    from .conftest import world as make_world

    return make_world.__wrapped__(transactional_db)


# Run announcements go through the coalescer ----------------------------------------------


def test_run_announcements_share_the_events_coalescer(monkeypatch):
    """A burst of finished runs for one deployment: the latest run is announced,
    off the caller's thread, a few times at most; another deployment is not held up."""
    announced = []
    done = threading.Event()

    def announce(team_id, deployment_id):
        announced.append((deployment_id, threading.current_thread().name))
        if deployment_id == 2:
            done.set()

    monkeypatch.setattr(storage.live, "_announce", announce)
    announcer = storage.RunAnnouncer(window=0.5)
    assert isinstance(announcer.coalescer, Coalescer) and not announcer.coalescer.inline
    for _ in range(50):
        announcer.finished(1, 1)
    announcer.finished(1, 2)
    assert done.wait(5)
    caller = threading.current_thread().name
    assert all(thread != caller for _, thread in announced)
    assert [d for d, _ in announced].count(2) == 1
    assert 1 <= [d for d, _ in announced].count(1) <= 2


# Telemetry uses deployments' public names only --------------------------------------------


def test_telemetry_imports_no_private_name_of_deployments():
    offenders = []
    for path in (ROOT / "telemetry").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "deployments"):
                if node.module == "deployments.views":
                    offenders.append(f"{path.name}: imports deployments.views")
                offenders += [f"{path.name}: {node.module}.{alias.name}"
                              for alias in node.names if alias.name.startswith("_")]
    assert offenders == []
