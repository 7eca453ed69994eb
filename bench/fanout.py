"""Fan-out benchmark: live events to 1,000 logged-in websocket clients.

Hangar: uvicorn (the production command) serving ``controlplane.asgi``
(session cookie, Origin check, ``EventsConsumer`` and the per-process ``hub``)
on the Redis pub/sub channel layer, and a publisher process that calls
``deployments.events.publish()`` inside ``transaction.atomic()`` at
``--rate`` events/s for ``--seconds``. Baseline, in the same run: a minimal
``websockets`` server that subscribes once to a raw Redis pub/sub channel and
relays every message to all its sockets, fed by raw ``PUBLISH`` at the same rate
with the same payload. Both sides get the same clients (``--clients`` sockets in
``--client-procs`` processes, all connected before the first event).

Every event carries ``{"seq": n, "sent": time.time()}``; a client records
``time.time()`` on receipt (one machine, one clock). Latency is receive - sent
over all first deliveries; lost is published events x clients - distinct
deliveries (a socket that never connected loses every event).

The Hangar publisher coalesces per (event, object) key inside 0.25 s and keeps
only the last message of a burst, and 10 events/s on one key would collapse to
about 4/s. Each event therefore gets its own object key: ``deployment_id`` is
``ID_BASE + seq`` (no such row is needed; ``publish`` only uses it as the key,
and the hub forwards every message of a team the user can read, carrying
``deployment_id`` as is). The event is the bench's own ``bench.tick``, a typed
live event like the others (checked where published). Every
key is thus new and goes out on the leading edge, unthrottled; this measures the
transport (commit hook, sender loop, Redis, uvicorn, hub, sockets), not the throttle.

    .venv/bin/python bench/fanout.py --clients 1000 --rate 10 --seconds 60

Needs PostgreSQL and Redis on 127.0.0.1 (database ``hangar_bench_fanout`` is
created and dropped). Takes about 2.5 minutes at the defaults. Per side it
prints connected sockets, deliveries, lost, latency p50/p99/max, per-event
latency to the first socket and first-to-last socket spread (a pipeline stall
shows in the first, fan-out cost in the second), server RSS (idle, all
connected, peak: VmRSS summed over the server processes, sampled every 100 ms)
and CPU use while publishing, including the rest of the machine: other jobs on
a 2-core machine skew the figures. An event still queued in the server when
the drain time ends counts as lost. ``--servers N`` runs N server processes per
side with the clients split between them; ``--users N`` spreads the sockets
over N logged-in users (the hub re-checks all their access in one query every 5 s).

The last line is ``p99_ms=<hangar> baseline_p99_ms=<baseline> lost=<hangar lost>``.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import functools
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "hangar_bench_fanout"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"
REDIS_URL = "redis://127.0.0.1:6379/12"
# Redis pub/sub ignores the database number, so the bench keeps its group and
# channel names apart from any test run on the same Redis: a team primary key
# and deployment ids far above anything a sequence hands out.
ID_BASE = 0x7E57_0000_0000
CONNECT_CONCURRENCY = 16  # handshakes in flight per client process
CONNECT_DEADLINE_S = 300.0


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=DATABASE_URL,
               REDIS_URL=REDIS_URL, PYTHONUNBUFFERED="1")
    env.pop("HANGAR_ALLOWED_HOSTS", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on :{port} exited {proc.returncode}:\n"
                             f"{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on :{port} did not listen within {timeout:.0f}s")


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (the /proc/stat cpu line)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """Peak of the summed VmRSS of some processes, sampled every 100 ms."""

    def __init__(self, pids: list[int]):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak_kib = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(0.1)

    def sample(self) -> int:
        total = sum(rss_kib(pid) for pid in self.pids)
        self.peak_kib = max(self.peak_kib, total)
        return total

    def stop(self) -> int:
        self.stopping.set()
        self.join()
        return self.sample()


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# Database and login ------------------------------------------------------------------


def prepare_database(users: int) -> tuple[int, list[str]]:
    """A fresh database, ``users`` viewers of one team, a login session each;
    returns (team id, session cookies)."""
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {BENCH_DB}")
    os.environ.update({k: v for k, v in bench_env().items()
                       if k in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")})
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.db import connection

    from deployments.models import Membership, Role, Team

    call_command("migrate", verbosity=0)
    team = Team.objects.create(pk=ID_BASE + random.randrange(1 << 16), name="Bench",
                               slug="bench")
    cookies = []
    for i in range(users):
        user = get_user_model().objects.create_user(f"bench-viewer-{i}")
        Membership.objects.create(team=team, user=user, role=Role.VIEWER)
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.save()
        cookies.append(f"sessionid={store.session_key}")
    connection.close()
    return team.pk, cookies


def drop_database() -> None:
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


# Child process roles -----------------------------------------------------------------


def role_client(cfg: dict) -> None:
    """``cfg["sockets"]`` websockets: connect gradually, report, record until SIGTERM.

    Each socket is an ``asyncio.Protocol`` driving the ``websockets`` Sans-I/O
    client: a delivery costs one ``data_received`` call, with no task switch or
    future per message, so the clients leave the CPU to the server under test.
    """
    from websockets.client import ClientProtocol
    from websockets.frames import Opcode
    from websockets.http11 import Response
    from websockets.protocol import State
    from websockets.typing import Origin
    from websockets.uri import parse_uri

    raise_nofile()
    expect = cfg["expect"]
    latencies, seqs = array.array("d"), array.array("i")
    stats = {"dups": 0, "unexpected": 0, "dropped": 0}
    stopping = False

    class Watch(asyncio.Protocol):
        def __init__(self, url: str, origin: str, cookie: str | None, opened: asyncio.Future):
            self.ws = ClientProtocol(parse_uri(url), origin=Origin(origin))
            self.cookie = cookie
            self.opened = opened
            self.seen = bytearray(expect)
            self.transport = None

        def connection_made(self, transport) -> None:
            self.transport = transport
            request = self.ws.connect()
            if self.cookie:
                request.headers["Cookie"] = self.cookie
            self.ws.send_request(request)
            self.flush()

        def flush(self) -> None:
            for data in self.ws.data_to_send():
                if data:
                    self.transport.write(data)

        def data_received(self, data: bytes) -> None:
            now = time.time()
            self.ws.receive_data(data)
            for event in self.ws.events_received():
                if isinstance(event, Response):
                    if self.opened.done():
                        continue
                    if self.ws.state is State.OPEN:
                        self.opened.set_result(self)
                    else:
                        self.opened.set_exception(ConnectionError(
                            f"handshake: {self.ws.handshake_exc!r}"))
                elif event.opcode is Opcode.TEXT:
                    self.record(event.data, now)
            self.flush()

        def record(self, raw: bytes, now: float) -> None:
            try:
                payload = json.loads(raw)["payload"]
                seq, sent = payload["seq"], payload["sent"]
            except (ValueError, KeyError, TypeError):
                stats["unexpected"] += 1
                return
            if not isinstance(seq, int) or not 0 <= seq < expect:
                stats["unexpected"] += 1
            elif self.seen[seq]:
                stats["dups"] += 1
            else:
                self.seen[seq] = 1
                latencies.append(now - sent)
                seqs.append(seq)

        def connection_lost(self, exc) -> None:
            if not self.opened.done():
                self.opened.set_exception(ConnectionError(f"closed in handshake: {exc!r}"))
            elif not stopping:
                stats["dropped"] += 1

    async def open_one(i: int, gate: asyncio.Semaphore, opened: list) -> None:
        loop = asyncio.get_running_loop()
        port = cfg["ports"][i % len(cfg["ports"])]
        url, origin = f"ws://127.0.0.1:{port}/ws/events/", f"http://127.0.0.1:{port}"
        cookies = cfg["cookies"]
        cookie = cookies[i % len(cookies)] if cookies else None
        error: Exception | None = None
        for attempt in range(5):
            async with gate:
                future = loop.create_future()
                transport = None
                try:
                    transport, _ = await loop.create_connection(
                        functools.partial(Watch, url, origin, cookie, future), "127.0.0.1", port)
                    opened.append(await asyncio.wait_for(future, 60))
                    return
                except (TimeoutError, OSError) as exc:
                    error = exc
                    if transport is not None:
                        transport.abort()
            await asyncio.sleep(0.5 * (attempt + 1))
        print(f"client: socket {i} failed: {error!r}", file=sys.stderr, flush=True)

    async def main() -> None:
        nonlocal stopping
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        opened: list[Watch] = []
        opening = [open_one(cfg["first"] + i, gate, opened) for i in range(cfg["sockets"])]
        try:
            await asyncio.wait_for(asyncio.gather(*opening), CONNECT_DEADLINE_S)
        except TimeoutError:
            pass
        print(f"connected {len(opened)} failed {cfg['sockets'] - len(opened)}", flush=True)
        await stop.wait()
        stopping = True
        received = [sum(w.seen) for w in opened]
        with open(cfg["out"] + ".lat", "wb") as f:
            latencies.tofile(f)
        with open(cfg["out"] + ".seq", "wb") as f:
            seqs.tofile(f)
        with open(cfg["out"] + ".json", "w") as f:
            json.dump({"connected": len(opened), "received": received, **stats}, f)
        sys.stdout.flush()
        os._exit(0)  # no close handshakes: the server is torn down next anyway

    asyncio.run(main())


def role_publisher(cfg: dict) -> None:
    """Publish ``cfg["count"]`` events at ``cfg["rate"]``/s after a ``go`` line on stdin."""
    if cfg["mode"] == "hangar":
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.db import transaction

        from deployments.events import LiveEvent, publish

        @dataclass(frozen=True)
        class BenchTick(LiveEvent):
            """The bench's own event: typed and checked like every other."""

            name: ClassVar[str] = "bench.tick"
            seq: int
            sent: float

        team_id = cfg["team_id"]

        def send(seq: int) -> None:
            sent = time.time()
            with transaction.atomic():
                publish(team_id, BenchTick(seq=seq, sent=sent), deployment_id=ID_BASE + seq)

        def warm_up() -> None:
            with transaction.atomic():
                publish(team_id, BenchTick(seq=-1, sent=time.time()), deployment_id=ID_BASE - 1)
    else:
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        channel = cfg["channel"]

        def send(seq: int) -> None:
            sent = time.time()
            r.publish(channel, json.dumps({"event": "bench.tick", "deployment_id": ID_BASE + seq,
                                           "payload": {"seq": seq, "sent": sent}}))

        def warm_up() -> None:
            r.publish(channel, json.dumps({"event": "bench.tick", "deployment_id": None,
                                           "payload": {"seq": -1, "sent": time.time()}}))

    warm_up()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    rate, count = cfg["rate"], cfg["count"]
    late = 0
    start = time.perf_counter()
    for seq in range(count):
        due = start + seq / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.05:
            late += 1
        send(seq)
    elapsed = time.perf_counter() - start
    time.sleep(1.0)  # let the background sender drain before the process exits
    print(json.dumps({"published": count, "elapsed": elapsed, "late": late}), flush=True)


