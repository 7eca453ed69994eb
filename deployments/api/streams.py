"""A stream deployment's dead letters (`/deployments/{id}/dead-letters`): list
and inspect them (viewers), replay them to the source or purge them
(operators), each write audited through ``actions``."""
# No `from __future__ import annotations`: ninja reads the handlers' parameter
# types at import time.

from contextlib import closing

from .. import access, actions, deadletters
from ..deadletters import BrokerUnavailable
from ..errors import Conflict, may_raise
from ..models import Deployment, Role
from ..schemas import Id
from ..schemas.streams import (
    DeadLetterLimit,
    DeadLetterOut,
    DeadLetterPage,
    DeadLetterSelection,
    MessageId,
    PurgeOut,
    ReplayOut,
)
from .common import actor_of, router

DEPLOYMENTS = Deployment.objects.select_related("agent", "version")


def _store(request, deployment_id: int, needed: str = Role.VIEWER):
    deployment = access.get_for(actor_of(request), DEPLOYMENTS.all(), needed, pk=deployment_id)
    return deployment, deadletters.store_for(deployment)


@router.get("/deployments/{deployment_id}/dead-letters", response=DeadLetterPage,
            tags=["streams"])
@may_raise(Conflict, BrokerUnavailable)
def list_dead_letters(request, deployment_id: Id, limit: DeadLetterLimit = 50,
                      before: MessageId | None = None):
    """The messages the consumers gave up on, newest first. 409 if the
    deployment does not consume a stream with dead letters; 503 if its broker
    does not answer."""
    _, store = _store(request, deployment_id)
    with closing(store):
        items = store.dead_letters(limit=limit, after=before)
        count = store.dead_letter_count()
    return {"items": items, "count": count,
            "next": items[-1].id if len(items) == limit else None}


@router.post("/deployments/{deployment_id}/dead-letters/replay", response=ReplayOut,
             tags=["streams"])
@may_raise(BrokerUnavailable)
def replay_dead_letters(request, deployment_id: Id, payload: DeadLetterSelection):
    """Add the chosen dead letters (`ids`, or `"all": true`) back to the
    source stream with the fields they had, and remove them from the
    dead-letter stream; ids that are no longer dead letters come back in
    `missing`. Audited."""
    deployment, store = _store(request, deployment_id, Role.OPERATOR)
    with closing(store):
        result = actions.replay_dead_letters(deployment, store, ids=payload.ids,
                                             actor=actor_of(request))
    return {"replayed": len(result.ids), "ids": result.ids, "new_ids": result.new_ids,
            "missing": result.missing}


@router.post("/deployments/{deployment_id}/dead-letters/purge", response=PurgeOut,
             tags=["streams"])
@may_raise(BrokerUnavailable)
def purge_dead_letters(request, deployment_id: Id, payload: DeadLetterSelection):
    """Delete the chosen dead letters (`ids`, or `"all": true`). Audited."""
    deployment, store = _store(request, deployment_id, Role.OPERATOR)
    with closing(store):
        purged = actions.purge_dead_letters(deployment, store, ids=payload.ids,
                                            actor=actor_of(request))
    return {"purged": purged}


# After the writes: "replay" and "purge" would otherwise match `{msg_id}`.
@router.get("/deployments/{deployment_id}/dead-letters/{msg_id}", response=DeadLetterOut,
            tags=["streams"])
@may_raise(Conflict, BrokerUnavailable)
def get_dead_letter(request, deployment_id: Id, msg_id: MessageId):
    """One dead letter: the message's fields, its error and delivery count."""
    _, store = _store(request, deployment_id)
    with closing(store):
        return store.dead_letter(msg_id)
