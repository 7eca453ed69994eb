"""Ingest benchmark: OTLP spans per second, end to end, against raw COPY.

Hangar: one real web process (uvicorn, the production ASGI server) on
127.0.0.1 against a dedicated PostgreSQL database; several client processes
send OTLP/HTTP protobuf exports of 100 spans each (traces of an agent: an
``invoke_agent`` root, LLM ``chat`` calls with GenAI attributes and token
usage, tool calls, a retrieval), as fast as it answers. The clock runs from
the first request until every span is queryable (``count(*)`` on the span
table), and the web process's peak RSS is read from /proc.

Baseline, in the same run: the same rows (decoded by the same code and
formatted for binary COPY, as Hangar writes them, outside the clock) written
with raw psycopg ``COPY`` into the same table (its index and run-deriving
trigger included), in the same batches (100 rows, one commit each, as durable
as Hangar's 2xx), from as many processes as there are clients.

The last line is ``spans_per_s=<hangar> ratio=<hangar / raw COPY>``.

    .venv/bin/python bench/ingest.py [--clients 32] [--requests 40]
"""
from __future__ import annotations

import argparse
import http.client
import io
import multiprocessing as mp
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "hangar_bench_ingest"
ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DB_URL = f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"
ENV = {
    "DATABASE_URL": DB_URL,
    "REDIS_URL": "redis://127.0.0.1:6379/12",
    "HANGAR_SECRET_KEY": "bench-secret-key-not-for-production-" + "x" * 20,
    "HANGAR_ENCRYPTION_KEY": "dGVzdC1lbmNyeXB0aW9uLWtleS0zMi1ieXRlcyEhISE=",
    "HANGAR_LOG_LEVEL": "WARNING",
}
os.environ.update(ENV)
os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"

SPANS_PER_REQUEST = 100
LOG = "/tmp/hangar-bench-ingest-web.log"
MODELS = [("gpt-4o-mini", "openai"), ("gpt-4o", "openai"),
          ("claude-3-5-sonnet-20241022", "anthropic"), ("gemini-2.0-flash", "google")]
TOOLS = ["search_kb", "lookup_order", "create_ticket", "get_weather", "send_email"]


# Realistic GenAI traces --------------------------------------------------------------------


def _kv(key, value):
    from opentelemetry.proto.common.v1 import common_pb2

    any_value = common_pb2.AnyValue()
    if isinstance(value, bool):
        any_value.bool_value = value
    elif isinstance(value, int):
        any_value.int_value = value
    elif isinstance(value, float):
        any_value.double_value = value
    elif isinstance(value, list):
        any_value.array_value.values.extend(
            [common_pb2.AnyValue(string_value=str(v)) for v in value])
    else:
        any_value.string_value = value
    return common_pb2.KeyValue(key=key, value=any_value)


