"""What a job is given and what it leaves: its unit spec (environment with the
input and TRACEPARENT) and, when it has finished, its outcome (output line,
tokens, items, logs tail, backoff of the next attempt)."""
from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from ..models import Deployment, JobRun
from ..reconciler.specs import instance_env
from ..runtimes.base import InstanceSpec

LOG_TAIL_LINES = 200
LOG_TAIL_CHARS = 16_000


def unit_name(run: JobRun) -> str:
    """The runtime name of the run's unit: stable, so a start is idempotent."""
    return f"job-{run.pk}"


def traceparent(trace_id: str) -> str:
    """W3C trace context for the job (version 00, sampled): its root span is a
    child of this span id, derived from the trace id so every start of the run
    gives the same one."""
    span_id = hashlib.sha256(f"hangar-job:{trace_id}".encode()).hexdigest()[:16]
    return f"00-{trace_id}-{span_id}-01"


def job_spec(run: JobRun, deployment: Deployment) -> InstanceSpec:
    version = deployment.version  # or the stable revision's, a canary decided (#15)
    if run.revision_id and run.revision_id != deployment.revision_id:
        version = (run.revision.version if run.revision else None) or version
    schedule = run.schedule
    name = run.unit_name or unit_name(run)
    env = instance_env(deployment, version, name)
    env.update({str(k): str(v) for k, v in (schedule.env or {}).items()})
    if run.input is not None:
        env["AGENT_INPUT"] = run.input if isinstance(run.input, str) else json.dumps(run.input)
    env.update({
        "TRACEPARENT": traceparent(run.trace_id),
        "HANGAR_JOB_RUN": str(run.pk),
        "HANGAR_SCHEDULE": schedule.name,
        "HANGAR_ATTEMPT": str(run.attempt),
        "HANGAR_OCCURRENCE": run.occurrence.isoformat(),
    })
    return InstanceSpec(
        deployment_id=deployment.pk, name=name, generation=deployment.generation,
        team=deployment.agent.team.slug, agent=deployment.agent.slug,
        pattern=deployment.agent.pattern, image=version.image, bundle=version.bundle,
        command=tuple(version.command or ()), env=env, cpu=float(version.cpu),
        memory_mb=version.memory_mb, port=None, health=None, version=str(version.number))


def tail(text: str) -> str:
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)[-LOG_TAIL_CHARS:]


def output_line(text: str) -> Any:
    """The last line of the output that is a JSON object or array, or None."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line[:1] in ("{", "["):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def usage(output: Any) -> dict[str, int | None]:
    """Tokens and items the job reported in its output line, when it did."""
    found: dict[str, int | None] = {"input_tokens": 0, "output_tokens": 0, "items": None}
    if not isinstance(output, dict):
        return found
    counts = output.get("usage") if isinstance(output.get("usage"), dict) else {}
    for key in ("input_tokens", "output_tokens"):
        value = counts.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            found[key] = value
    items = output.get("items")
    if isinstance(items, int) and not isinstance(items, bool) and items >= 0:
        found["items"] = items
    return found


def backoff(attempt: int, base_s: float, max_s: float, *, rng: random.Random | None = None
            ) -> float:
    """Seconds before attempt ``attempt + 1``: exponential (base × 2^(attempt−1),
    at most ``max_s``) with equal jitter (half fixed, half random), so retries
    of jobs that failed together spread out."""
    ceiling = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
