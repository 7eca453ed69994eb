"""OTLP/HTTP ingestion on real PostgreSQL: both encodings, gzip, the error
matrix, dedupe, missing parents, huge attributes, runs and their LLM cost."""
from __future__ import annotations

import asyncio
import gzip
import json
import random
import time
from decimal import Decimal

import psycopg
import pytest
from django.db import connection
from django.test import Client
from genai_prices import Usage, calc_price

from telemetry import ingest, storage
from telemetry.models import FLAG_COST_UNKNOWN, FLAG_LLM, FLAG_ROOT, FLAG_TRUNCATED, Run, Span
from telemetry.receiver import OTLPReceiver

from .factories import DeploymentFactory
from .otlp_support import (
    JSON,
    PROTOBUF,
    agent_trace,
    export,
    give_token,
    llm_attrs,
    make_span,
    new_span_id,
    new_trace_id,
    post,
    status_message,
    to_json,
)


class Recorder:
    def __init__(self):
        self.calls = []

    def finished(self, team_id, deployment_id):
        self.calls.append((team_id, deployment_id))


@pytest.fixture(autouse=True)
def announcements(monkeypatch):
    """Record run.finished announcements instead of starting timer threads."""
    recorder = Recorder()
    monkeypatch.setattr(storage.live, "ANNOUNCER", recorder)
    return recorder


@pytest.fixture
def deployment(db):
    deployment = DeploymentFactory(agent__slug="bot")
    deployment.token = give_token(deployment)
    return deployment


@pytest.fixture
def client():
    return Client()


def stored() -> tuple[int, int]:
    return Span.objects.count(), Run.objects.count()


# Encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type,compress", [(PROTOBUF, False), (PROTOBUF, True),
                                                   (JSON, False), (JSON, True)])
def test_both_encodings_with_and_without_gzip(deployment, client, content_type, compress):
    request = export(agent_trace(calls=((12, 30), (100, 7))))
    body = request if content_type == PROTOBUF else to_json(request)
    response = post(client, deployment.token, body, content_type=content_type,
                    compress=compress)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith(content_type)
    assert response.content == (b"" if content_type == PROTOBUF else b"{}")
    run = Run.objects.get()
    assert (run.status, run.input_tokens, run.output_tokens, run.llm_spans, run.span_count) \
        == ("ok", 112, 37, 2, 3)
    assert run.name == "invoke_agent" and run.instance == "bot-1"
    assert run.version_id == deployment.version_id and run.team_id == deployment.agent.team_id
    assert Span.objects.filter(deployment_id=deployment.pk).count() == 3


def test_otlp_json_per_the_spec(deployment, client):
    """Hex ids, int64 as strings, enums as numbers, camelCase: as exporters send it."""
    start = time.time_ns()
    trace_id, span_id = new_trace_id().hex(), new_span_id().hex()
    document = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.instance.id",
                                     "value": {"stringValue": "bot-7"}}]},
        "scopeSpans": [{"scope": {"name": "manual"}, "spans": [{
            "traceId": trace_id, "spanId": span_id, "name": "invoke_agent", "kind": 2,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 2_000_000),
            "attributes": [
                {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "40"}},
                {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 2}}],
            "status": {"code": 2, "message": "tool failed"},
            "unknownField": "ignored"}]}]}]}
    response = post(client, deployment.token, document, content_type=JSON)
    assert response.status_code == 200, response.content
    run = Run.objects.get()
    assert run.trace_id.hex == trace_id and run.root_span_id == int.from_bytes(
        bytes.fromhex(span_id), "big", signed=True)
    assert (run.status, run.error, run.instance, run.duration_ms) == (
        "error", "tool failed", "bot-7", 2.0)
    assert (run.input_tokens, run.output_tokens) == (40, 2)


# Durability and the fast path --------------------------------------------------------------


async def asgi_call(app, body: bytes, headers: dict) -> list[dict]:
    """One POST /v1/traces through ``app`` as an ASGI server would; the messages sent."""
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    await app({"type": "http", "path": "/v1/traces", "method": "POST", "headers": raw},
              receive, send)
    return sent


