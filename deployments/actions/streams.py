"""Stream deployments' dead letters: replaying them to the source and purging
them, each audited on the deployment with what was moved or removed.

The broker is changed first, then the audit row is written in the same
transaction; a broker that fails writes nothing (503), and a replay is
idempotent per dead letter (a replayed one is gone from the dead-letter
stream), so retrying after an error replays nothing twice."""
from __future__ import annotations

from django.db import transaction

from .. import audit, events
from ..audit import Actor
from ..models import Deployment
from ..streams import Replayed

# At most this many ids are written into one audit row (the count is always there).
AUDIT_IDS = 100


def _publish(deployment: Deployment, count: int) -> None:
    events.publish(deployment.agent.team_id, events.DeadLetters(count=count),
                   deployment_id=deployment.pk)


@transaction.atomic
def replay_dead_letters(deployment: Deployment, store, *, ids: list[str] | None,
                        actor: Actor) -> Replayed:
    """Move ``ids`` (``None``: every dead letter there is now) back to the source."""
    result = store.replay(ids)
    audit.record(actor, "deployment.deadletters.replay", deployment, after={
        "all": ids is None, "source": store.config.stream, "replayed": len(result.ids),
        "ids": result.ids[:AUDIT_IDS],
        "new_ids": result.new_ids[:AUDIT_IDS], "missing": result.missing[:AUDIT_IDS]})
    _publish(deployment, store.dead_letter_count())
    return result


@transaction.atomic
def purge_dead_letters(deployment: Deployment, store, *, ids: list[str] | None,
                       actor: Actor) -> int:
    """Delete ``ids`` (``None``: every dead letter there is now); how many went."""
    purged = store.purge(ids)
    audit.record(actor, "deployment.deadletters.purge", deployment, after={
        "all": ids is None, "purged": purged,
        "ids": (ids or [])[:AUDIT_IDS]})
    _publish(deployment, store.dead_letter_count())
    return purged
