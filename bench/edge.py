"""Edge benchmark: desired-state polls of 10,000 devices, then 100 devices
uploading their offline buffers at once.

Hangar: one real web process (uvicorn) on 127.0.0.1 against a dedicated
PostgreSQL database, an edge deployment, a device group running a signed
bundle (the example sensor) and one enrolment token.

1. **Enrol** 10,000 devices for real: each a fresh Ed25519 key pair and a
   ``POST /api/v1/edge/enrol`` (outside the clock).
2. **Poll**: the devices are asyncio clients in a few processes; each device
   takes its first ETag with a ``200``, then polls ``GET /api/v1/edge/state``
   with ``If-None-Match`` in a closed loop — as soon as its answer arrives it
   is queued to poll again — with nothing changing (every answer a ``304``).
   The devices of a process share ``--connections`` keep-alive connections
   (a device is a token and an ETag, not a socket; with 10,000 requests always
   in flight a closed loop's latency is only 10,000 / throughput, whatever the
   server does). Latency is measured on the wire: request written → answer
   read. Reported: sustained polls/s over ``--seconds`` after a warm-up, p50
   and p99.
3. **Upload**: 100 of the devices each have a hangar-edge SQLite buffer
   (``hangar_edge.buffer``) holding 10,000 GenAI spans (bench/ingest.py's
   traces, 3 days old); they reconnect at once — one thread each running the
   agent's own uploader (``hangar_edge.uploader``: oldest first, 2,000 spans a
   request, the device token) — and the clock runs until every span is
   queryable. Spans lost = buffered − distinct spans stored.
   Baseline, in the same run: the same spans, in the same requests, posted
   from as many threads with the deployment's ingest token (what
   bench/ingest.py measures).

The last line is ``polls_per_s=<…> p99_ms=<…> upload_spans_per_s=<…> lost=<n>``.

    .venv/bin/python bench/edge.py [--devices 10000] [--processes 3] [--connections 48]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import ingest as ingest_bench  # noqa: E402

BENCH_DB = "hangar_bench_edge"
WORK = Path("/tmp/hangar-bench-edge")
ingest_bench.BENCH_DB = BENCH_DB
ingest_bench.DB_URL = f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"
ingest_bench.LOG = "/tmp/hangar-bench-edge-web.log"
ingest_bench.ENV.update(DATABASE_URL=ingest_bench.DB_URL, REDIS_URL="redis://127.0.0.1:6379/8",
                        HANGAR_EDGE_BUNDLE_DIR=str(WORK / "server-bundles"))
os.environ.update(ingest_bench.ENV)
UPLOADERS, SPANS_EACH = 100, 10_000


# A minimal HTTP/1.1 keep-alive client on asyncio streams ------------------------------------


class Connection:
    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        body = await self.reader.readexactly(length) if length else b""
        return status, headers, body


def get_state(token: str, etag: str | None) -> bytes:
    lines = ["GET /api/v1/edge/state HTTP/1.1", "Host: 127.0.0.1",
             f"Authorization: Device {token}"]
    if etag:
        lines.append(f"If-None-Match: {etag}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post_json(path: str, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


# Client processes ------------------------------------------------------------------------


def enrol_devices(port: int, token: str, count: int, first: int, out) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    async def main():
        queue = asyncio.Queue()
        for n in range(first, first + count):
            queue.put_nowait(n)
        tokens = []

        async def worker():
            connection = Connection(port)
            await connection.open()
            while not queue.empty():
                n = queue.get_nowait()
                key = Ed25519PrivateKey.generate().public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                request = post_json("/api/v1/edge/enrol", {
                    "token": token, "public_key": base64.b64encode(key).decode(),
                    "name": f"bench-{n:05d}", "labels": {"bench": "edge"}})
                for _attempt in range(20):
                    status, _, body = await connection.request(request)
                    if status != 503:
                        break
                    await asyncio.sleep(0.5)  # "the database is busy": as the agent retries
                if status != 201:
                    raise SystemExit(f"enrolment {n}: HTTP {status} {body[:200]!r}")
                answer = json.loads(body)
                tokens.append((answer["device_id"], answer["device_token"]))

        await asyncio.gather(*(worker() for _ in range(2)))
        return tokens

    out.put(asyncio.run(main()))


def poll_devices(port: int, tokens: list[str], connections: int, warmup: float,
                 seconds: float, barrier, results) -> None:
    async def main():
        etags: dict[str, str] = {}
        queue: asyncio.Queue = asyncio.Queue()
        pool = [Connection(port) for _ in range(connections)]
        for connection in pool:
            await connection.open()

        async def first(connection, chunk):
            for token in chunk:
                for _attempt in range(50):
                    status, headers, _ = await connection.request(get_state(token, None))
                    if status != 503:
                        break
                    await asyncio.sleep(0.1)
                assert status == 200, status
                etags[token] = headers["etag"]
                queue.put_nowait(token)

        await asyncio.gather(*(first(c, tokens[i::connections]) for i, c in enumerate(pool)))
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
        start = time.perf_counter()
        measure_from, measure_to = start + warmup, start + warmup + seconds
        latencies, other, busy = [], [0], [0]

        async def loop(connection):
            while True:
                token = await queue.get()
                sent = time.perf_counter()
                if sent >= measure_to:
                    return
                status, headers, _ = await connection.request(get_state(token, etags[token]))
                done = time.perf_counter()
                if status == 200:
                    etags[token] = headers["etag"]
                    other[0] += 1
                elif status == 503:  # "the database is busy": counted, polled again
                    busy[0] += 1
                elif status != 304:
                    raise SystemExit(f"poll: HTTP {status}")
                if sent >= measure_from:
                    latencies.append(done - sent)
                queue.put_nowait(token)  # polls again as soon as it is answered

        await asyncio.gather(*(loop(c) for c in pool))
        return latencies, other[0] + busy[0] * 1_000_000

    latencies, changed = asyncio.run(main())
    results.put((latencies, changed))


def fill_buffers(devices: list[tuple[int, str]], seed: int) -> list[Path]:
    """A hangar-edge buffer per device with 10,000 GenAI spans, 3 days old."""
    import random

    from hangar_edge import otlp
    from hangar_edge.buffer import Buffer

    paths = []
    three_days_ns = 3 * 86400 * 10**9
    for device_id, _token in devices:
        path = WORK / f"device-{device_id}" / "buffer.sqlite3"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = Buffer(path, max_bytes=256 * 1024 * 1024)
        rng = random.Random(seed * 100_000 + device_id)
        for _ in range(SPANS_EACH // ingest_bench.SPANS_PER_REQUEST):
            body = ingest_bench.build_request(rng, device_id, 0)
            split = otlp.split(body)
            for group in split.groups:  # recorded while the device was offline
                group.spans = [_age(span, three_days_ns) for span in group.spans]
            buffer.add(split.groups, at=time.time())
        buffer.close()
        paths.append(path)
    return paths


def _age(span: bytes, ns: int) -> bytes:
    """The span with its start and end moved ``ns`` into the past."""
    import struct

    from hangar_edge import protowire as pw

    out = bytearray()
    for number, wire, value in pw.fields(span):
        if number in (7, 8) and wire == pw.FIXED64:
            out += pw.key(number, wire) + struct.pack("<Q", value - ns)
        elif wire == pw.LENGTH:
            out += pw.length_field(number, value)
        elif wire == pw.VARINT:
            out += pw.key(number, wire) + pw.varint(value)
        elif wire == pw.FIXED64:
            out += pw.key(number, wire) + struct.pack("<Q", value)
        else:
            out += pw.key(number, wire) + struct.pack("<I", value)
    return bytes(out)


def upload_devices(port: int, devices: list[tuple[int, str]], mode: str, ingest_token: str,
                   seed: int, barrier, results) -> None:
    """``mode`` "agent": the agent's uploader per device, with its device token;
    "ingest": the same requests with the deployment's ingest token."""
    from hangar_edge.buffer import Buffer
    from hangar_edge.client import Client
    from hangar_edge.clock import SystemClock
    from hangar_edge.uploader import Uploader

    paths = fill_buffers(devices, seed)  # the same spans (same ids) for both modes
    errors = []

    def run(path: Path, token: str) -> None:
        buffer = Buffer(path, max_bytes=256 * 1024 * 1024)
        client = Client(f"http://127.0.0.1:{port}", token=token, timeout=120)
        if mode == "ingest":
            client.token = None
            client.request = _bearer(client.request, ingest_token)
        uploader = Uploader(buffer, client, SystemClock())
        barrier.wait()
        while buffer.stats()["buffered"]:
            if not uploader.drain():
                time.sleep(uploader.delay() if uploader.failures else 0.01)
        if uploader.failures or buffer.stats()["rejected"]:
            errors.append(uploader.last_error or "rejected spans")
        buffer.close()

    threads = [threading.Thread(target=run, args=(path, token))
               for path, (_id, token) in zip(paths, devices, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(errors)


def _bearer(request, token):
    def wrapped(method, path, *, headers=None, **kwargs):
        return request(method, path, headers={**(headers or {}),
                                              "Authorization": f"Bearer {token}"}, **kwargs)
    return wrapped


# Setup ------------------------------------------------------------------------------------


def prepare(max_uses: int):
    from datetime import timedelta

    ingest_bench.prepare_database()  # django.setup() first
    from django.utils import timezone

    from deployments.audit import SYSTEM
    from deployments.models import Deployment, Target
    from edge import actions
    from tests.edge_support import sensor_bundle

    seed = ingest_bench.make_deployment("edge")  # the team, and the ingest baseline's token
    team = seed.agent.team
    agent = seed.agent
    agent.pattern = "edge"
    agent.save(update_fields=["pattern"])
    Target.objects.filter(pk=seed.target_id).update(kind="edge")
    deployment = Deployment.objects.get(pk=seed.pk)
    group = actions.create_group(team, name="bench", deployment=deployment, actor=SYSTEM)
    bundle = actions.upload_bundle(team, version="v1", chunks=[sensor_bundle()], actor=SYSTEM)
    actions.start_rollout(group, bundle, waves=[{"percent": 100}], actor=SYSTEM)
    _, token = actions.create_enrolment_token(
        group, name="bench", max_uses=max_uses, expires_at=timezone.now() + timedelta(days=1),
        actor=SYSTEM)
    return deployment, token


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def distinct_spans(deployment_id: int) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(ingest_bench.DB_URL) as connection:
        return connection.execute(
            "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM telemetry_span "
            "WHERE deployment_id = %s", [deployment_id]).fetchone()


def wait_stored(deployment_id: int, expected: int, quiet_s: float = 3.0) -> tuple[float, int]:
    """Until ``expected`` spans are queryable (or the count stops growing)."""
    last, last_change = -1, time.perf_counter()
    while True:
        found = ingest_bench.count_spans(deployment_id)
        now = time.perf_counter()
        if found >= expected:
            return now, found
        if found != last:
            last, last_change = found, now
        elif now - last_change > quiet_s:
            return last_change, found
        time.sleep(0.02)


def spawn(target, args_list, results) -> list:
    processes = [mp.Process(target=target, args=(*args, results)) for args in args_list]
    for process in processes:
        process.start()
    return processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--connections", type=int, default=12, help="in all, for the polls")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--upload-processes", type=int, default=4)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)

    deployment, token = prepare(args.devices + 10)
    port = ingest_bench.free_port()
    web = ingest_bench.start_web(port)
    try:
        # 1. Enrol, for real.
        started = time.perf_counter()
        out = mp.Queue()
        share = [args.devices // args.processes + (i < args.devices % args.processes)
                 for i in range(args.processes)]
        firsts = [sum(share[:i]) for i in range(args.processes)]
        procs = [mp.Process(target=enrol_devices, args=(port, token, share[i], firsts[i], out))
                 for i in range(args.processes)]
        for p in procs:
            p.start()
        devices = [d for _ in procs for d in out.get(timeout=1800)]
        for p in procs:
            p.join()
        print(f"enrolled {len(devices)} devices in {time.perf_counter() - started:.1f}s "
              f"({len(devices) / (time.perf_counter() - started):.0f}/s)", flush=True)

        # 2. Closed-loop polls.
        tokens = [t for _, t in devices]
        per = max(1, args.connections // args.processes)
        barrier, results = mp.Barrier(args.processes + 1), mp.Queue()
        procs = spawn(poll_devices, [(port, tokens[i::args.processes], per, args.warmup,
                                      args.seconds, barrier) for i in range(args.processes)],
                      results)
        barrier.wait(timeout=900)
        usage = ingest_bench.Usage(web.pid)
        usage.start()
        gathered = [results.get(timeout=900) for _ in procs]
        usage.stop(0.0)
        for p in procs:
            p.join()
        latencies = [x for lat, _ in gathered for x in lat]
        changed = sum(c % 1_000_000 for _, c in gathered)
        busy = sum(c // 1_000_000 for _, c in gathered)
        polls_per_s = len(latencies) / args.seconds
        p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
        print(f"polls: {len(tokens)} devices, {per * args.processes} connections, "
              f"{len(latencies)} polls in {args.seconds:.0f}s = {polls_per_s:,.0f}/s, "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({changed} answers were 200, {busy} 503), "
              f"each device polled every {len(tokens) / polls_per_s:.1f}s", flush=True)
        print("  " + usage.line(args.warmup + args.seconds).replace(", clients 0.00", ""),
              flush=True)

        # 3. 100 devices reconnect with 10,000 buffered spans each; then the baseline.
        total = UPLOADERS * SPANS_EACH
        rates = {}
        for mode in ("agent", "ingest"):
            if mode == "ingest":
                ingest_bench.truncate()
            chosen = devices[:UPLOADERS]
            groups = [chosen[i::args.upload_processes] for i in range(args.upload_processes)]
            barrier = mp.Barrier(UPLOADERS + 1)
            results = mp.Queue()
            procs = spawn(upload_devices, [(port, g, mode, deployment.ingest_token, 1, barrier)
                                           for g in groups], results)
            barrier.wait(timeout=1800)
            t0 = time.perf_counter()
            errors = [e for _ in procs for e in results.get(timeout=1800)]
            finished, found = wait_stored(deployment.pk, total)
            for p in procs:
                p.join()
            rates[mode] = found / (finished - t0)
            rows, distinct = distinct_spans(deployment.pk)
            print(f"upload ({mode}): {UPLOADERS} devices × {SPANS_EACH} spans, {found} stored in "
                  f"{finished - t0:.2f}s = {rates[mode]:,.0f} spans/s; {rows} rows, "
                  f"{distinct} distinct{'; errors: ' + str(errors[:3]) if errors else ''}",
                  flush=True)
            if mode == "agent":
                lost = total - distinct
        print(f"upload throughput: hangar-edge {rates['agent']:,.0f} spans/s vs ingest "
              f"{rates['ingest']:,.0f} spans/s (ratio {rates['agent'] / rates['ingest']:.2f}); "
              f"lost {lost}", flush=True)
    finally:
        ingest_bench.stop_web(web)
    ingest_bench.drop_database()
    shutil.rmtree(WORK, ignore_errors=True)
    print(f"polls_per_s={polls_per_s:.0f} p99_ms={p99:.1f} "
          f"upload_spans_per_s={rates['agent']:.0f} lost={lost}")


if __name__ == "__main__":
    main()