def asgi_post(body: bytes, headers: dict) -> tuple[int, bytes]:
    """POST /v1/traces through the ASGI fast path (the web server's code path), then close
    its connections."""

    async def call():
        sent = await asgi_call(OTLPReceiver(None), body, headers)
        await storage.async_pool().close()
        return sent[0]["status"], sent[1]["body"]

    return asyncio.run(call())


@pytest.mark.django_db(transaction=True)
def test_fast_path_answers_2xx_only_once_the_spans_are_committed():
    deployment = DeploymentFactory()
    token = give_token(deployment)
    request = export(agent_trace(calls=((5, 6),)))
    status, body = asgi_post(request.SerializeToString(), {
        "Content-Type": PROTOBUF, "Authorization": f"Bearer {token}"})
    assert status == 200 and body == b""
    # Another connection sees the spans and the run at once: committed before the 2xx.
    params = connection.get_connection_params()
    params = {k: v for k, v in params.items() if k not in ("cursor_factory", "context")}
    with psycopg.connect(**params) as other:
        spans = other.execute("SELECT count(*) FROM telemetry_span WHERE deployment_id = %s",
                              [deployment.pk]).fetchone()[0]
        run = other.execute("SELECT input_tokens, output_tokens, status FROM telemetry_run "
                            "WHERE deployment_id = %s", [deployment.pk]).fetchone()
    assert spans == 2 and run == (5, 6, "ok")
    # The error matrix holds on the fast path too.
    assert asgi_post(b"\xff" * 50, {"Content-Type": PROTOBUF,
                                     "Authorization": f"Bearer {token}"})[0] == 400
    assert asgi_post(request.SerializeToString(), {
        "Content-Type": PROTOBUF, "Authorization": f"Bearer {deployment.pk}.nope"})[0] == 401
    assert asgi_post(request.SerializeToString(), {
        "Content-Type": PROTOBUF, "Authorization": "Bearer 999999.x"})[0] == 404
    # A retried export is ignored span by span; the run is not counted twice.
    assert asgi_post(request.SerializeToString(), {
        "Content-Type": PROTOBUF, "Authorization": f"Bearer {token}"})[0] == 200
    run = Run.objects.get(deployment_id=deployment.pk)
    assert (run.input_tokens, run.span_count) == (5, 2)
    ingest.forget_sources()


@pytest.mark.django_db(transaction=True)
def test_concurrent_exports_are_committed_together_and_counted_once(settings):
    """Group commit: with one connection, exports arriving while a COPY runs are
    written together; duplicates across them (a retry racing its original) and
    against stored spans are still stored and counted once."""
    settings.HANGAR_INGEST_CONNECTIONS = 1
    settings.HANGAR_INGEST_POOL = {**settings.HANGAR_INGEST_POOL, "min_size": 1, "max_size": 1}
    deployment = DeploymentFactory()
    token = give_token(deployment)
    traces = [agent_trace(calls=((i + 1, 1),)) for i in range(6)]
    bodies = [export(spans).SerializeToString() for spans in traces]
    bodies.append(bodies[0])  # a retry, concurrent with the original
    app = OTLPReceiver(None)
    headers = {"Content-Type": PROTOBUF, "Authorization": f"Bearer {token}"}
    copies = []

    async def post_all():
        writer = storage.group_writer()
        original = writer._copy

        async def counting(batch):
            copies.append(len(batch))
            return await original(batch)

        writer._copy = counting

        async def one(body):
            return (await asgi_call(app, body, headers))[0]["status"]

        statuses = await asyncio.gather(*(one(body) for body in bodies))
        await storage.async_pool().close()
        return statuses

    assert asyncio.run(post_all()) == [200] * 7
    assert len(copies) < 7 and sum(copies) == 7  # some COPYs carried several exports
    runs = Run.objects.filter(deployment_id=deployment.pk)
    assert runs.count() == 6 and sum(r.span_count for r in runs) == 12
    assert sorted(r.input_tokens for r in runs) == [1, 2, 3, 4, 5, 6]
    assert Span.objects.filter(deployment_id=deployment.pk).count() == 12
    ingest.forget_sources()


