"""Team secrets. A new value is a new revision of every deployment whose
version refers to the secret; a secret still referred to cannot be deleted."""
from __future__ import annotations

from django.db import transaction
from django.db.models import F

from .. import audit, revisions
from ..audit import Actor
from ..errors import Conflict
from ..models import Deployment, Secret, Team
from .base import schedule_reconcile, validated_save


@transaction.atomic
def create_secret(team: Team, *, name: str, value: str, actor: Actor) -> Secret:
    secret = Secret(team=team, name=name, value=value)
    validated_save(secret)
    audit.record(actor, "secret.create", secret, after=audit.snapshot(secret))
    return secret


@transaction.atomic
def update_secret(secret: Secret, *, value: str, actor: Actor) -> Secret:
    before = audit.snapshot(secret)
    secret.value = value
    validated_save(secret, update_fields=["value", "updated_at"])
    audit.record(actor, "secret.update", secret, before=before, after=audit.snapshot(secret))
    _revise_for_secret(secret, actor=actor)
    return secret


def _revise_for_secret(secret: Secret, *, actor: Actor) -> None:
    """Instances read secret values when they start, so a new value is a new
    revision of every deployment whose version refers to the secret (rolled
    out like a new version)."""
    deployments = (Deployment.objects.select_for_update(of=("self",))
                   .select_related("agent", "version")
                   .filter(agent__team_id=secret.team_id).order_by("pk"))
    for deployment in deployments:
        if secret.name not in (deployment.version.secret_refs or ()):
            continue
        before = audit.snapshot(deployment)
        if revisions.record(deployment, actor=actor,
                            cause=f"secret {secret.name} changed") is None:
            continue
        Deployment.objects.filter(pk=deployment.pk).update(generation=F("generation") + 1)
        deployment.refresh_from_db()
        audit.record(actor, "deployment.update", deployment, before=before,
                     after=audit.snapshot(deployment))
        schedule_reconcile(deployment.pk)


@transaction.atomic
def delete_secret(secret: Secret, *, actor: Actor) -> None:
    deployed_refs = Deployment.objects.filter(agent__team_id=secret.team_id).values_list(
        "version__secret_refs", flat=True)
    if any(secret.name in (refs or []) for refs in deployed_refs):
        raise Conflict("A deployed version refers to this secret.")
    audit.record(actor, "secret.delete", secret, before=audit.snapshot(secret))
    secret.delete()