def role_relay(cfg: dict) -> None:
    """Baseline server: subscribe once to a Redis channel, relay to every socket."""
    import redis.asyncio as aioredis
    from websockets.asyncio.server import broadcast, serve

    raise_nofile()
    sockets: set = set()

    async def handler(ws) -> None:
        sockets.add(ws)
        try:
            await ws.wait_closed()
        finally:
            sockets.discard(ws)

    async def main() -> None:
        r = aioredis.Redis.from_url(REDIS_URL)
        pubsub = r.pubsub()
        await pubsub.subscribe(cfg["channel"])
        async with serve(handler, "127.0.0.1", cfg["port"], compression=None,
                         ping_interval=None, backlog=1024):
            async for message in pubsub.listen():
                if message["type"] == "message":
                    broadcast(sockets, message["data"].decode())

    asyncio.run(main())


ROLES = {"client": role_client, "publisher": role_publisher, "relay": role_relay}


def spawn(role: str, cfg: dict, log: Path | None = None, **kw) -> subprocess.Popen:
    out = log.open("w") if log is not None else kw.pop("stdout", None)
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--role", role, json.dumps(cfg)],
        cwd=ROOT, env=bench_env(), stdout=out,
        stderr=subprocess.STDOUT if log is not None else None, start_new_session=True, **kw)