@pytest.mark.django_db(transaction=True)
def test_concurrent_exports_with_a_token_not_cached_authenticate_once(monkeypatch):
    """After a start (or when the cached deployment expires) the exports in flight
    with the same token share one database lookup; a wrong token still gets 401."""
    deployment = DeploymentFactory()
    token = give_token(deployment)
    calls = []
    original = ingest.handler._authenticate_and_close

    def counting(authorization):
        calls.append(authorization)
        time.sleep(0.05)  # the lookup is still running when the others arrive
        return original(authorization)

    monkeypatch.setattr(ingest.handler, "_authenticate_and_close", counting)
    app = OTLPReceiver(None)

    async def one(authorization: str) -> int:
        body = export(agent_trace()).SerializeToString()
        sent = await asgi_call(app, body, {"Content-Type": PROTOBUF,
                                           "Authorization": authorization})
        return sent[0]["status"]

    async def post_all():
        good, bad = f"Bearer {token}", f"Bearer {deployment.pk}.wrong"
        statuses = await asyncio.gather(*(one(good) for _ in range(5)),
                                        *(one(bad) for _ in range(3)))
        await storage.async_pool().close()
        return statuses

    assert asyncio.run(post_all()) == [200] * 5 + [401] * 3
    assert sorted(calls) == sorted([f"Bearer {deployment.pk}.wrong", f"Bearer {token}"])
    assert Run.objects.filter(deployment_id=deployment.pk).count() == 5
    ingest.forget_sources()


def test_spans_are_queryable_right_after_the_answer(deployment, client):
    spans = agent_trace()
    assert post(client, deployment.token, export(spans)).status_code == 200
    assert set(Span.objects.values_list("span_id", flat=True)) == {
        int.from_bytes(s.span_id, "big", signed=True) for s in spans}


# Binary COPY: every column, both write paths -----------------------------------------------


def test_span_rows_are_the_copy_columns():
    assert ingest.SpanRow._fields == storage.COLUMNS
    assert len(storage.COPY_TYPES) == len(storage.COLUMNS)


def edge_spans() -> list:
    """Spans whose columns take the edges of their types: ids with the high bit
    set (negative as int8), a parentless error root, a priced and an unpriced LLM
    call, a remote parent, a client span with no end, text needing escapes in
    COPY's text format, the largest timestamp."""
    trace_id = b"\xff" + new_trace_id()[1:]
    start = time.time_ns()
    root = make_span(trace_id=trace_id, span_id=b"\x80" + bytes(6) + b"\x01",
                     name="invoke_agent \t\\ü", start_ns=start, duration_ms=1234.567,
                     error="tool failed: ß\nline 2",
                     attrs={"gen_ai.operation.name": "invoke_agent"})
    priced = make_span(trace_id=trace_id, parent=root.span_id, span_id=b"\x7f" + b"\xff" * 7,
                       name="chat", start_ns=start + 1, kind=3,
                       attrs=llm_attrs(input_tokens=2**40, output_tokens=3))
    unpriced = make_span(trace_id=trace_id, parent=root.span_id, name="chat", start_ns=start + 2,
                         attrs=llm_attrs(model="no-such-model", system="nobody"))
    remote = make_span(trace_id=new_trace_id(), parent=new_span_id(), name="remote child",
                       start_ns=start + 3)
    remote.flags = 0x300
    endless = make_span(trace_id=new_trace_id(), name="", start_ns=start + 4, kind=5)
    endless.end_time_unix_nano = 0
    last = make_span(trace_id=new_trace_id(), name="far", start_ns=2**63 - 10, duration_ms=0)
    return [root, priced, unpriced, remote, endless, last]


def stored_rows(deployment_id: int) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT trace_id, span_id, start_ns, parent_span_id, deployment_id, "
                       "duration_ns, name, kind, status_code, instance, model, input_tokens, "
                       "output_tokens, cost_usd, flags, error, data FROM telemetry_span "
                       "WHERE deployment_id = %s ORDER BY start_ns", [deployment_id])
        return [(row[0].bytes, *row[1:-1], bytes(row[-1])) for row in cursor.fetchall()]


def expected_rows(request, deployment_id: int) -> list[tuple]:
    batch = ingest.extract(ingest.parse(request.SerializeToString(), ingest.PROTOBUF),
                           deployment_id=deployment_id, max_attribute_bytes=16384)
    return sorted((tuple(row) for row in batch.rows), key=lambda row: row[2])


