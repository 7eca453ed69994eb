"""The device agent's parts on their own (edge_agent/hangar_edge): the OTLP
wire format against the official protobuf classes and the OpenTelemetry SDK's
own exporter, the SQLite buffer's cap and counters, bundle verification before
unpacking, the loopback receiver over real HTTP, the supervisor's restart
backoff on an injected clock. The agent against a live Hangar is in
test_edge_fleet.py."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.json_format import MessageToDict
from hangar_edge import bundles, otlp
from hangar_edge.buffer import Buffer
from hangar_edge.clock import ManualClock, OffsetFileClock
from hangar_edge.protowire import DecodeError
from hangar_edge.receiver import Receiver
from hangar_edge.supervisor import Supervisor, Target
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.otlp_support import attributes, make_span, new_trace_id

# OTLP on the wire ---------------------------------------------------------------------------


def official_request(spans_per_scope=3, resources=2) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for r in range(resources):
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(attributes({"service.name": f"svc-{r}"}))
        rs.schema_url = "https://opentelemetry.io/schemas/1.21.0"
        scope = rs.scope_spans.add()
        scope.scope.name, scope.scope.version = "sensor", "1.0"
        trace_id = new_trace_id()
        for n in range(spans_per_scope):
            scope.spans.append(make_span(trace_id=trace_id, name=f"s{n}",
                                         attrs={"n": n, "x": 1.5, "ok": True, "l": ["a", 2]},
                                         error="boom" if n == 1 else None,
                                         events=[{"name": "e", "attributes": {"k": "v"}}]))
    return request


def test_split_and_join_keep_every_span_byte_for_byte():
    request = official_request()
    result = otlp.split(request.SerializeToString())
    assert result.rejected == 0 and len(result.groups) == 2
    assert [len(g.spans) for g in result.groups] == [3, 3]
    rebuilt = ExportTraceServiceRequest.FromString(otlp.join(result.groups))
    assert MessageToDict(rebuilt) == MessageToDict(request)


def test_split_adds_the_device_to_every_resource_and_rejects_spans_without_ids():
    request = official_request(resources=1)
    request.resource_spans[0].scope_spans[0].spans.add(name="no ids")
    result = otlp.split(request.SerializeToString(),
                        extra_resource=otlp.attributes(1, {"hangar.edge.device.id": "42"}))
    assert result.rejected == 1 and "trace_id" in result.reason
    rebuilt = ExportTraceServiceRequest.FromString(otlp.join(result.groups))
    resource = {a.key: a.value.string_value
                for a in rebuilt.resource_spans[0].resource.attributes}
    assert resource == {"service.name": "svc-0", "hangar.edge.device.id": "42"}
    assert [s.name for s in rebuilt.resource_spans[0].scope_spans[0].spans] == ["s0", "s1", "s2"]


def test_garbage_is_a_decode_error():
    with pytest.raises(DecodeError):
        otlp.split(b"\x0a\xff\xff\xff\x0f")


def test_run_record_spans_decode_with_the_official_classes():
    trace_id, span_id = otlp.new_ids()
    span = otlp.span(name="edge.process", start_ns=10, end_ns=20, trace_id=trace_id,
                     span_id=span_id, error="exited with code 1",
                     attrs={"process.exit.code": -1, "v": "v2", "f": 0.5, "b": False,
                            "skipped": None})
    body = otlp.join([otlp.Group(otlp.resource({"service.name": "hangar-edge"}),
                                 otlp.scope("hangar_edge", "0.1.0"), [span])])
    decoded = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0]
    assert decoded.scope.name == "hangar_edge"
    got = decoded.spans[0]
    assert (got.trace_id, got.span_id, got.name) == (trace_id, span_id, "edge.process")
    assert (got.start_time_unix_nano, got.end_time_unix_nano) == (10, 20)
    assert got.status.code == 2 and got.status.message == "exited with code 1"
    values = {a.key: a.value for a in got.attributes}
    assert values["process.exit.code"].int_value == -1
    assert values["f"].double_value == 0.5 and values["b"].HasField("bool_value")
    assert "skipped" not in values


def test_otlp_json_becomes_the_same_protobuf():
    request = official_request(resources=1)
    as_json = MessageToDict(request)
    for rs in as_json["resourceSpans"]:  # OTLP/JSON ids are hex, not base64
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                span["traceId"] = base64.b64decode(span["traceId"]).hex()
                span["spanId"] = base64.b64decode(span["spanId"]).hex()
    converted = ExportTraceServiceRequest.FromString(otlp.from_json(as_json))
    assert MessageToDict(converted) == MessageToDict(request)
    with pytest.raises(DecodeError):
        otlp.from_json({"resourceSpans": [{"scopeSpans": [{"spans": ["not a span"]}]}]})


# The buffer ---------------------------------------------------------------------------------


def spans(n: int, size: int = 100) -> list[otlp.Group]:
    bodies = [otlp.span(name="s", start_ns=i + 1, end_ns=i + 2, attrs={"pad": "x" * size,
                                                                       "i": i})
              for i in range(n)]
    return [otlp.Group(otlp.resource({"service.name": "t"}), otlp.scope("t"), bodies)]


def sequence(batch) -> list[int]:
    out = []
    for group in batch.groups:
        for body in group.spans:
            decoded = ExportTraceServiceRequest.FromString(otlp.join([otlp.Group(
                group.resource, group.scope, [body])])).resource_spans[0].scope_spans[0].spans[0]
            out.append({a.key: a.value for a in decoded.attributes}["i"].int_value)
    return out


def test_buffer_drops_the_oldest_past_its_cap_and_counts_them(tmp_path):
    one = len(spans(1)[0].spans[0])
    buffer = Buffer(tmp_path / "b.sqlite3", max_bytes=one * 50)
    buffer.add(spans(80), at=1.0)
    stats = buffer.stats()
    assert stats["dropped"] == 30 and stats["buffered"] == 50 and stats["accepted"] == 80
    batch = buffer.next_batch(max_spans=10)
    assert sequence(batch) == list(range(30, 40))  # oldest survivors first, in order
    buffer.ack(batch)
    stats = buffer.stats()
    assert stats["uploaded"] == 10 and stats["buffered"] == 40
    assert stats["accepted"] == (stats["uploaded"] + stats["dropped"] + stats["rejected"]
                                 + stats["buffered"])


def test_buffer_survives_a_restart_and_resends_an_unacknowledged_batch(tmp_path):
    buffer = Buffer(tmp_path / "b.sqlite3")
    buffer.add(spans(5), at=1.0)
    first = buffer.next_batch()
    buffer.close()  # the agent died after sending, before Hangar's answer
    reopened = Buffer(tmp_path / "b.sqlite3")
    again = reopened.next_batch()
    assert sequence(again) == sequence(first) == [0, 1, 2, 3, 4]
    assert again.groups[0].spans == first.groups[0].spans  # same bytes: same span ids
    reopened.ack(again, rejected=1)
    assert reopened.next_batch() is None
    stats = reopened.stats()
    assert (stats["uploaded"], stats["rejected"], stats["buffered"]) == (4, 1, 0)


def test_spans_dropped_while_on_their_way_count_as_delivered(tmp_path):
    one = len(spans(1)[0].spans[0])
    buffer = Buffer(tmp_path / "b.sqlite3", max_bytes=one * 10)
    buffer.add(spans(10), at=1.0)
    batch = buffer.next_batch(max_spans=4)
    buffer.add(spans(3), at=2.0)  # over the cap: three of the in-flight four go
    assert buffer.stats()["dropped"] == 3
    buffer.ack(batch)  # ...but Hangar had them all
    stats = buffer.stats()
    assert (stats["uploaded"], stats["dropped"], stats["buffered"]) == (4, 0, 9)


# Bundles -----------------------------------------------------------------------------------


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def signed(tmp_path):
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    data = tarball({"manifest.json": json.dumps({"entry": "python main.py",
                                                  "env": {"A": 1}}).encode(),
                    "main.py": b"print('hi')\n"})
    path = tmp_path / "b.tar.gz"
    path.write_bytes(data)
    digest = hashlib.sha256(data).digest()
    return {"path": path, "digest": f"sha256:{digest.hex()}", "size": len(data),
            "signature": base64.b64encode(key.sign(digest)).decode(), "key_id": "k1",
            "team_keys": {"k1": public}, "key": key}


def check(signed, **overrides):
    args = {k: signed[k] for k in ("digest", "signature", "key_id", "team_keys", "size")}
    args.update(overrides)
    bundles.verify(signed["path"], **args)


def test_a_signed_bundle_verifies_and_unpacks(signed, tmp_path):
    check(signed)
    manifest = bundles.unpack(signed["path"], tmp_path / "tree")
    assert (tmp_path / "tree" / "main.py").read_text() == "print('hi')\n"
    assert manifest.env == {"A": "1"}
    assert bundles.command(manifest) == [sys.executable, "main.py"]


def test_a_tampered_bundle_is_refused(signed):
    data = bytearray(signed["path"].read_bytes())
    data[-5] ^= 0xFF
    signed["path"].write_bytes(bytes(data))
    with pytest.raises(bundles.Refused, match="^tampered: the file's sha256"):
        check(signed)
    with pytest.raises(bundles.Refused, match="^tampered: .* bytes"):
        check(signed, size=signed["size"] + 1)


def test_unsigned_and_wrongly_signed_bundles_are_refused(signed):
    with pytest.raises(bundles.Refused, match="^unsigned"):
        check(signed, signature=None)
    with pytest.raises(bundles.Refused, match="^wrongly signed: key 'k9' is not"):
        check(signed, key_id="k9")
    other = Ed25519PrivateKey.generate()
    forged = base64.b64encode(other.sign(bytes.fromhex(signed["digest"][7:]))).decode()
    with pytest.raises(bundles.Refused, match="^wrongly signed: the signature does not verify"):
        check(signed, signature=forged)


def test_unpack_refuses_paths_out_of_the_tree_and_a_missing_manifest(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(tarball({"manifest.json": b'{"entry": ["true"]}', "../escape": b"x"}))
    with pytest.raises(bundles.Refused, match="cannot be unpacked"):
        bundles.unpack(evil, tmp_path / "tree")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "tree").exists()
    bare = tmp_path / "bare.tar.gz"
    bare.write_bytes(tarball({"main.py": b""}))
    with pytest.raises(bundles.Refused, match="no manifest.json"):
        bundles.unpack(bare, tmp_path / "tree")


# The loopback receiver ---------------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path):
    buffer = Buffer(tmp_path / "b.sqlite3")
    receiver = Receiver(buffer, time.time)
    receiver.start()
    yield receiver
    receiver.stop()
    buffer.close()


def post(receiver, body: bytes, content_type: str, token: str | None = None, **headers):
    request = urllib.request.Request(
        f"{receiver.endpoint}/v1/traces", data=body, method="POST",
        headers={"Content-Type": content_type,
                 "Authorization": f"Bearer {token or receiver.secret}", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_receiver_buffers_protobuf_json_and_gzip(receiver):
    body = official_request().SerializeToString()
    assert post(receiver, body, otlp.PROTOBUF)[0] == 200
    assert post(receiver, gzip.compress(body), otlp.PROTOBUF, **{"Content-Encoding": "gzip"}
                )[0] == 200
    status, reply = post(receiver, json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "j"}]}]}]}).encode(), otlp.JSON)
    assert (status, json.loads(reply)) == (200, {})
    assert receiver.buffer.stats()["buffered"] == 13


def test_receiver_refuses_strangers_and_garbage_and_loses_nothing(receiver):
    body = official_request().SerializeToString()
    assert post(receiver, body, otlp.PROTOBUF, token="guess")[0] == 401
    assert post(receiver, b"\x0a\xff\xff", otlp.PROTOBUF)[0] == 400
    status, reply = post(receiver, b"{not json", otlp.JSON)
    assert status == 400 and "not an OTLP trace export" in json.loads(reply)["message"]
    assert post(receiver, body, "text/plain")[0] == 415
    assert receiver.buffer.stats()["accepted"] == 0
    assert post(receiver, body, otlp.PROTOBUF)[0] == 200
    assert receiver.buffer.stats()["buffered"] == 6


def test_the_opentelemetry_sdk_exports_to_the_receiver_unchanged(receiver, monkeypatch):
    """What a bundle's program does: the standard SDK and exporter, configured
    only by the variables the agent hands its child."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    for name, value in receiver.child_env().items():
        monkeypatch.setenv(name, value)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    tracer = provider.get_tracer("bundle")
    with tracer.start_as_current_span("invoke_agent"), tracer.start_as_current_span("chat"):
        pass
    provider.shutdown()
    assert receiver.buffer.stats()["buffered"] == 2


