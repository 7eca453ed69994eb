"""The reference agent (agents/reference/agent.py) against the agent contract.

The agent runs as a subprocess on a free 127.0.0.1 port. Realtime and batch run
with ``python -S`` (no site-packages) to prove they need only the standard
library; stream mode uses the real Redis on 127.0.0.1:6379 (db 14). The Docker
test builds and runs the image on a local daemon from scripts/docker-hosts.sh.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from deployments.runtimes.base import HealthCheck, http_probe

from .processes import free_port

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / "agents" / "reference" / "agent.py"
REDIS_URL = "redis://127.0.0.1:6379/14"
IMAGE = "hangar/reference-agent:latest"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGENT_", "STREAM_", "OTEL_", "HANGAR_"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def request(url: str, data: bytes | None = None, headers: dict | None = None,
            timeout: float = 5) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


class Agent:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, dict]:
        status, body, _ = request(self.base + path)
        return status, json.loads(body or b"{}")

    def invoke(self, payload, path: str = "/invoke", raw: bytes | None = None,
               headers: dict | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else json.dumps(payload).encode()
        status, body, _ = request(self.base + path, data,
                                  {"Content-Type": "application/json", **(headers or {})})
        return status, json.loads(body or b"{}")

    def output(self) -> str:
        """Everything the agent logged so far (only once it has exited)."""
        return self.proc.stdout.read() if self.proc.stdout else ""

    def answers(self) -> bool:
        try:
            return request(self.base + "/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def wait_listening(self, timeout: float = 10) -> Agent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n"
                                     f"{self.output()}")
            if self.answers():
                return self
            time.sleep(0.05)
        raise AssertionError("agent did not start listening")


@pytest.fixture
def start_agent():
    started: list[subprocess.Popen] = []

    def start(*, stdlib_only: bool = True, wait: bool = True, **env) -> Agent:
        port = free_port()
        args = [sys.executable, *(["-S"] if stdlib_only else []), str(AGENT)]
        proc = subprocess.Popen(
            args, cwd=REPO, env=clean_env(PORT=port, **env), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        agent = Agent(proc, port)
        return agent.wait_listening() if wait else agent

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


def wait_for(predicate, timeout: float = 10, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


# Realtime ---------------------------------------------------------------------------

def test_health_ready_and_metrics(start_agent):
    agent = start_agent(HANGAR_INSTANCE="ref-1")
    status, health = agent.get("/healthz")
    assert status == 200
    assert health["status"] == "ok" and health["inflight"] == 0 and health["instance"] == "ref-1"
    assert agent.get("/readyz")[0] == 200
    agent.invoke({"input": "count me"})
    agent.invoke(None, raw=b"{nope")
    status, metrics = agent.get("/metrics")
    assert status == 200
    assert metrics["invocations"] == 1 and metrics["errors"] == 1 and metrics["inflight"] == 0
    assert metrics["requests"] >= 4
    assert agent.get("/nowhere")[0] == 404


def test_invoke_is_deterministic_and_counts_tokens(start_agent):
    agent = start_agent(HANGAR_INSTANCE="ref-1")
    status, first = agent.invoke({"input": "What is the capital of France?", "thread_id": "t-1"})
    assert status == 200
    assert first["model"] == "gpt-4o-mini" and first["instance"] == "ref-1"
    assert first["thread_id"] == "t-1"
    assert first["usage"] == {"input_tokens": 6, "output_tokens": len(first["output"].split())}
    assert first["usage"]["output_tokens"] > 5
    _, again = agent.invoke({"input": "What is the capital of France?"})
    assert again["output"] == first["output"]
    _, other = agent.invoke({"input": "What is the capital of Spain?"})
    assert other["output"] != first["output"]
    # A second process (another replica) answers the same.
    replica = start_agent(HANGAR_INSTANCE="ref-2")
    _, theirs = replica.invoke({"input": "What is the capital of France?"})
    assert theirs["output"] == first["output"] and theirs["instance"] == "ref-2"
    # The model name takes part in the answer.
    renamed = start_agent(AGENT_MODEL="offline-other")
    _, renamed_answer = renamed.invoke({"input": "What is the capital of France?"})
    assert renamed_answer["model"] == "offline-other"
    assert renamed_answer["output"] != first["output"]


@pytest.mark.parametrize("raw, detail", [
    (b"{not json", "bad request"),
    (b"[1, 2]", "JSON object"),
    (b'{"thread_id": "x"}', "input"),
])
def test_bad_requests_are_400_with_detail(start_agent, raw, detail):
    agent = start_agent()
    status, body = agent.invoke(None, raw=raw)
    assert status == 400
    assert detail in body["detail"]
    assert agent.get("/healthz")[0] == 200  # still serving


def parse_sse(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        name, data = "message", []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        events.append((name, "\n".join(data)))
    return events


@pytest.mark.parametrize("path, headers", [
    ("/invoke/stream", {}),
    ("/invoke", {"Accept": "text/event-stream"}),
])
def test_streaming_sends_one_event_per_token_then_done(start_agent, path, headers):
    agent = start_agent(AGENT_TOKEN_DELAY_MS=5)
    _, plain = agent.invoke({"input": "stream this please"})
    status, body, response_headers = request(
        agent.base + path, json.dumps({"input": "stream this please"}).encode(), headers)
    assert status == 200
    assert response_headers["Content-Type"].startswith("text/event-stream")
    events = parse_sse(body.decode())
    tokens = [json.loads(data) for name, data in events if name == "message"]
    assert len(tokens) >= 5
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert " ".join(t["token"] for t in tokens) == plain["output"]
    name, data = events[-1]
    assert name == "done"
    done = json.loads(data)
    assert done["output"] == plain["output"]
    assert done["usage"]["output_tokens"] == len(tokens)


def test_inflight_is_reported_to_the_control_plane_probe(start_agent):
    agent = start_agent(AGENT_LATENCY_MS=1500)
    health = HealthCheck(timeout_s=2)
    idle = http_probe(f"127.0.0.1:{agent.port}", health)
    assert idle.live and idle.ready and idle.inflight == 0
    results = []
    workers = [threading.Thread(target=lambda: results.append(agent.invoke({"input": "slow"})))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        busy = wait_for(lambda: (p := http_probe(f"127.0.0.1:{agent.port}", health)).inflight == 2
                        and p, timeout=3, what="inflight=2")
        assert busy.live and busy.ready
    finally:
        for worker in workers:
            worker.join(10)
    assert [status for status, _ in results] == [200, 200]
    assert http_probe(f"127.0.0.1:{agent.port}", health).inflight == 0


def test_failing_readiness_keeps_liveness(start_agent):
    agent = start_agent(AGENT_FAIL_READINESS="1")
    assert agent.get("/healthz")[0] == 200
    status, body = agent.get("/readyz")
    assert status == 503 and "AGENT_FAIL_READINESS" in body["status"]
    probe = http_probe(f"127.0.0.1:{agent.port}", HealthCheck())
    assert probe.live and not probe.ready
    assert agent.invoke({"input": "still answers"})[0] == 200


def test_slow_start_delays_readiness(start_agent):
    began = time.monotonic()
    agent = start_agent(AGENT_SLOW_START_S="1.5")
    assert agent.get("/healthz")[0] == 200
    assert agent.get("/readyz")[0] == 503
    wait_for(lambda: agent.get("/readyz")[0] == 200, timeout=10, what="readiness")
    assert time.monotonic() - began >= 1.4


def test_crash_after_n_invocations(start_agent):
    agent = start_agent(AGENT_CRASH_AFTER="2", AGENT_EXIT_CODE="7")
    assert agent.invoke({"input": "one"})[0] == 200
    status, body = agent.invoke({"input": "two"})
    assert status == 200 and body["output"]
    assert agent.proc.wait(5) == 7
    assert "AGENT_CRASH_AFTER=2" in agent.output()


def test_crash_at_start(start_agent):
    agent = start_agent(wait=False, AGENT_CRASH_AT_START="1", AGENT_EXIT_CODE="5")
    assert agent.proc.wait(5) == 5
    assert not agent.answers()
    default = start_agent(wait=False, AGENT_CRASH_AT_START="1")
    assert default.proc.wait(5) == 1


def test_sigterm_exits_zero_quickly(start_agent):
    agent = start_agent()
    agent.invoke({"input": "hello"})
    began = time.monotonic()
    agent.proc.terminate()
    assert agent.proc.wait(5) == 0
    assert time.monotonic() - began < 2
    log = agent.output()
    assert "POST /invoke 200" in log and "received SIGTERM" in log


def test_tracing_without_packages_is_skipped_with_one_line(start_agent):
    agent = start_agent(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert agent.invoke({"input": "untraced"})[0] == 200
    agent.proc.terminate()
    agent.proc.wait(5)
    assert agent.output().count("tracing disabled") == 1


# Batch ------------------------------------------------------------------------------

def run_batch(tmp_path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-S", str(AGENT)], cwd=tmp_path, capture_output=True, text=True,
        timeout=20, env=clean_env(AGENT_MODE="batch", HANGAR_INSTANCE="job-1", **env))


def test_batch_prints_one_json_line_and_writes_the_output_file(tmp_path):
    out = tmp_path / "results" / "out.json"
    done = run_batch(tmp_path, AGENT_INPUT=json.dumps({"input": "summarise the report",
                                                       "thread_id": "b-1"}),
                     AGENT_OUTPUT_FILE=str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1  # stdout is exactly the result; logs go to stderr
    result = json.loads(lines[0])
    assert result["usage"]["input_tokens"] == 3 and result["thread_id"] == "b-1"
    assert result["instance"] == "job-1"
    assert json.loads(out.read_text()) == result
    # Plain text from a file gives the same answer as the same text in JSON.
    source = tmp_path / "in.txt"
    source.write_text("summarise the report")
    again = run_batch(tmp_path, AGENT_INPUT_FILE=str(source), AGENT_EXIT_CODE="3")
    assert again.returncode == 3
    assert json.loads(again.stdout)["output"] == result["output"]


def test_batch_missing_input_file_fails_clearly(tmp_path):
    done = run_batch(tmp_path, AGENT_INPUT_FILE=str(tmp_path / "missing.txt"))
    assert done.returncode == 2
    assert "AGENT_INPUT_FILE" in done.stderr


# Stream -----------------------------------------------------------------------------

@pytest.fixture
def redis_streams():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"test-ref-{uuid.uuid4().hex[:10]}"
    yield client, prefix
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def stream_env(prefix: str, **extra) -> dict:
    return {
        "AGENT_MODE": "stream", "STREAM_REDIS_URL": REDIS_URL,
        "STREAM_NAME": f"{prefix}:in", "STREAM_GROUP": "workers",
        "STREAM_OUTPUT": f"{prefix}:out", "STREAM_DEADLETTER": f"{prefix}:dead",
        "STREAM_MAX_DELIVERIES": "3", "STREAM_CLAIM_IDLE_MS": "300", "STREAM_BLOCK_MS": "100",
        **extra,
    }


def test_stream_consumes_outputs_and_dead_letters_poison(start_agent, redis_streams):
    r, prefix = redis_streams
    source = f"{prefix}:in"
    # A message a dead consumer took and never acknowledged: it must be reclaimed.
    r.xgroup_create(source, "workers", id="0", mkstream=True)
    orphan = r.xadd(source, {"input": "left behind by a crashed worker"})
    r.xreadgroup("workers", "ghost", {source: ">"}, count=1)

    agent = start_agent(stdlib_only=False, HANGAR_INSTANCE="consumer-1", **stream_env(prefix))
    wait_for(lambda: agent.get("/readyz")[0] == 200, what="stream readiness")
    good_before = [r.xadd(source, {"input": f"question {i}"}) for i in range(3)]
    poison = r.xadd(source, {"input": "poison"})
    good_after = [r.xadd(source, {"input": f"later question {i}"}) for i in range(3)]

    # Good messages flow past the poison one at once.
    wanted = {orphan, *good_before, *good_after}
    outputs = wait_for(lambda: (entries := r.xrange(f"{prefix}:out"))
                       and {f["source_id"] for _, f in entries} >= wanted and entries,
                       timeout=15, what="outputs")
    assert len(outputs) == len(wanted)  # each once, nothing for the poison message
    by_source = {fields["source_id"]: fields for _, fields in outputs}
    assert by_source[good_before[0]]["input"] == "question 0"
    assert by_source[good_before[0]]["instance"] == "consumer-1"
    assert by_source[good_before[0]]["output"].startswith("[gpt-4o-mini] You said: question 0")

    dead = wait_for(lambda: r.xrange(f"{prefix}:dead"), timeout=15, what="dead letter")
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields["source_id"] == poison and fields["input"] == "poison"
    assert fields["deliveries"] == "3" and "poison" in fields["error"]
    assert wait_for(lambda: r.xpending(source, "workers")["pending"] == 0, timeout=5,
                    what="nothing pending")

    # lag (pending + undelivered) is refreshed about once a second.
    health = wait_for(lambda: (h := agent.get("/healthz")[1])["lag"] == 0 and h, timeout=5,
                      what="lag 0")
    assert health["pending"] == 0 and health["inflight"] == 0
    agent.proc.terminate()
    assert agent.proc.wait(5) == 0
    assert "dead-lettered" in agent.output()


def test_stream_group_shares_work_between_replicas(start_agent, redis_streams):
    r, prefix = redis_streams
    env = stream_env(prefix)
    agents = [start_agent(stdlib_only=False, HANGAR_INSTANCE=f"c-{i}", **env) for i in range(2)]
    for agent in agents:
        wait_for(lambda a=agent: a.get("/readyz")[0] == 200, what="readiness")
    ids = [r.xadd(f"{prefix}:in", {"input": f"item {i}"}) for i in range(30)]
    outputs = wait_for(lambda: len(entries := r.xrange(f"{prefix}:out")) >= 30 and entries,
                       timeout=15, what="30 outputs")
    assert sorted(f["source_id"] for _, f in outputs) == sorted(ids)
    assert {f["instance"] for _, f in outputs} <= {"c-0", "c-1"}


def test_stream_lag_and_readiness_without_redis(start_agent):
    agent = start_agent(stdlib_only=False, AGENT_MODE="stream",
                        STREAM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/14")
    time.sleep(0.5)
    status, health = agent.get("/healthz")
    assert status == 200 and "unreachable" in health["redis"]
    assert agent.get("/readyz")[0] == 503


def test_stream_without_redis_package_says_so(start_agent):
    agent = start_agent(wait=False, AGENT_MODE="stream")  # -S: no site-packages
    assert agent.proc.wait(5) == 2
    assert "needs the 'redis' package" in agent.output()


# Docker -----------------------------------------------------------------------------

class _Collector(http.server.BaseHTTPRequestHandler):
    """A stand-in OTLP/HTTP endpoint that keeps what it receives."""

    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def docker_host() -> str:
    configured = os.environ.get("HANGAR_TEST_DOCKER_HOSTS", "").strip()
    if configured:
        return configured.split(",")[0].strip()
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("starting Docker daemons needs root on Debian (or HANGAR_TEST_DOCKER_HOSTS)")
    done = subprocess.run([str(REPO / "scripts" / "docker-hosts.sh"), "start", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[1]


@pytest.mark.slow
def test_reference_image_runs_healthy_in_docker():
    docker = pytest.importorskip("docker")
    url = docker_host()
    built = subprocess.run([str(REPO / "scripts" / "images.sh"), "ensure", url],
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    client = docker.DockerClient(base_url=url)
    port = free_port()
    container = client.containers.run(
        IMAGE, detach=True, network_mode="host", name=f"hangar-test-ref-{uuid.uuid4().hex[:8]}",
        labels={"hangar.test": "reference-agent"},
        environment={
            "PORT": str(port), "HANGAR_INSTANCE": "docker-1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer test-token",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        })
    try:
        def health() -> str:
            container.reload()
            state = container.attrs["State"]
            if state["Status"] != "running":
                raise AssertionError(f"container {state['Status']}: "
                                     f"{container.logs().decode(errors='replace')}")
            return (state.get("Health") or {}).get("Status") == "healthy"

        wait_for(health, timeout=90, interval=0.5, what="Docker HEALTHCHECK healthy")
        status, body, _ = request(f"http://127.0.0.1:{port}/invoke",
                                  json.dumps({"input": "hello from docker"}).encode(),
                                  {"Content-Type": "application/json"})
        assert status == 200
        result = json.loads(body)
        assert result["instance"] == "docker-1" and result["usage"]["input_tokens"] == 3

        # Traces reach the OTLP endpoint with the GenAI attributes and the token header.
        def exported():
            return [(h, b) for path, h, b in _Collector.received if path == "/v1/traces"
                    and b"invoke_agent" in b and b"chat gpt-4o-mini" in b]

        (headers, payload), *_ = wait_for(exported, timeout=20, what="exported spans")
        assert {k.lower(): v for k, v in headers.items()}["authorization"] == "Bearer test-token"
        for attribute in (b"gen_ai.request.model", b"gen_ai.usage.input_tokens",
                          b"gen_ai.usage.output_tokens", b"gen_ai.operation.name",
                          b"hangar-offline"):
            assert attribute in payload

        assert b"POST /invoke 200" in container.logs()
        container.stop(timeout=10)
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0  # SIGTERM handled gracefully
    finally:
        container.remove(force=True)
        client.close()
        collector.shutdown()
        collector.server_close()