def check_stored(request, deployment_id: int) -> None:
    """What the table holds is what ``extract`` made of ``request``, column for
    column, and the columns say what the spans say."""
    rows = stored_rows(deployment_id)
    assert rows == expected_rows(request, deployment_id)
    spans = sorted(request.resource_spans[0].scope_spans[0].spans,
                   key=lambda span: span.start_time_unix_nano)
    for row, span in zip(rows, spans, strict=True):
        assert row[0] == span.trace_id
        assert row[1] == int.from_bytes(span.span_id, "big", signed=True)
        assert row[2] == span.start_time_unix_nano
        assert row[6] == span.name and row[7] == span.kind
        assert row[16] == span.SerializeToString()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["django", "asgi"])
def test_every_column_is_stored_as_extracted(path):
    """The binary COPY (and, for a retried export, the staging table) writes each
    value in its column's type: a wrong type name in COPY_TYPES, or rows out of
    column order, would store other values or fail."""
    deployment = DeploymentFactory()
    token = give_token(deployment)
    headers = {"Content-Type": PROTOBUF, "Authorization": f"Bearer {token}"}

    def send(request) -> int:
        if path == "asgi":
            return asgi_post(request.SerializeToString(), headers)[0]
        return post(Client(), token, request).status_code

    spans = edge_spans()
    first = export(spans[:4], instance="bot-ü\t1")
    assert send(first) == 200
    check_stored(first, deployment.pk)
    # A retry with new spans: the old ones are skipped, the new ones go through staging.
    again = export(spans, instance="bot-ü\t1")
    assert send(again) == 200
    check_stored(again, deployment.pk)
    rows = stored_rows(deployment.pk)
    by_name = {row[6]: row for row in rows}
    root = by_name["invoke_agent \t\\ü"]
    assert (root[3], root[5], root[8], root[14]) == (None, 1_234_567_000, 2, FLAG_ROOT)
    assert root[15] == "tool failed: ß\nline 2" and root[9] == "bot-ü\t1"
    priced, unpriced = (row for row in rows if row[6] == "chat")
    assert priced[1] == 2**63 - 1 and priced[3] == root[1]
    assert (priced[10], priced[11], priced[12], priced[14]) == ("gpt-4o-mini", 2**40, 3, FLAG_LLM)
    assert priced[13] > 0 and priced[13].as_tuple().exponent == -12
    assert (unpriced[10], unpriced[13], unpriced[14]) == (
        "no-such-model", None, FLAG_LLM | FLAG_COST_UNKNOWN)
    assert by_name["remote child"][14] == FLAG_ROOT
    assert by_name[""][5] == 0 and by_name["far"][2] == 2**63 - 10
    run = Run.objects.get(deployment_id=deployment.pk, root_span_id=root[1])
    assert (run.span_count, run.llm_spans, run.unpriced_spans, run.input_tokens) == (
        3, 2, 1, 2**40 + 12)
    ingest.forget_sources()


# The error matrix --------------------------------------------------------------------------


def assert_nothing_stored():
    assert stored() == (0, 0)


def test_wrong_token_is_401(deployment, client):
    body = export(agent_trace())
    for token in (f"{deployment.pk}.wrong-secret", "not-a-token", "", None):
        response = post(client, token, body)
        assert response.status_code == 401, token
        assert "token" in status_message(response)
    response = client.post("/v1/traces", data=body.SerializeToString(),
                           content_type=PROTOBUF, headers={"Authorization": "Basic abc"})
    assert response.status_code == 401
    assert_nothing_stored()


def test_unknown_deployment_is_404(deployment, client):
    response = post(client, f"{deployment.pk + 1000}.secret", export(agent_trace()))
    assert response.status_code == 404
    assert "no deployment" in status_message(response)
    assert_nothing_stored()


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_random_bytes_are_400_with_a_reason(deployment, client, content_type):
    rng = random.Random(5)
    for size in (1, 7, 300, 5000):
        body = bytes(rng.getrandbits(8) for _ in range(size))
        response = post(client, deployment.token, body, content_type=content_type)
        assert response.status_code == 400, (size, response.content)
        assert status_message(response)
    assert_nothing_stored()