# The supervisor and the clock ---------------------------------------------------------------


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition never became true")


def test_restart_backoff_doubles_on_the_injected_clock_and_resets_once_stable(tmp_path):
    clock = ManualClock()
    exits = []
    flag = tmp_path / "crash"
    flag.write_text("1")
    script = ("import os, sys, time\n"
              f"sys.exit(3) if os.path.exists({str(flag)!r}) else time.sleep(60)\n")
    supervisor = Supervisor(clock, tmp_path / "logs", on_exit=exits.append, stable_after=30,
                            backoff_initial=1, backoff_max=8)
    target = Target(digest="d" * 64, version="v1", argv=[sys.executable, "-c", script],
                    cwd=tmp_path)
    supervisor.set(target)
    try:
        starts = []
        for expected_delay in (1, 2, 4, 8, 8):
            supervisor.tick()  # starts it
            starts.append(clock.now())
            wait_until(lambda: (supervisor.tick(), supervisor.pid is None and
                                supervisor.failures == len(starts))[1])
            assert supervisor.health() == "Degraded" and supervisor.phase() == "crashlooping"
            clock.advance(expected_delay - 0.5)
            supervisor.tick()
            assert supervisor.pid is None  # not yet: still backing off
            clock.advance(0.5)
        assert [e.code for e in exits] == [3] * 5 and all(e.crashed for e in exits)
        assert "exited with code 3" in supervisor.last_error
        flag.unlink()
        supervisor.tick()
        wait_until(lambda: supervisor.pid is not None)
        clock.advance(30)
        supervisor.tick()
        assert supervisor.health() == "Healthy" and supervisor.failures == 0
    finally:
        supervisor.stop()