def build_request(rng: random.Random, client: int, number: int) -> bytes:
    """One export: 10 traces × 10 spans (root, 4 chat, 3 tools, 1 retrieval, 1 http)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend([
        _kv("service.name", "acme.support-bot"), _kv("service.instance.id", f"bot-{client}"),
        _kv("telemetry.sdk.name", "opentelemetry"), _kv("telemetry.sdk.language", "python"),
        _kv("telemetry.sdk.version", "1.45.2")])
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "hangar.reference-agent"
    scope.scope.version = "1.0"
    now = time.time_ns()
    for _ in range(SPANS_PER_REQUEST // 10):
        trace_id = rng.randbytes(16)
        root_id = rng.randbytes(8)
        start = now - rng.randint(0, 5_000_000_000)
        model, provider = rng.choice(MODELS)
        conversation = f"conv-{rng.randrange(10**8):08d}"
        root = scope.spans.add()
        root.trace_id, root.span_id, root.name, root.kind = trace_id, root_id, "invoke_agent", 2
        root.start_time_unix_nano = start
        root.end_time_unix_nano = start + rng.randint(800, 9000) * 1_000_000
        root.attributes.extend([
            _kv("gen_ai.operation.name", "invoke_agent"), _kv("gen_ai.agent.name", "support-bot"),
            _kv("gen_ai.system", provider), _kv("gen_ai.request.model", model),
            _kv("gen_ai.conversation.id", conversation), _kv("hangar.instance", f"bot-{client}"),
            _kv("http.request.method", "POST"), _kv("url.path", "/invoke")])
        if rng.random() < 0.03:
            root.status.code, root.status.message = 2, "upstream model timed out"
        cursor = start + 1_000_000
        children = ["chat"] * 4 + ["tool"] * 3 + ["retrieval", "http"]
        for kind in children:
            span = scope.spans.add()
            span.trace_id, span.span_id, span.parent_span_id = trace_id, rng.randbytes(8), root_id
            length = rng.randint(20, 1500) * 1_000_000
            span.start_time_unix_nano, span.end_time_unix_nano = cursor, cursor + length
            cursor += length + 200_000
            if kind == "chat":
                tokens_in, tokens_out = rng.randint(200, 6000), rng.randint(20, 900)
                span.name, span.kind = f"chat {model}", 3
                span.attributes.extend([
                    _kv("gen_ai.operation.name", "chat"), _kv("gen_ai.system", provider),
                    _kv("gen_ai.request.model", model), _kv("gen_ai.response.model", model),
                    _kv("gen_ai.request.temperature", round(rng.random(), 2)),
                    _kv("gen_ai.request.max_tokens", 1024),
                    _kv("gen_ai.response.id", f"chatcmpl-{rng.randrange(16**12):012x}"),
                    _kv("gen_ai.response.finish_reasons", ["stop"]),
                    _kv("gen_ai.usage.input_tokens", tokens_in),
                    _kv("gen_ai.usage.output_tokens", tokens_out),
                    _kv("server.address", "api.example.com"), _kv("server.port", 443),
                    _kv("gen_ai.conversation.id", conversation)])
            elif kind == "tool":
                tool = rng.choice(TOOLS)
                span.name, span.kind = f"execute_tool {tool}", 1
                span.attributes.extend([
                    _kv("gen_ai.operation.name", "execute_tool"), _kv("gen_ai.tool.name", tool),
                    _kv("gen_ai.tool.call.id", f"call_{rng.randrange(16**10):010x}"),
                    _kv("gen_ai.tool.type", "function")])
            elif kind == "retrieval":
                span.name, span.kind = "retrieve knowledge", 1
                span.attributes.extend([
                    _kv("db.system", "postgresql"), _kv("db.operation.name", "SELECT"),
                    _kv("retrieval.documents", rng.randint(1, 8))])
            else:
                span.name, span.kind = "POST", 3
                span.attributes.extend([
                    _kv("http.request.method", "POST"), _kv("http.response.status_code", 200),
                    _kv("url.full", "https://crm.example.com/api/v2/tickets"),
                    _kv("server.address", "crm.example.com")])
    return request.SerializeToString()


def build_all(client: int, count: int) -> list[bytes]:
    rng = random.Random(1000 + client)
    return [build_request(rng, client, n) for n in range(count)]


# Processes ---------------------------------------------------------------------------------


def http_client(client: int, count: int, port: int, token: str, barrier, results) -> None:
    bodies = build_all(client, count)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.connect()
    # As the OpenTelemetry exporter's HTTP stack (urllib3) does.
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {token}"}
    barrier.wait()
    cpu = time.process_time()
    errors = 0
    for body in bodies:
        for _attempt in range(5):
            connection.request("POST", "/v1/traces", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                break
            errors += 1
            time.sleep(0.05)
        else:
            raise SystemExit(f"client {client}: HTTP {response.status}")
    results.put((client, errors, time.process_time() - cpu))


def copy_client(client: int, payloads: list[bytes], barrier, results) -> None:
    import psycopg

    from telemetry.storage import COPY_SPANS

    with psycopg.connect(DB_URL) as connection:
        barrier.wait()
        cpu = time.process_time()
        for payload in payloads:
            with connection.cursor() as cursor, cursor.copy(COPY_SPANS) as copy:
                copy.write(payload)
            connection.commit()
    results.put((client, 0, time.process_time() - cpu))


class Usage:
    """CPU seconds spent by the clients, the web process and PostgreSQL in a phase."""

    def __init__(self, web_pid: int | None):
        self.web_pid = web_pid
        self.web = self.postgres = self.clients = 0.0

    def start(self) -> None:
        self.web -= process_cpu(self.web_pid) if self.web_pid else 0.0
        self.postgres -= postgres_cpu()

    def stop(self, client_seconds: float) -> None:
        self.web += process_cpu(self.web_pid) if self.web_pid else 0.0
        self.postgres += postgres_cpu()
        self.clients = client_seconds

    def line(self, elapsed: float) -> str:
        parts = [f"clients {self.clients / elapsed:.2f}", f"postgres {self.postgres / elapsed:.2f}"]
        if self.web_pid:
            parts.insert(1, f"web {self.web / elapsed:.2f}")
        return "CPU cores used: " + ", ".join(parts)


def process_cpu(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of a process (and of its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> float:
    """All PostgreSQL processes, including backends that have already exited
    (counted in the postmaster's children time)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().startswith("postgres"):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                pids[int(entry.name)] = ppid
        except (OSError, IndexError, ValueError):
            continue
    total = 0.0
    for pid, ppid in pids.items():
        try:
            total += process_cpu(pid, children=ppid not in pids)  # the postmaster
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_clients(target, args_per_client, usage: Usage, ready_timeout=600.0) -> float:
    """Start one process per client, release them together; the start time."""
    barrier = mp.Barrier(len(args_per_client) + 1)
    results = mp.Queue()
    processes = [mp.Process(target=target, args=(*args, barrier, results))
                 for args in args_per_client]
    for process in processes:
        process.start()
    barrier.wait(timeout=ready_timeout)
    started = time.perf_counter()
    usage.start()
    done = [results.get(timeout=900) for _ in processes]
    usage.stop(sum(cpu for _, _, cpu in done))
    for process in processes:
        process.join()
        if process.exitcode:
            raise SystemExit(f"a client failed (exit {process.exitcode})")
    retries = sum(errors for _, errors, _ in done)
    if retries:
        print(f"  ({retries} requests were retried after a non-200 answer)", flush=True)
    return started


def binary_copy_data(cursor, rows: list) -> bytes:
    """``rows`` as a whole binary COPY stream (header, rows, trailer),
    formatted by psycopg as Hangar's COPY formats them, sent nowhere."""
    from psycopg.copy import Copy, FileWriter

    from telemetry.storage import COPY_TYPES

    buffer = io.BytesIO()
    with Copy(cursor, binary=True, writer=FileWriter(buffer)) as copy:
        copy.set_types(COPY_TYPES)
        for row in rows:
            copy.write_row(row)
    return buffer.getvalue()


def count_spans(deployment_id: int) -> int:
    import psycopg

    with psycopg.connect(DB_URL) as connection:
        return connection.execute("SELECT count(*) FROM telemetry_span WHERE deployment_id = %s",
                                  [deployment_id]).fetchone()[0]


def wait_queryable(deployment_id: int, expected: int) -> float:
    while True:
        found = count_spans(deployment_id)
        if found >= expected:
            if found != expected:
                raise SystemExit(f"expected {expected} spans, found {found}")
            return time.perf_counter()
        time.sleep(0.01)


def peak_rss_mib(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Setup -------------------------------------------------------------------------------------


def prepare_database() -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {BENCH_DB}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def drop_database() -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def make_deployment(slug: str):
    from deployments.models import Agent, AgentVersion, Deployment, Target, Team

    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    agent = Agent.objects.create(team=team, slug=slug, name=slug, pattern="realtime")
    version = AgentVersion.objects.create(agent=agent, number=1, image="bench", port=8080)
    target = Target.objects.create(team=team, name=f"t-{slug}", kind="local")
    deployment = Deployment.objects.create(agent=agent, version=version, target=target,
                                           replicas=0)
    deployment.ingest_token = f"{deployment.pk}.bench-{slug}-secret"
    deployment.save(update_fields=["ingest_token"])
    return deployment


def start_web(port: int) -> subprocess.Popen:
    env = dict(os.environ, **ENV)
    log = open(LOG, "w")  # noqa: SIM115 - the web process keeps writing to it
    # The production command (Dockerfile), on a free port.
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/python"), "-m", "uvicorn", "controlplane.asgi:application",
         "--host", "127.0.0.1", "--port", str(port), "--ws", "websockets-sansio",
         "--lifespan", "on", "--proxy-headers"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return process
        except OSError:
            time.sleep(0.2)
        if process.poll() is not None:
            raise SystemExit("the web process exited:\n" + Path(LOG).read_text()[-3000:])
    raise SystemExit("the web process did not start")


def stop_web(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def truncate() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE telemetry_span, telemetry_run")


# Main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=40, help="per client")
    args = parser.parse_args()
    total = args.clients * args.requests * SPANS_PER_REQUEST

    prepare_database()
    from django.conf import settings

    from telemetry import ingest, storage

    deployment = make_deployment("bench")
    warm = make_deployment("warmup")
    storage.ensure_partitions({time.time_ns() // storage.NS_PER_DAY + d for d in (-1, 0, 1)})
    port = free_port()
    web = start_web(port)
    try:
        # Warm up (another deployment): connections, caches, the interpreter.
        rng = random.Random(7)
        for _ in range(20):
            body = build_request(rng, 99, 0)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/traces", data=body, method="POST",
                headers={"Content-Type": "application/x-protobuf",
                         "Authorization": f"Bearer {warm.ingest_token}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
        truncate()
        print(f"hangar: {args.clients} clients × {args.requests} exports × "
              f"{SPANS_PER_REQUEST} spans = {total} spans -> uvicorn pid {web.pid} "
              f"({settings.HANGAR_INGEST_CONNECTIONS} ingest connections)", flush=True)
        usage = Usage(web.pid)
        started = run_clients(http_client, [(c, args.requests, port, deployment.ingest_token)
                                            for c in range(args.clients)], usage)
        finished = wait_queryable(deployment.pk, total)
        hangar_rate = total / (finished - started)
        peak, rss = peak_rss_mib(web.pid)
        from telemetry.models import Run

        runs = Run.objects.filter(deployment_id=deployment.pk).count()
        print(f"hangar: {total} spans queryable in {finished - started:.2f}s = "
              f"{hangar_rate:,.0f} spans/s; {runs} runs; web peak RSS {peak:.0f} MiB "
              f"(now {rss:.0f} MiB)", flush=True)
        print("  " + usage.line(finished - started), flush=True)
    finally:
        stop_web(web)

    # Baseline: the same rows, decoded outside the clock, raw COPY into the same table.
    import psycopg

    truncate()
    payloads = []
    with psycopg.connect(DB_URL) as connection, connection.cursor() as cursor:
        storage.adapt_for_copy(cursor.adapters)
        for client in range(args.clients):
            per_client = []
            for body in build_all(client, args.requests):
                batch = ingest.extract(
                    ingest.parse(body, ingest.PROTOBUF), deployment_id=deployment.pk,
                    max_attribute_bytes=settings.HANGAR_INGEST_MAX_ATTRIBUTE_BYTES)
                per_client.append(binary_copy_data(cursor, batch.rows))
            payloads.append(per_client)
    usage = Usage(None)
    started = run_clients(copy_client, [(c, payloads[c]) for c in range(args.clients)], usage)
    finished = wait_queryable(deployment.pk, total)
    raw_rate = total / (finished - started)
    print(f"raw COPY: {total} spans in {finished - started:.2f}s = {raw_rate:,.0f} spans/s "
          f"({args.clients} connections, {SPANS_PER_REQUEST} rows per COPY and commit)",
          flush=True)
    print("  " + usage.line(finished - started), flush=True)
    drop_database()
    print(f"spans_per_s={hangar_rate:.0f} ratio={hangar_rate / raw_rate:.3f}")


if __name__ == "__main__":
    main()