@pytest.mark.parametrize("document,reason", [
    ([1, 2], "object"),
    ({"resourceSpans": "nope"}, "must be a list"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}, "not hex"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "ab" * 16, "spanId": "cd" * 8,
                                                     "startTimeUnixNano": "soon"}]}]}]},
     "ExportTraceServiceRequest"),
])
def test_malformed_json_is_400_with_a_reason(deployment, client, document, reason):
    response = post(client, deployment.token, document, content_type=JSON)
    assert response.status_code == 400
    assert reason in status_message(response)
    assert_nothing_stored()


@pytest.mark.parametrize("mutate,reason", [
    (lambda s: setattr(s, "trace_id", b"\x01" * 15), "traceId"),
    (lambda s: setattr(s, "trace_id", bytes(16)), "traceId"),
    (lambda s: setattr(s, "span_id", b""), "spanId"),
    (lambda s: setattr(s, "parent_span_id", b"\x01\x02"), "parentSpanId"),
    (lambda s: setattr(s, "start_time_unix_nano", 0), "startTimeUnixNano"),
    (lambda s: setattr(s, "start_time_unix_nano", 2**64 - 1), "out of range"),
    # Open enums: any int32 parses, but the columns are smallint.
    (lambda s: setattr(s, "kind", 70_000), "kind"),
    (lambda s: setattr(s, "kind", -1), "kind"),
    (lambda s: setattr(s.status, "code", 40_000), "status code"),
])
def test_one_bad_span_rejects_the_whole_export(deployment, client, mutate, reason):
    """Validation precedes the write: no partial garbage."""
    spans = agent_trace() + agent_trace()
    mutate(spans[-1])
    response = post(client, deployment.token, export(spans))
    assert response.status_code == 400
    assert reason in status_message(response)
    assert_nothing_stored()


def test_unsupported_content_type_and_encoding_are_415(deployment, client):
    body = export(agent_trace())
    assert post(client, deployment.token, body, content_type="text/plain").status_code == 415
    response = post(client, deployment.token, body, headers={"Content-Encoding": "br"})
    assert response.status_code == 415 and "gzip" in status_message(response)
    assert_nothing_stored()


