"""A rollout on a driver that manages replicas (Kubernetes): what the
rollout seam (``deployments.traffic``) wants, as the two revisions' halves
of the whole-deployment spec (``runtimes.base.RolloutSplit``)."""
from __future__ import annotations

from collections.abc import Callable

from .. import traffic
from ..models import AgentVersion, Revision
from ..runtimes.base import InstanceSpec, RolloutSplit, Track
from .context import Pass

Template = Callable[[AgentVersion], tuple[InstanceSpec, dict[str, str]]]


def rollout_split(run: Pass, desired: int, template: Template) -> tuple[int, RolloutSplit | None]:
    """(replicas of the current revision, the other revision beside it), and
    ``run.split`` set for the health roll-up; (desired, None) with no rollout."""
    d = run.deployment
    run.split = split = traffic.split_for(d, desired)
    if split is None:
        return desired, None
    run.requeue(split.requeue_in)
    numbers = dict(Revision.objects.filter(deployment=d).values_list("pk", "number"))
    others = {pk: n for pk, n in split.others.items() if pk != d.revision_id and pk in numbers}
    if not others:
        return split.current, None
    stable_pk = max(others, key=lambda pk: (others[pk], pk))  # one stable beside the new one
    stable = Revision.objects.select_related("version").get(pk=stable_pk)
    pods, secret_env = template(stable.version or d.version)
    return split.current, RolloutSplit(
        stable=Track(revision=str(stable.number), replicas=others[stable_pk], template=pods,
                     secret_env=secret_env),
        active=str(numbers[split.active]) if split.active in numbers else None,
        preview=str(numbers[split.preview]) if split.preview in numbers else None)
