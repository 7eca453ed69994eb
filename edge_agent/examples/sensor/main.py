"""Example edge bundle: a sensor agent that reads a value every
SENSOR_INTERVAL_S seconds, asks an offline deterministic "model" whether it is
an anomaly, and exports a trace per reading (an ``invoke_agent`` root and a
``chat`` child with GenAI attributes) as OTLP/JSON to the endpoint hangar-edge
gives it (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``).
The agent buffers the spans on the device and uploads them when Hangar is
reachable, so this program never needs the network. Standard library only.

SENSOR_FAIL_AFTER_S=<n> makes it exit with status 1 after n seconds (a
crashing release, for trying rollbacks)."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import urllib.request

ENDPOINT = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318").rstrip("/")
HEADERS = dict(item.split("=", 1) for item in
               os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", "").split(",") if "=" in item)
INTERVAL = float(os.environ.get("SENSOR_INTERVAL_S", "5"))
FAIL_AFTER = os.environ.get("SENSOR_FAIL_AFTER_S")
VERSION = os.environ.get("HANGAR_EDGE_BUNDLE_VERSION", "dev")
running = True


def stop(*_):
    global running
    running = False


def attr(key, value):
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": str(value)}}


def classify(reading: float) -> tuple[str, int, int]:
    """The offline model: a threshold, with token counts as a real one reports."""
    label = "anomaly" if abs(reading) > 0.9 else "normal"
    return label, 24, 3


def export(n: int) -> None:
    start = time.time_ns()
    reading = math.sin(n / 3.0)
    label, tokens_in, tokens_out = classify(reading)
    trace_id, root_id, chat_id = os.urandom(16).hex(), os.urandom(8).hex(), os.urandom(8).hex()
    end = time.time_ns()
    spans = [
        {"traceId": trace_id, "spanId": root_id, "name": "invoke_agent", "kind": 2,
         "startTimeUnixNano": str(start), "endTimeUnixNano": str(end + 2_000_000),
         "attributes": [attr("gen_ai.operation.name", "invoke_agent"),
                        attr("gen_ai.agent.name", "sensor"), attr("sensor.reading", reading),
                        attr("sensor.label", label), attr("sensor.sequence", n)]},
        {"traceId": trace_id, "spanId": chat_id, "parentSpanId": root_id,
         "name": "chat edge-threshold-1", "kind": 3,
         "startTimeUnixNano": str(start + 100_000), "endTimeUnixNano": str(end + 1_000_000),
         "attributes": [attr("gen_ai.operation.name", "chat"), attr("gen_ai.system", "local"),
                        attr("gen_ai.request.model", "edge-threshold-1"),
                        attr("gen_ai.usage.input_tokens", tokens_in),
                        attr("gen_ai.usage.output_tokens", tokens_out)]},
    ]
    body = {"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", "sensor"),
                                    attr("service.version", VERSION)]},
        "scopeSpans": [{"scope": {"name": "sensor"}, "spans": spans}]}]}
    request = urllib.request.Request(
        f"{ENDPOINT}/v1/traces", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **HEADERS})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def main() -> int:
    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    print(f"sensor {VERSION} exporting to {ENDPOINT} every {INTERVAL}s", flush=True)
    n = 0
    while running:
        if FAIL_AFTER is not None and time.monotonic() - started >= float(FAIL_AFTER):
            print("sensor: simulated failure", flush=True)
            return 1
        try:
            export(n)
            n += 1
        except OSError as exc:  # the agent restarting: try again next time
            print(f"sensor: export failed: {exc}", flush=True)
        deadline = time.monotonic() + INTERVAL
        while running and time.monotonic() < deadline:
            time.sleep(min(0.1, INTERVAL))
    print(f"sensor: stopping after {n} readings", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