def test_nothing_runs_without_a_target_and_a_stop_is_not_a_crash(tmp_path):
    clock = ManualClock()
    exits = []
    supervisor = Supervisor(clock, tmp_path / "logs", on_exit=exits.append)
    assert supervisor.health() == "Missing" and supervisor.phase() == "idle"
    supervisor.set(Target(digest="d" * 64, version="v1", cwd=tmp_path,
                          argv=[sys.executable, "-c", "import time; time.sleep(60)"]))
    supervisor.tick()
    pid = supervisor.pid
    assert pid is not None
    supervisor.set(None)  # quarantine
    assert supervisor.pid is None and supervisor.health() == "Missing"
    assert len(exits) == 1 and exits[0].stopped and not exits[0].crashed
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_offset_file_clock_moves_a_waiting_timer_days_ahead(tmp_path):
    path = tmp_path / "offset"
    clock = OffsetFileClock(path)
    assert abs(clock.now() - time.time()) < 1
    results = []
    waiter = threading.Thread(target=lambda: results.append(
        clock.wait(threading.Event(), 2 * 86400)))
    waiter.start()
    path.write_text(str(3 * 86400))  # three days pass
    waiter.join(timeout=20)
    assert results == [False]  # the two-day wait ran out, with no event
    assert clock.now() - time.time() == pytest.approx(3 * 86400, abs=1)


def test_the_agent_needs_only_the_standard_library_and_cryptography():
    """What a device installs: Python and ``cryptography`` (edge_agent/pyproject.toml)."""
    import ast

    import hangar_edge

    package = Path(hangar_edge.__file__).parent
    found = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found.add(node.module.split(".")[0])
    assert found - set(sys.stdlib_module_names) == {"cryptography"}
