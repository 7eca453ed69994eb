"""Enrolment: once per data directory. The device's Ed25519 key pair is
generated into the data directory, its public half is sent with the enrolment
token, and Hangar answers with the device id, the device token (every later
call carries it) and the team's public signing keys, which bundles are
verified against from then on. No answer: retried with backoff; a refusal
(expired, used up or revoked token → 401 with the reason): the agent exits
with status 2 and says why."""
from __future__ import annotations

import logging
import threading

from .client import Client, Offline, ServerError
from .store import Store

log = logging.getLogger("hangar_edge")
ENROL_PATH = "api/v1/edge/enrol"
EXIT_ENROLMENT_REFUSED = 2


class EnrolmentRefused(Exception):
    pass


def team_keys(keys) -> dict[str, str]:
    """Hangar's ``[{key_id, public_key}]`` → ``{key_id: public_key}``."""
    return {str(k["key_id"]): k["public_key"] for k in keys or []
            if isinstance(k, dict) and "key_id" in k and "public_key" in k}


def enrol(store: Store, settings, state: dict, stopping: threading.Event) -> dict:
    """The device's identity: from the data directory, or by enrolling
    (which also fills ``state`` with the team keys and poll settings)."""
    identity = store.identity()
    if identity:
        return identity
    server, token = settings.server, settings.token
    if not server or not token:
        raise EnrolmentRefused("this data directory is not enrolled yet: pass --server and "
                               "--token (an enrolment token from Hangar)")
    client = Client(server, ca_file=settings.ca_file)
    payload = {"token": token, "public_key": store.public_key_b64(),
               "name": settings.name, "labels": settings.labels}
    delay = 1.0
    while not stopping.is_set():
        try:
            answer = client.post_json(ENROL_PATH, payload, ok=(200, 201)).json()
            break
        except Offline as exc:
            log.warning("enrolment: Hangar does not answer (%s); retrying in %.0fs", exc, delay)
        except ServerError as exc:
            if exc.status < 500 and exc.status != 429:
                raise EnrolmentRefused(f"Hangar refused the enrolment: {exc}") from None
            log.warning("enrolment: %s; retrying", exc)
            delay = exc.retry_after or delay
        settings.clock.wait(stopping, delay)
        delay = min(delay * 2, 60.0)
    else:
        raise EnrolmentRefused("stopped before enrolling")
    identity = {"server": server, "device_id": answer["device_id"],
                "device_token": answer["device_token"], "name": settings.name}
    store.save_identity(identity)
    state.update(team_keys=team_keys(answer.get("team_keys")),
                 poll_interval_s=answer.get("poll_interval_s"), jitter_s=answer.get("jitter_s"))
    store.save_state(state)
    log.info("enrolled as device %s", identity["device_id"])
    return identity