def test_corrupt_or_truncated_gzip_is_400(deployment, client):
    whole = gzip.compress(export(agent_trace()).SerializeToString())
    for body in (whole[:-10], b"\x1f\x8b" + b"\x00" * 20, whole + b"trailing"):
        response = post(client, deployment.token, body, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 400, body[-12:]
        assert "gzip" in status_message(response)
    assert_nothing_stored()


def test_too_large_is_413_before_and_after_decompression(deployment, client, settings):
    settings.HANGAR_INGEST_MAX_BYTES = 4096
    big = export([make_span(trace_id=new_trace_id(), attrs={"x": "y" * 3000}),
                  make_span(trace_id=new_trace_id(), attrs={"x": "z" * 3000})])
    response = post(client, deployment.token, big)
    assert response.status_code == 413 and "4096" in status_message(response)
    # Small on the wire, too large once inflated (a gzip bomb).
    bomb = gzip.compress(b"\x0a" + b"\x00" * 1_000_000)
    assert len(bomb) < 4096
    response = client.post("/v1/traces", data=bomb, content_type=PROTOBUF, headers={
        "Authorization": f"Bearer {deployment.token}", "Content-Encoding": "gzip"})
    assert response.status_code == 413 and "decompressed" in status_message(response)
    assert_nothing_stored()


def test_method_not_allowed(client):
    response = client.get("/v1/traces")
    assert response.status_code == 405 and response["Allow"] == "POST"


# Duplicates, missing parents, huge attributes ----------------------------------------------


def test_duplicated_span_ids_are_stored_once_and_counted_once(deployment, client):
    spans = agent_trace(calls=((10, 20),))
    doubled = spans + [spans[1]]  # the same LLM span twice in one export
    assert post(client, deployment.token, export(doubled)).status_code == 200
    run = Run.objects.get()
    assert (run.span_count, run.input_tokens, run.output_tokens) == (2, 10, 20)
    # The exporter retries the whole export, plus one new LLM call in the same trace.
    extra = make_span(trace_id=spans[0].trace_id, parent=spans[0].span_id, name="chat",
                      attrs=llm_attrs(input_tokens=1, output_tokens=2))
    assert post(client, deployment.token, export(spans + [extra])).status_code == 200
    run.refresh_from_db()
    assert (run.span_count, run.input_tokens, run.output_tokens) == (3, 11, 22)
    assert Span.objects.count() == 3


def test_children_before_their_root_and_a_missing_parent(deployment, client):
    trace_id = new_trace_id()
    root_id = new_span_id()
    start = time.time_ns()
    child = make_span(trace_id=trace_id, parent=root_id, name="chat", start_ns=start + 10,
                      attrs=llm_attrs(input_tokens=3, output_tokens=4))
    orphan = make_span(trace_id=trace_id, parent=new_span_id(), name="lost child",
                       start_ns=start + 20)
    assert post(client, deployment.token, export([child, orphan])).status_code == 200
    run = Run.objects.get()
    assert run.status == "incomplete" and run.root_span_id is None and run.input_tokens == 3
    # Not a run yet for the API: no root.
    root = make_span(trace_id=trace_id, span_id=root_id, name="invoke_agent", start_ns=start)
    assert post(client, deployment.token, export([root])).status_code == 200
    run.refresh_from_db()
    assert (run.status, run.name, run.span_count, run.input_tokens) == ("ok", "invoke_agent",
                                                                       3, 3)
    from telemetry import traces

    trace = traces.load(run)
    assert [n.name for n in trace.roots] == ["invoke_agent", "lost child"]
    assert trace.roots[1].missing_parent and not trace.roots[0].missing_parent
    assert [c.name for c in trace.roots[0].children] == ["chat"]


def test_a_huge_attribute_is_truncated_and_flagged(deployment, client, settings):
    settings.HANGAR_INGEST_MAX_ATTRIBUTE_BYTES = 1024
    huge = "ü" * 100_000  # 200 kB of UTF-8
    span = make_span(trace_id=new_trace_id(), attrs={"prompt": huge, "small": "ok"},
                     events=[{"name": "exception", "attributes": {"exception.stacktrace": huge}}])
    assert post(client, deployment.token, export([span])).status_code == 200
    row = Span.objects.get()
    assert row.flags & FLAG_TRUNCATED
    from telemetry import traces

    node = traces.load(Run.objects.get()).roots[0]
    assert node.truncated
    assert len(node.attributes["prompt"].encode()) < 1200
    assert node.attributes["prompt"].endswith("bytes]") and node.attributes["small"] == "ok"
    assert node.attributes["hangar.truncated_attributes"] == [
        "prompt", "event exception: exception.stacktrace"]
    assert len(node.events[0]["attributes"]["exception.stacktrace"].encode()) < 1200


def test_nul_characters_and_copy_escapes_survive(deployment, client):
    name = "tab\there\nnew\\line\x00nul"
    span = make_span(trace_id=new_trace_id(), name=name, attrs={"k": "v\x00"})
    assert post(client, deployment.token, export([span])).status_code == 200
    assert Span.objects.get().name == "tab\there\nnew\\linenul"


# Cost ------------------------------------------------------------------------------------------


def test_llm_cost_is_what_genai_prices_says(deployment, client):
    start = time.time_ns()
    calls = ((1234, 321), (50, 7000))
    request = export(agent_trace(model="gpt-4o-mini", calls=calls, start_ns=start))
    assert post(client, deployment.token, request).status_code == 200
    run = Run.objects.get()
    at = run.started_at
    expected = sum((calc_price(Usage(input_tokens=i, output_tokens=o), "gpt-4o-mini",
                               genai_request_timestamp=at).total_price for i, o in calls),
                   Decimal(0))
    assert run.cost_usd == expected and run.unpriced_spans == 0
    assert run.cost_status == "priced" and run.known_cost == expected
    span_costs = sorted(Span.objects.filter(flags__gte=FLAG_LLM).values_list("cost_usd",
                                                                              flat=True))
    assert sum(span_costs) == expected


def test_unknown_model_is_cost_unknown_and_flagged_never_zero(deployment, client):
    request = export(agent_trace(model="offline-echo", system="hangar-offline"))
    assert post(client, deployment.token, request).status_code == 200
    run = Run.objects.get()
    assert run.unpriced_spans == 1 and run.cost_status == "unknown" and run.known_cost is None
    span = Span.objects.get(flags__gte=FLAG_LLM)
    assert span.flags & FLAG_COST_UNKNOWN and span.cost_usd is None


def test_agent_span_usage_is_not_counted_twice(deployment, client):
    trace_id, root_id = new_trace_id(), new_span_id()
    root = make_span(trace_id=trace_id, span_id=root_id, attrs={
        "gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 99, "gen_ai.usage.output_tokens": 99})
    child = make_span(trace_id=trace_id, parent=root_id, name="chat",
                      attrs=llm_attrs(input_tokens=10, output_tokens=1))
    assert post(client, deployment.token, export([root, child])).status_code == 200
    run = Run.objects.get()
    assert (run.input_tokens, run.output_tokens, run.llm_spans) == (10, 1, 1)


def test_genai_attributes_read_by_key_match_the_span_attributes():
    """GenAI attributes looked up by key in a span's encoding (its attributes read
    as a map) agree with the span's attribute list on random spans: the same keys
    inside events are not taken, nor values of other types; of two names for the
    same count, the first listed wins."""
    rng = random.Random(11)
    slots = dict(ingest.GENAI_KEYS)
    keys = sorted(slots) + ["gen_ai.other", "gen_ai.usage.x"]
    for _ in range(1500):
        attrs = {}
        for key in rng.sample(keys, rng.randint(0, len(keys))):
            kind = rng.random()
            attrs[key] = (rng.randint(-5, 10**12) if kind < .4 else
                          "m" * rng.randint(0, 300) if kind < .7 else
                          rng.random() if kind < .8 else True if kind < .9 else
                          [1, 2] if kind < .95 else b"\x00")
        events = [{"name": "e", "attributes": {"gen_ai.usage.input_tokens": 7}}] \
            if rng.random() < .3 else []
        span = make_span(trace_id=new_trace_id(), attrs=attrs, events=events)
        found = {kv.key: ingest._value(kv.value) for kv in span.attributes}
        expected = [None] * 9
        for key, slot in ingest.GENAI_KEYS:
            if expected[slot] is None and isinstance(found.get(key), (int, float, str)):
                expected[slot] = found[key]
        assert ingest.genai_values(span.SerializeToString()) == expected, attrs


# Tokens ----------------------------------------------------------------------------------------


def test_new_deployments_get_a_token_naming_them(world):
    from deployments import actions
    from deployments.audit import Actor

    deployment = actions.create_deployment(world.agent, version=world.version,
                                           target=world.target, environment="canary",
                                           actor=Actor(user=world.users["admin"]))
    deployment.refresh_from_db()
    ident, _, secret = deployment.ingest_token.partition(".")
    assert ident == str(deployment.pk) and len(secret) >= 32
    ingest.forget_sources()
    source = ingest.authenticate(f"Bearer {deployment.ingest_token}")
    assert source.deployment_id == deployment.pk and source.team_id == world.team.pk
    # Tokens in the older format (no id) still authenticate.
    deployment.ingest_token = "legacy-token-without-an-id"
    deployment.save(update_fields=["ingest_token"])
    ingest.forget_sources()
    assert ingest.authenticate("Bearer legacy-token-without-an-id").deployment_id == \
        deployment.pk
    with pytest.raises(ingest.Unauthorized):
        ingest.authenticate("Bearer legacy-token-that-is-wrong")


def test_run_finished_is_announced_for_completed_runs(deployment, client, announcements):
    spans = agent_trace()
    assert post(client, deployment.token, export(spans[1:])).status_code == 200
    assert announcements.calls == []  # only a child: no run finished
    assert post(client, deployment.token, export(spans[:1])).status_code == 200
    assert announcements.calls == [(deployment.agent.team_id, deployment.pk)]


def test_publish_latest_run_sends_a_typed_event(deployment, client,
                                                django_capture_on_commit_callbacks):
    from unittest import mock

    assert post(client, deployment.token, export(agent_trace())).status_code == 200
    with mock.patch("telemetry.storage.live.publish") as publish:
        storage.publish_latest_run(deployment.agent.team_id, deployment.pk)
    run = Run.objects.get()
    publish.assert_called_once_with(deployment.agent.team_id, "run.finished",
                                    {"run_id": run.pk, "status": "ok"},
                                    deployment_id=deployment.pk)


def test_json_dump_of_status_is_json(deployment, client):
    response = post(client, "bad", {"resourceSpans": []}, content_type=JSON)
    assert response.status_code == 401
    assert set(json.loads(response.content)) == {"code", "message"}
