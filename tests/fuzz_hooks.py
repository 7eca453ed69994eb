"""Schemathesis hooks for tests/test_api_schemathesis.py (loaded by the `st`
process through ``SCHEMATHESIS_HOOKS``).

The fuzzer authenticates with one team admin's token. Two calls would end
its run early, every later answer being a 401: revoking that token and
deleting that team. Those two calls are pointed at an id that does not exist
(a 404, as for any unknown id); every other call on those routes, including
on the tokens and teams the fuzzer made itself, goes through.

Calls on a deployment's dead letters are pointed at the seeded stream
deployment (``HANGAR_FUZZ_STREAM_DEPLOYMENT_ID``), whose dead letters are on
this run's Redis, so the fuzzed ids, cursors and selections reach the broker.

Batch calls are pointed at the seeded batch deployment, schedule and job run
(``HANGAR_FUZZ_BATCH``: their three ids), so fuzzed crons, zones and inputs
reach the verbs instead of stopping at a 404; deleting that schedule is
pointed at an id that does not exist, like the protected calls above.

A link over a nullable id (an edge group without a deployment answers
``"deployment_id": null``) would put ``None`` in a path; such a call is
pointed at an id that does not exist too. So is a call whose inferred link
put a value of another type in an integer path parameter: links are
inferred by name, and ``POST /edge/keys/rotate`` answers an edge signing
key's ``"key_id": "k_…"`` (a string) while ``/gateway-keys/{key_id}`` takes
a gateway key's integer id; the 422 that call gets is right, and not the
"schema-valid request rejected" the check would call it."""
from __future__ import annotations

import os

import schemathesis

NOWHERE = 2**62
PROTECTED = {
    ("DELETE", "/api/v1/tokens/{token_id}", "token_id"): os.environ.get("HANGAR_FUZZ_TOKEN_ID"),
    ("DELETE", "/api/v1/teams/{team_id}", "team_id"): os.environ.get("HANGAR_FUZZ_TEAM_ID"),
}


STREAM_DEPLOYMENT = os.environ.get("HANGAR_FUZZ_STREAM_DEPLOYMENT_ID")
_BATCH_IDS = (os.environ.get("HANGAR_FUZZ_BATCH") or "").split(",")
BATCH = dict(zip(("deployment_id", "schedule_id", "job_run_id"), _BATCH_IDS, strict=True)) \
    if len(_BATCH_IDS) == 3 else {}


def _batch(case) -> None:
    parameters = case.path_parameters or {}
    if "schedule_id" in parameters:
        parameters["schedule_id"] = NOWHERE if case.method.upper() == "DELETE" \
            else int(BATCH["schedule_id"])
    if "job_run_id" in parameters:
        parameters["job_run_id"] = int(BATCH["job_run_id"])
    if case.path == "/api/v1/schedules" and case.method.upper() == "POST" and \
            isinstance(case.body, dict) and "deployment_id" in case.body:
        case.body["deployment_id"] = int(BATCH["deployment_id"])


def _integer_parameters(case) -> set[str]:
    """The integer path parameters of a positive stateful call (values from
    links); none for the other phases, whose wrong types are meant."""
    meta = getattr(case, "meta", None)
    phase = getattr(getattr(meta, "phase", None), "name", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    if str(phase) != "stateful" or str(getattr(mode, "value", mode)) != "positive":
        return set()
    return {p.definition["name"] for p in case.operation.path_parameters
            if (p.definition.get("schema") or {}).get("type") == "integer"}


def _not_an_integer(value) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return False
    return not (isinstance(value, str) and value.lstrip("-").isdigit())


@schemathesis.hook
def before_call(context, case, kwargs):
    integers = _integer_parameters(case)
    for name, value in list((case.path_parameters or {}).items()):
        if value is None or value == "None" or (name in integers and _not_an_integer(value)):
            case.path_parameters[name] = NOWHERE
    if STREAM_DEPLOYMENT and "/dead-letters" in case.path and case.path_parameters:
        case.path_parameters["deployment_id"] = int(STREAM_DEPLOYMENT)
    if BATCH and (case.path.startswith("/api/v1/schedules") or
                  case.path.startswith("/api/v1/job-runs")):
        _batch(case)
    for (method, path, name), value in PROTECTED.items():
        parameters = case.path_parameters or {}
        if case.method.upper() == method and case.path == path and value is not None \
                and str(parameters.get(name)) == value:
            parameters[name] = NOWHERE