# One side of the comparison ----------------------------------------------------------


@dataclass
class Result:
    name: str
    clients: int
    connected: int = 0
    published: int = 0
    deliveries: int = 0
    lost: int = 0
    dups: int = 0
    unexpected: int = 0
    dropped: int = 0
    late_publishes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)  # per event, first socket
    spread_ms: list[float] = field(default_factory=list)  # per event, last - first socket
    rss_idle_mib: float = 0.0
    rss_connected_mib: float = 0.0
    rss_peak_mib: float = 0.0
    server_cpu_pct: float = 0.0
    client_cpu_pct: float = 0.0
    publisher_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0  # everything else on the machine (another job skews figures)

    def pct(self, q: float, values: list[float] | None = None) -> float:
        """Nearest-rank percentile of sorted ``values`` (all delivery latencies)."""
        values = self.latencies_ms if values is None else values
        if not values:
            return float("nan")
        return values[max(0, min(len(values) - 1, int(-(-q * len(values) // 1)) - 1))]

    def summary(self) -> str:
        lat = self.latencies_ms
        return (
            f"{self.name}: {self.connected}/{self.clients} clients connected, "
            f"{self.published} events published, {self.deliveries} deliveries, "
            f"lost {self.lost}, duplicates {self.dups}, dropped sockets {self.dropped}\n"
            f"  latency ms: p50 {self.pct(0.50):.1f}  p99 {self.pct(0.99):.1f}  "
            f"max {(lat[-1] if lat else float('nan')):.1f}\n"
            f"  per event ms: first socket p50 {self.pct(0.5, self.first_ms):.1f} "
            f"p99 {self.pct(0.99, self.first_ms):.1f}; first-to-last socket "
            f"p50 {self.pct(0.5, self.spread_ms):.1f} p99 {self.pct(0.99, self.spread_ms):.1f}\n"
            f"  server RSS MiB: idle {self.rss_idle_mib:.1f}, all connected "
            f"{self.rss_connected_mib:.1f}, peak {self.rss_peak_mib:.1f}\n"
            f"  CPU while publishing (% of one core): server {self.server_cpu_pct:.0f}, "
            f"clients {self.client_cpu_pct:.0f}, publisher {self.publisher_cpu_pct:.0f}, "
            f"rest of the machine {self.other_cpu_pct:.0f}"
            + (f", late publishes {self.late_publishes}" if self.late_publishes else ""))


def run_side(name: str, servers: list[tuple[subprocess.Popen, int, Path]], publisher_cfg: dict,
             args, cookies: list[str], workdir: Path) -> Result:
    result = Result(name=name, clients=args.clients)
    procs: list[subprocess.Popen] = [p for p, _, _ in servers]
    server_pids = [p.pid for p, _, _ in servers]
    try:
        for proc, port, log in servers:
            wait_port(port, proc, log)
        sampler = RssSampler(server_pids)
        result.rss_idle_mib = sampler.sample() / 1024
        sampler.start()
        publisher = spawn("publisher", publisher_cfg, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
        procs.append(publisher)
        if publisher.stdout.readline().strip() != "ready":
            raise SystemExit(f"{name}: publisher failed to start")
        expect = args.rate * args.seconds
        clients = []
        per = -(-args.clients // args.client_procs)
        started = time.perf_counter()
        for i in range(args.client_procs):
            first, count = i * per, min(per, args.clients - i * per)
            if count <= 0:
                break
            cfg = {"ports": [port for _, port, _ in servers], "cookies": cookies,
                   "first": first, "sockets": count,
                   "expect": expect, "out": str(workdir / f"{name}-client{i}")}
            clients.append(spawn("client", cfg, stdout=subprocess.PIPE, text=True))
        procs.extend(clients)
        for c in clients:
            line = c.stdout.readline().split()
            result.connected += int(line[1]) if line[:1] == ["connected"] else 0
        print(f"{name}: {result.connected}/{args.clients} sockets connected in "
              f"{time.perf_counter() - started:.1f}s", flush=True)
        result.rss_connected_mib = sampler.sample() / 1024
        cpu_before = {p.pid: cpu_seconds(p.pid) for p in procs}
        machine_before = machine_busy_seconds()
        t0 = time.perf_counter()
        profilers = [subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
             "--rate", "250", "--nonblocking", "--format", "raw",
             "-o", str(Path(args.profile) / f"{name}-{pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid in server_pids] if args.profile else []
        publisher.stdin.write("go\n")
        publisher.stdin.flush()
        report = json.loads(publisher.stdout.readline() or "{}")
        time.sleep(args.drain)
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=30)
        cpu_after = {p.pid: cpu_seconds(p.pid) for p in procs}
        machine_after = machine_busy_seconds()
        window = time.perf_counter() - t0

        def cpu(group: list[int]) -> float:
            return 100 * sum(cpu_after[p] - cpu_before[p] for p in group) / window

        result.server_cpu_pct = cpu(server_pids)
        result.client_cpu_pct = cpu([c.pid for c in clients])
        result.publisher_cpu_pct = cpu([publisher.pid])
        result.other_cpu_pct = max(0.0, 100 * (machine_after - machine_before) / window
                                   - cpu(list(cpu_before)))
        result.published = report.get("published", 0)
        result.late_publishes = report.get("late", 0)
        for c in clients:
            c.send_signal(signal.SIGTERM)
        received = 0
        latencies, seqs = array.array("d"), array.array("i")
        for i, c in enumerate(clients):
            c.wait(timeout=60)
            out = workdir / f"{name}-client{i}"
            data = json.loads(out.with_suffix(".json").read_text())
            received += sum(data["received"])
            for key in ("dups", "unexpected", "dropped"):
                setattr(result, key, getattr(result, key) + data[key])
            with open(out.with_suffix(".lat"), "rb") as f:
                latencies.frombytes(f.read())
            with open(out.with_suffix(".seq"), "rb") as f:
                seqs.frombytes(f.read())
        sampler.stop()
        result.rss_peak_mib = sampler.peak_kib / 1024
        result.deliveries = received
        result.lost = result.published * args.clients - received
        result.latencies_ms = sorted(x * 1000 for x in latencies)
        first: dict[int, float] = {}
        last: dict[int, float] = {}
        for seq, lat in zip(seqs, latencies, strict=True):
            first[seq] = min(first.get(seq, lat), lat)
            last[seq] = max(last.get(seq, lat), lat)
        result.first_ms = sorted(1000 * v for v in first.values())
        result.spread_ms = sorted(1000 * (last[k] - first[k]) for k in first)
        return result
    finally:
        for p in reversed(procs):
            stop_process(p)


def start_asgi(server: str, port: int, workdir: Path) -> tuple[subprocess.Popen, int, Path]:
    log = workdir / f"{server}-{port}.log"
    if server == "daphne":  # for comparison only: pip install daphne
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    else:  # as in the Dockerfile, without the access log (the baseline has none)
        command = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                   "--ws", "websockets-sansio", "--lifespan", "on", "--no-access-log"]
    proc = subprocess.Popen(
        [*command, "controlplane.asgi:application"], cwd=ROOT, env=bench_env(),
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc, port, log


def start_relay(port: int, channel: str, workdir: Path) -> tuple[subprocess.Popen, int, Path]:
    log = workdir / f"relay-{port}.log"
    return spawn("relay", {"port": port, "channel": channel}, log=log), port, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=10, help="events per second")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--servers", type=int, default=1,
                        help="server processes per side, clients split between them")
    parser.add_argument("--asgi", choices=["daphne", "uvicorn"], default="uvicorn",
                        help="Hangar's ASGI server (daphne: comparison only, pip install it)")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--users", type=int, default=1,
                        help="distinct logged-in users, sockets spread over them")
    parser.add_argument("--drain", type=float, default=3.0,
                        help="seconds to keep receiving once the publisher is done "
                             "(it lingers 1 s after its last event)")
    parser.add_argument("--profile", metavar="DIR",
                        help="sample the servers with py-spy while publishing (collapsed "
                             "stacks in DIR; skews the figures: for finding causes only)")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("config", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        ROLES[args.role](json.loads(args.config))
        return
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="hangar-fanout-"))
    team_id, cookies = prepare_database(args.users)
    try:
        hangar = run_side(
            "hangar", [start_asgi(args.asgi, free_port(), workdir) for _ in range(args.servers)],
            {"mode": "hangar", "team_id": team_id, "rate": args.rate,
             "count": args.rate * args.seconds}, args, cookies, workdir)
        print(hangar.summary(), flush=True)
        channel = f"hangar-bench-fanout-{os.getpid()}-{random.randrange(1 << 30)}"
        base = run_side(
            "baseline", [start_relay(free_port(), channel, workdir)
                         for _ in range(args.servers)],
            {"mode": "raw", "channel": channel, "rate": args.rate,
             "count": args.rate * args.seconds}, args, [], workdir)
        print(base.summary(), flush=True)
    except BaseException:
        print(f"server logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        drop_database()
    shutil.rmtree(workdir, ignore_errors=True)  # kept (logs) only when a side failed
    print(f"p99_ms={hangar.pct(0.99):.1f} baseline_p99_ms={base.pct(0.99):.1f} "
          f"lost={hangar.lost}")


if __name__ == "__main__":
    main()
