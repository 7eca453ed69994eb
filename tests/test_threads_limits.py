"""The threads API (#14) takes a caller's gateway limits, as /gw/ does: a key over
its concurrent requests or its requests per second is answered 429 with
Retry-After, through the real langgraph-sdk against the real gateway process."""
from __future__ import annotations

import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import APIStatusError

from deployments.audit import Actor
from gateway.actions import create_gateway_key

from .gateway_support import start_agent, start_gateway, wait_until
from .processes import database_env, free_port, stop
from .threads_support import Served, realtime, served_assistant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def served(django_db_setup, django_db_blocker, tmp_path_factory):
    logs = tmp_path_factory.mktemp("threads-limits")
    agent, port = start_agent("slow", logs / "slow.log", AGENT_TOKEN_DELAY_MS="100")
    gw_port = free_port()
    with django_db_blocker.unblock():
        env = database_env()
    gateway = start_gateway(gw_port, env, logs / "gateway.log", HANGAR_GATEWAY_REFRESH_S="0.3")
    yield Served(gateway=f"http://127.0.0.1:{gw_port}", agents={"slow": port}, logs=logs)
    for process in (gateway, agent):
        stop(process, timeout=10)


def key_client(world, served, **limits):
    _, plaintext = create_gateway_key(world.team, name="lg-limits", actor=Actor(
        user=world.users["operator"]), **limits)
    return get_sync_client(url=f"{served.gateway}/lg/acme", api_key=plaintext, timeout=30)


def refusal(call) -> APIStatusError | None:
    try:
        call()
    except APIStatusError as exc:
        if exc.status_code == 429:
            return exc
        raise
    return None


def test_a_caller_over_its_concurrent_requests_is_told_to_retry(world, served):
    realtime(world, served, "slow")
    other = key_client(world, served)  # another caller of the team, with the defaults
    served_assistant(other, "support-bot:production")
    tid = other.threads.create()["thread_id"]
    client = key_client(world, served, concurrent=1)
    parts = []
    # A streamed run holds the key's one slot while its answer streams.
    stream = client.runs.stream(tid, "support-bot:production", input="a long answer please",
                                stream_mode=["values"])
    parts.append(next(stream))
    refused = refusal(lambda: client.threads.get(tid))
    assert refused is not None, "a second request while one is in flight was served"
    assert refused.response.headers["retry-after"] == "1"
    assert "1 requests in flight" in str(refused.body)
    # Another caller of the team is not held back by this key's limit.
    assert other.threads.get(tid)["thread_id"] == tid
    parts += list(stream)
    assert parts[0].event == "metadata" and parts[-1].data["turns"] == 1
    # The slot is given back when the stream ends: the next request goes through.
    assert client.threads.get(tid)["status"] == "idle"


def test_a_caller_over_its_requests_per_second_is_told_to_retry(world, served):
    realtime(world, served, "slow")
    setup = key_client(world, served)
    served_assistant(setup, "support-bot:production")
    tid = setup.threads.create()["thread_id"]
    client = key_client(world, served, rate_per_s=2)
    refused = None
    for _ in range(20):  # two a second are served; a burst of calls runs into the limit
        refused = refusal(lambda: client.threads.get(tid))
        if refused is not None:
            break
    assert refused is not None, "20 calls in a row were all served at 2/s"
    assert refused.response.headers["retry-after"] == "1"
    assert "2 requests/s" in str(refused.body)
    # A later second serves the key again.
    wait_until(lambda: refusal(lambda: client.threads.get(tid)) is None,
               what="the next second's calls to be served")
