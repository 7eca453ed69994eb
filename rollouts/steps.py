"""Steps and analysis templates: what an operator writes, checked whole before
anything is saved; every error names the step (``steps[2].pause.duration_s``).

A canary's steps, in Argo's words::

    [{"set_weight": 10}, {"pause": {"duration_s": 30}}, {"analysis": {...}},
     {"set_weight": 50}, {"pause": {}}]

``pause`` without a duration waits for a person to promote. An analysis::

    {"interval_s": 10, "count": 3, "failure_limit": 0, "inconclusive_limit": 0,
     "min_runs": 20, "window_s": 60,
     "metrics": [{"name": "error_rate", "max": 0.05},
                 {"name": "cost_per_run", "max_ratio": 1.5}]}

Each metric is bounded absolutely (``max``) or relative to the stable
revision (``max_ratio``: canary ≤ ratio × stable), or both.
"""
from __future__ import annotations

from typing import Any

from deployments.errors import Invalid

METRICS = {
    "error_rate": "error rate",
    "p95_latency_ms": "p95 latency (ms)",
    "cost_per_run": "cost per run ($)",
    "tokens_per_run": "tokens per run",
}
ANALYSIS_DEFAULTS = {"interval_s": 10, "count": 3, "failure_limit": 0,
                     "inconclusive_limit": 0, "min_runs": 10, "window_s": 60}
ANALYSIS_LIMITS = {"interval_s": (1, 3600), "count": (1, 1000), "failure_limit": (0, 1000),
                   "inconclusive_limit": (0, 1000), "min_runs": (1, 100000),
                   "window_s": (1, 86400)}
MAX_STEPS = 50


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def analysis(raw: Any, where: str) -> dict:
    """A checked analysis template with its defaults filled in."""
    if not isinstance(raw, dict):
        raise Invalid({where: ["must be an object with metrics"]})
    unknown = set(raw) - set(ANALYSIS_DEFAULTS) - {"metrics"}
    if unknown:
        raise Invalid({where: [f"unknown field(s): {', '.join(sorted(unknown))}"]})
    out: dict[str, Any] = {}
    for key, default in ANALYSIS_DEFAULTS.items():
        value = raw.get(key, default)
        low, high = ANALYSIS_LIMITS[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise Invalid({f"{where}.{key}": [f"must be a whole number from {low} to {high}"]})
        out[key] = value
    metrics = raw.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        raise Invalid({f"{where}.metrics": ["give at least one metric"]})
    out["metrics"] = []
    for i, metric in enumerate(metrics):
        at = f"{where}.metrics[{i}]"
        if not isinstance(metric, dict):
            raise Invalid({at: ["must be an object"]})
        name = metric.get("name")
        if name not in METRICS:
            raise Invalid({f"{at}.name": [f"unknown metric {name!r}; one of "
                                          f"{', '.join(METRICS)}"]})
        extra = set(metric) - {"name", "max", "max_ratio"}
        if extra:
            raise Invalid({at: [f"unknown field(s): {', '.join(sorted(extra))}"]})
        if "max" not in metric and "max_ratio" not in metric:
            raise Invalid({at: ["give max (absolute) or max_ratio (relative to stable)"]})
        for key in ("max", "max_ratio"):
            if key in metric and (not _number(metric[key]) or metric[key] < 0):
                raise Invalid({f"{at}.{key}": ["must be a number ≥ 0"]})
        out["metrics"].append({k: metric[k] for k in ("name", "max", "max_ratio")
                               if k in metric})
    return out


def canary_steps(raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise Invalid({"steps": ["a canary needs a list of steps"]})
    if len(raw) > MAX_STEPS:
        raise Invalid({"steps": [f"at most {MAX_STEPS} steps"]})
    out = []
    last_weight = 0
    for i, step in enumerate(raw):
        at = f"steps[{i}]"
        if not isinstance(step, dict) or len(step) != 1:
            raise Invalid({at: ["each step is one of {\"set_weight\": n}, {\"pause\": {…}}, "
                                "{\"analysis\": {…}}"]})
        (kind, value), = step.items()
        if kind == "set_weight":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
                raise Invalid({f"{at}.set_weight": ["must be a whole percentage from 0 to 100"]})
            if value < last_weight:
                raise Invalid({f"{at}.set_weight": [f"weights only go up ({value} after "
                                                    f"{last_weight})"]})
            last_weight = value
            out.append({"set_weight": value})
        elif kind == "pause":
            if not isinstance(value, dict) or set(value) - {"duration_s"}:
                raise Invalid({f"{at}.pause": ["must be {} (until promoted) or "
                                               "{\"duration_s\": n}"]})
            duration = value.get("duration_s")
            if duration is not None and (not isinstance(duration, int) or isinstance(
                    duration, bool) or not 1 <= duration <= 86400):
                raise Invalid({f"{at}.pause.duration_s": ["must be whole seconds from 1 to "
                                                          "86400"]})
            out.append({"pause": {"duration_s": duration} if duration else {}})
        elif kind == "analysis":
            out.append({"analysis": analysis(value, f"{at}.analysis")})
        else:
            raise Invalid({at: [f"unknown step {kind!r}; one of set_weight, pause, analysis"]})
    return out


def describe(step: dict) -> str:
    """A step in words, for the timeline and the page."""
    (kind, value), = step.items()
    if kind == "set_weight":
        return f"set weight {value}%"
    if kind == "pause":
        return f"pause {value['duration_s']}s" if value.get("duration_s") else \
            "pause until promoted"
    names = ", ".join(m["name"] for m in value["metrics"])
    return f"analysis ({names}) ×{value['count']} every {value['interval_s']}s"
