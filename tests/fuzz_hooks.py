"""Schemathesis hooks for tests/test_api_schemathesis.py (loaded by the `st`
process through ``SCHEMATHESIS_HOOKS``).

The fuzzer authenticates with one team admin's token. Two calls would end
its run early, every later answer being a 401: revoking that token and
deleting that team. Those two calls are pointed at an id that does not exist
(a 404, as for any unknown id); every other call on those routes, including
on the tokens and teams the fuzzer made itself, goes through."""
from __future__ import annotations

import os

import schemathesis

NOWHERE = 2**62
PROTECTED = {
    ("DELETE", "/api/v1/tokens/{token_id}", "token_id"): os.environ.get("HANGAR_FUZZ_TOKEN_ID"),
    ("DELETE", "/api/v1/teams/{team_id}", "team_id"): os.environ.get("HANGAR_FUZZ_TEAM_ID"),
}


@schemathesis.hook
def before_call(context, case, kwargs):
    for (method, path, name), value in PROTECTED.items():
        parameters = case.path_parameters or {}
        if case.method.upper() == method and case.path == path and value is not None \
                and str(parameters.get(name)) == value:
            parameters[name] = NOWHERE

