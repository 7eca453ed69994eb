"""The real-time gateway (#13) as it is served: its own uvicorn process in front
of reference agents running as real processes on loopback, on this run's
PostgreSQL and Redis. Routing, bad input, balancing, passive health, retries,
streaming both ways, client disconnects, limits across two gateway processes,
revoked tokens and live endpoint updates."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from collections import Counter

import pytest
import requests

from deployments import actions
from deployments.audit import Actor
from deployments.events import Instances, publish
from deployments.models import Instance

from .factories import AgentFactory, DeploymentFactory, VersionFactory
from .gateway_support import ready_instance, serves, start_agent, start_gateway, wait_until
from .processes import database_env, free_port, stop

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


class Processes:
    def __init__(self, tmp_path):
        self.tmp_path, self.started = tmp_path, []

    def gateway(self, **env: str) -> str:
        port = free_port()
        base = {"HANGAR_GATEWAY_REFRESH_S": "0.3", "HANGAR_GATEWAY_TRACE_WAIT_S": "0.5"}
        process = start_gateway(port, database_env(), self.tmp_path / f"gateway-{port}.log",
                                **{**base, **env})
        self.started.append(process)
        return f"http://127.0.0.1:{port}"

    def agent(self, name: str, **env: str):
        process, port = start_agent(name, self.tmp_path / f"{name}.log", **env)
        self.started.append(process)
        return process, port

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()


@pytest.fixture
def procs(tmp_path):
    found = Processes(tmp_path)
    yield found
    for process in found.started:
        stop(process, timeout=10)


def bearer(world, who: str = "operator", team=None) -> dict:
    _, plaintext = actions.create_token(team or world.team, name=f"gw-{who}", scope="read",
                                        expires_at=None, actor=Actor(user=world.users[who]))
    return {"Authorization": f"Bearer {plaintext}"}


@pytest.fixture
def one_replica(world, procs):
    _, port = procs.agent("bot-1")
    ready_instance(world.deployment, "bot-1", port)
    return port


def test_one_url_reaches_the_replica_and_bad_input_is_answered_clearly(world, procs,
                                                                        one_replica):
    gateway = procs.gateway(HANGAR_GATEWAY_MAX_BODY="4096")
    url = f"{gateway}/gw/acme/support-bot/production/invoke"
    headers = bearer(world)
    answer = requests.post(url, json={"input": "hello there"}, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["instance"] == "bot-1" and answer.json()["output"]
    assert answer.headers["x-hangar-replica"] == "bot-1"
    # the gateway's own Date and Server, not the agent's as well
    assert [len(answer.raw.headers.getlist(h)) for h in ("date", "server")] == [1, 1]

    def detail(response):
        return response.json()["detail"]

    unknown = requests.post(f"{gateway}/gw/acme/nobody/production/invoke", json={},
                            headers=headers, timeout=10)
    assert unknown.status_code == 404 and "acme/nobody/production" in detail(unknown)
    # Another team's deployment looks exactly like an unknown one, with either token.
    foreign = requests.post(f"{gateway}/gw/umbrella/foreign/production/invoke", json={},
                            headers=headers, timeout=10)
    assert foreign.status_code == 404
    outsider = requests.post(url, json={"input": "x"}, timeout=10,
                             headers=bearer(world, "outsider", world.other_team))
    assert outsider.status_code == 404
    anonymous = requests.post(url, json={"input": "x"}, timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    wrong = requests.post(url, json={"input": "x"}, timeout=10,
                          headers={"Authorization": "Bearer hgr_nothing_here"})
    assert wrong.status_code == 401
    assert requests.get(f"{gateway}/gw/acme", headers=headers, timeout=10).status_code == 404

    batch_agent = AgentFactory(team=world.team, slug="nightly", pattern="batch")
    DeploymentFactory(agent=batch_agent, target=world.target)
    nightly = f"{gateway}/gw/acme/nightly/production/run"
    wait_until(lambda: requests.post(nightly, json={}, headers=headers, timeout=10)
               .status_code != 404, what="the batch deployment in the table")
    conflict = requests.post(nightly, json={}, headers=headers, timeout=10)
    assert conflict.status_code == 409
    assert "batch deployment" in detail(conflict) and "real-time" in detail(conflict)

    too_big = requests.post(url, data=b"x" * 5000, headers=headers, timeout=10)
    assert too_big.status_code == 413 and "4096 bytes" in detail(too_big)

    def chunks():
        for _ in range(10):
            yield b"y" * 1000
    streamed = requests.post(url, data=chunks(), headers=headers, timeout=10)
    assert streamed.status_code == 413
    # Nothing was lost: the replica still answers.
    assert requests.post(url, json={"input": "still here"}, headers=headers,
                         timeout=10).status_code == 200


def test_least_outstanding_sends_fewer_requests_to_the_slow_replica(world, procs):
    for name, latency in (("bot-1", "0"), ("bot-2", "0"), ("bot-slow", "400")):
        _, port = procs.agent(name, AGENT_LATENCY_MS=latency)
        ready_instance(world.deployment, name, port)
    gateway = procs.gateway()
    url = f"{gateway}/gw/acme/support-bot/production/invoke"
    headers = bearer(world)
    wait_until(lambda: serves(url, headers), what="the gateway to serve")
    seen: Counter = Counter()
    lock = threading.Lock()

    def client():
        with requests.Session() as session:
            for _ in range(15):
                answer = session.post(url, json={"input": "hi"}, headers=headers, timeout=30)
                assert answer.status_code == 200
                with lock:
                    seen[answer.headers["x-hangar-replica"]] += 1

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(seen.values()) == 90
    assert seen["bot-slow"] < seen["bot-1"] and seen["bot-slow"] < seen["bot-2"], seen


def test_a_refused_connection_is_retried_on_another_replica_and_ejected(world, procs,
                                                                       one_replica):
    dead_port = free_port()  # nothing listens here
    ready_instance(world.deployment, "bot-dead", dead_port)
    gateway = procs.gateway(HANGAR_GATEWAY_EJECT_S="600")
    url = f"{gateway}/gw/acme/support-bot/production/invoke"
    headers = bearer(world)
    wait_until(lambda: serves(url, headers), what="the gateway to serve")
    answers = [requests.post(url, json={"input": f"n{i}"}, headers=headers, timeout=10)
               for i in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert {a.headers["x-hangar-replica"] for a in answers} == {"bot-1"}


def test_a_replica_killed_mid_request_fails_only_its_requests_with_a_reason(world, procs):
    victim, victim_port = procs.agent("bot-victim", AGENT_LATENCY_MS="3000")
    _, port = procs.agent("bot-ok")
    ready_instance(world.deployment, "bot-ok", port)
    ready_instance(world.deployment, "bot-victim", victim_port)
    gateway = procs.gateway(HANGAR_GATEWAY_EJECT_S="600")
    url = f"{gateway}/gw/acme/support-bot/production/invoke"
    headers = bearer(world)
    wait_until(lambda: serves(url, headers, "bot-ok"), what="the gateway to serve")
    results = []

    def call():
        results.append(requests.post(url, json={"input": "slow"}, headers=headers, timeout=30))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: requests.get(f"http://127.0.0.1:{victim_port}/healthz",
                                    timeout=5).json()["inflight"] >= 1,
               what="a request in flight on the victim")
    os.killpg(victim.pid, signal.SIGKILL)
    for t in threads:
        t.join()
    failed = [r for r in results if r.status_code != 200]
    assert failed, "the victim's in-flight request must fail"
    for r in failed:
        assert r.status_code == 502 and "bot-victim" in r.json()["detail"]
    assert all(r.headers["x-hangar-replica"] == "bot-ok" for r in results
               if r.status_code == 200)
    # No new request reaches it: every one after the kill is answered by bot-ok.
    after = [requests.post(url, json={"input": "next"}, headers=headers, timeout=10)
             for _ in range(10)]
    assert [(a.status_code, a.headers.get("x-hangar-replica")) for a in after] == \
        [(200, "bot-ok")] * 10


def sse_events(response):
    """Parsed ``data:`` payloads of an SSE response, as they arrive."""
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            yield json.loads(line[6:])


def test_sse_streams_through_unbuffered_and_intact(world, procs):
    _, port = procs.agent("bot-1", AGENT_TOKEN_DELAY_MS="150")
    ready_instance(world.deployment, "bot-1", port)
    gateway = procs.gateway()
    url = f"{gateway}/gw/acme/support-bot/production/invoke/stream"
    headers = bearer(world)
    wait_until(lambda: serves(url.removesuffix("/stream"), headers), what="the gateway")
    words = " ".join(f"word{i}" for i in range(40))
    with requests.post(url, json={"input": words}, headers=headers, stream=True,
                       timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        first = next(events)
        # The first token is here while the agent is still writing the rest.
        assert "token" in first
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()[
            "inflight"] == 1
        rest = list(events)
    tokens = [first] + [e for e in rest if "token" in e]
    done = rest[-1]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert len(tokens) == done["usage"]["output_tokens"]
    assert " ".join(t["token"] for t in tokens) == done["output"]


def test_a_client_that_goes_away_cancels_the_upstream_request(world, procs):
    _, port = procs.agent("bot-1", AGENT_TOKEN_DELAY_MS="200")
    ready_instance(world.deployment, "bot-1", port)
    gateway = procs.gateway()
    host, gw_port = gateway.removeprefix("http://").split(":")
    headers = bearer(world)
    wait_until(lambda: serves(f"{gateway}/gw/acme/support-bot/production/invoke", headers),
               what="the gateway")
    body = json.dumps({"input": " ".join(f"w{i}" for i in range(200))}).encode()
    sock = socket.create_connection((host, int(gw_port)))
    sock.sendall(b"POST /gw/acme/support-bot/production/invoke/stream HTTP/1.1\r\n"
                 b"Host: gw\r\nContent-Type: application/json\r\n"
                 + f"Authorization: {headers['Authorization']}\r\n".encode()
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b"data: " not in received:
        received += sock.recv(4096)
    assert b"200" in received.split(b"\r\n", 1)[0]
    sock.close()
    # The agent sees its stream's reader go away long before 200 tokens are written.
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()[
        "inflight"] == 0, what="the upstream request to end")
    assert "client went away" in procs.log("bot-1")


def test_limits_hold_across_two_gateway_processes(world, procs):
    _, port = procs.agent("bot-1", AGENT_LATENCY_MS="1500")
    ready_instance(world.deployment, "bot-1", port)
    limits = {"HANGAR_GATEWAY_CONCURRENT": "2"}
    first, second = procs.gateway(**limits), procs.gateway(**limits)
    path = "/gw/acme/support-bot/production/invoke"
    headers = bearer(world)
    wait_until(lambda: serves(first + path, headers), what="the first gateway")
    wait_until(lambda: serves(second + path, headers), what="the second gateway")
    results = []

    def call(base):
        results.append(requests.post(base + path, json={"input": "x"}, headers=headers,
                                     timeout=30))

    threads = [threading.Thread(target=call, args=(b,)) for b in (first, second)]
    for t in threads:
        t.start()
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()[
        "inflight"] == 2, what="two requests in flight")
    refused = requests.post(first + path, json={"input": "x"}, headers=headers, timeout=10)
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "2 requests in flight" in refused.json()["detail"]
    # The slots are given back: the next one goes through.
    assert requests.post(second + path, json={"input": "x"}, headers=headers,
                         timeout=30).status_code == 200


def test_requests_per_second_are_limited_across_gateways(world, procs, one_replica):
    limits = {"HANGAR_GATEWAY_RATE_PER_S": "3"}
    first, second = procs.gateway(**limits), procs.gateway(**limits)
    path = "/gw/acme/support-bot/production/invoke"
    headers = bearer(world)
    wait_until(lambda: serves(first + path, headers), what="the first gateway")
    wait_until(lambda: serves(second + path, headers), what="the second gateway")
    statuses = []
    threads = [threading.Thread(target=lambda b=b: statuses.append(requests.post(
        b + path, json={"input": "x"}, headers=headers, timeout=10))) for b in
        [first, second] * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = Counter(r.status_code for r in statuses)
    assert codes[429] >= 1 and set(codes) == {200, 429}, codes
    assert all(r.headers["retry-after"] == "1" for r in statuses if r.status_code == 429)


def test_the_deployment_concurrency_limit_answers_429(world, procs):
    version = VersionFactory(agent=world.agent, number=3, pattern_settings={"concurrency": 1})
    world.deployment.version = version
    world.deployment.save(update_fields=["version"])
    _, port = procs.agent("bot-1", AGENT_LATENCY_MS="1500")
    ready_instance(world.deployment, "bot-1", port)
    gateway = procs.gateway()
    url = f"{gateway}/gw/acme/support-bot/production/invoke"
    headers = bearer(world)
    wait_until(lambda: serves(url, headers), what="the gateway")
    thread = threading.Thread(target=lambda: requests.post(url, json={"input": "x"},
                                                           headers=headers, timeout=30))
    thread.start()
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()[
        "inflight"] == 1, what="one request in flight")
    refused = requests.post(url, json={"input": "x"}, headers=bearer(world, "admin"), timeout=10)
    thread.join()
    assert refused.status_code == 429 and "concurrency limit" in refused.json()["detail"]


def test_a_revoked_token_is_refused(world, procs, one_replica):
    gateway = procs.gateway(HANGAR_GATEWAY_AUTH_TTL_S="0.2")
    url = f"{gateway}/gw/acme/support-bot/production/invoke"
    token, plaintext = actions.create_token(world.team, name="caller", scope="read",
                                            expires_at=None,
                                            actor=Actor(user=world.users["admin"]))
    headers = {"Authorization": f"Bearer {plaintext}"}
    assert requests.post(url, json={"input": "x"}, headers=headers, timeout=10).status_code \
        == 200
    actions.revoke_token(token, actor=Actor(user=world.users["admin"]))
    wait_until(lambda: requests.post(url, json={"input": "x"}, headers=headers,
                                     timeout=10).status_code == 401, what="401")


def test_endpoints_follow_live_events_without_a_query_per_request(world, procs):
    _, port = procs.agent("bot-1")
    ready_instance(world.deployment, "bot-1", port)
    # No periodic reload: only live events change the table.
    gateway = procs.gateway(HANGAR_GATEWAY_REFRESH_S="3600")
    url = f"{gateway}/gw/acme/support-bot/production/invoke"
    headers = bearer(world)
    assert serves(url, headers, "bot-1")
    _, port2 = procs.agent("bot-2")
    ready_instance(world.deployment, "bot-2", port2)  # publishes "instances"
    wait_until(lambda: serves(url, headers, "bot-2"), what="the new replica to get requests")
    Instance.objects.filter(deployment=world.deployment, name="bot-1").delete()
    publish(world.team.pk, Instances(), deployment_id=world.deployment.pk)

    def only_bot_2():
        replies = [requests.post(url, json={"input": "x"}, headers=headers, timeout=10)
                   for _ in range(6)]
        return all(r.headers.get("x-hangar-replica") == "bot-2" for r in replies)
    wait_until(only_bot_2, what="the removed replica to get no requests")


def test_with_redis_unreachable_the_limits_fail_open_and_say_so(world, procs, one_replica,
                                                                 tmp_path):
    from .test_redis_down import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    try:
        gateway = procs.gateway(REDIS_URL=server.url, HANGAR_GATEWAY_RATE_PER_S="2",
                                HANGAR_GATEWAY_CONCURRENT="5")
        url = f"{gateway}/gw/acme/support-bot/production/invoke"
        headers = bearer(world)
        wait_until(lambda: serves(url, headers), what="the gateway to serve")
        # Redis up: the caller's 2 requests/s hold.
        burst = [requests.post(url, json={"input": "x"}, headers=headers, timeout=10)
                 for _ in range(6)]
        assert 429 in {a.status_code for a in burst}
        server.stop()  # by its pid: the gateway's Redis is gone
        after = [requests.post(url, json={"input": f"n{i}"}, headers=headers, timeout=30)
                 for i in range(8)]
    finally:
        server.stop()
    # Fail open: every request is proxied to the agent, none refused.
    assert [a.status_code for a in after] == [200] * 8
    assert {a.headers["x-hangar-replica"] for a in after} == {"bot-1"}
    log = procs.log(f"gateway-{gateway.rsplit(':', 1)[1]}")
    assert log.count("limits not enforced") == 1  # said once, not once a request


class RawReplica:
    """A replica speaking raw HTTP on loopback, for what a reference agent never
    does: it records each request's head, and answers ``answer`` to each
    (``read_body=False``: it answers at once and never reads the body)."""

    def __init__(self, answer: bytes, *, read_body: bool = True):
        self.answer, self.read_body = answer, read_body
        self.heads: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                self.heads.append(head)
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if self.read_body:
                    while len(data) < length:
                        data += conn.recv(65536)
                    data = data[length:]
                conn.sendall(self.answer)
                if not self.read_body:
                    threading.Event().wait(120)  # holds the connection, reads nothing

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()


def test_a_path_cannot_change_the_request_line_the_replica_gets(world, procs):
    replica = RawReplica(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    try:
        ready_instance(world.deployment, "raw-1", replica.port)
        gateway = procs.gateway()
        base = f"{gateway}/gw/acme/support-bot/production"
        headers = bearer(world)
        wait_until(lambda: serves(f"{base}/invoke", headers), what="the gateway")
        replica.heads.clear()
        smuggled = "/x%20HTTP/1.1%0d%0ax-hangar-caller:%20forged%0d%0a%0d%0aGET%20/admin"
        for path in (smuggled, "/%E6%97%A5?q=1"):
            answer = requests.get(base + path, headers=headers, timeout=10)
            assert answer.status_code == 200 and answer.text == "ok"
        lines = [head.split(b"\r\n") for head in replica.heads]
        assert len(lines) == 2  # one request each: nothing smuggled in
        assert lines[0][0] == (b"GET /x%20HTTP/1.1%0D%0Ax-hangar-caller:%20forged%0D%0A%0D%0A"
                               b"GET%20/admin HTTP/1.1")
        assert not any(line.startswith(b"x-hangar-caller: forged") for line in lines[0])
        assert lines[1][0] == b"GET /%E6%97%A5?q=1 HTTP/1.1"
    finally:
        replica.close()


def test_an_answer_given_before_a_streamed_body_is_read_reaches_the_caller(world, procs):
    # The replica refuses at once and reads nothing more: the gateway must not wait
    # for it to take the rest of the body (before, it did, until the request timeout).
    replica = RawReplica(b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\n"
                         b"content-length: 8\r\n\r\ntoo much", read_body=False)
    try:
        ready_instance(world.deployment, "raw-1", replica.port)
        gateway = procs.gateway(HANGAR_GATEWAY_MAX_BODY=str(64 * 2**20))
        url = f"{gateway}/gw/acme/support-bot/production/upload"
        headers = bearer(world)
        wait_until(lambda: requests.get(url, headers=headers, timeout=5).status_code == 413,
                   what="the gateway")

        def body():  # 40 MiB, chunked: far more than the sockets between them hold
            for _ in range(640):
                yield b"x" * 65536

        answer = requests.post(url, data=body(), headers=headers, timeout=30)
        assert answer.status_code == 413 and answer.text == "too much"
    finally:
        replica.close()
