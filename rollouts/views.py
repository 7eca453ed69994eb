"""The rollout page: the strategy, the steps with the current one highlighted,
the weights, each analysis metric as a chart (canary beside stable, with its
threshold), and the actions an operator takes. Live: the page's section
re-renders itself (same view, a partial) when a ``rollout.changed`` or
``timeline`` event of the deployment arrives."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from deployments import access
from deployments.errors import Invalid, NotFound
from deployments.models import DeploymentEvent, Role
from deployments.web import request_actor, scoped_view

from . import actions
from .api import status_of
from .steps import METRICS, describe

CHART_W, CHART_H = 320, 90
ROLLOUT_REASONS = ("RolloutStarted", "RolloutWeight", "RolloutPaused", "RolloutPromote",
                   "RolloutPromoted", "RolloutAborted", "RolloutRetry", "RolloutUndone",
                   "RolloutPreview", "Health")


def charts(measurements) -> list[dict]:
    """Per metric: canary and stable as polylines over the measurements, and
    the threshold (the tightest bound at each point) as a dashed line."""
    out = []
    for name, label in METRICS.items():
        points = [(m, row) for m in measurements for row in m.metrics if row["name"] == name]
        if not points:
            continue
        values = [v for _, row in points for v in (row["canary"], row["stable"], row["limit"])
                  if v is not None]
        top = max(values, default=0) * 1.15 or 1
        n = len(points)

        def line(key, points=points, n=n, top=top):
            coords = []
            for i, (_, row) in enumerate(points):
                if row[key] is None:
                    continue
                x = 10 + (CHART_W - 20) * (i / (n - 1) if n > 1 else 0.5)
                coords.append(f"{x:.1f},{CHART_H - 8 - (CHART_H - 16) * row[key] / top:.1f}")
            return " ".join(coords)

        last = points[-1][1]
        out.append({"name": name, "label": label, "canary": line("canary"),
                    "stable": line("stable"), "limit": line("limit"),
                    "last": last, "count": n, "top": top})
    return out


def context(request: HttpRequest, deployment) -> dict:
    status = status_of(deployment)
    rollout = status["rollout"]
    steps = []
    if rollout is not None:
        for i, step in enumerate(rollout.steps):
            steps.append({"n": i + 1, "text": describe(step),
                          "state": "done" if i < rollout.step_index or rollout.finished
                          and not rollout.aborted else
                          "current" if i == rollout.step_index else "todo"})
    timeline = list(DeploymentEvent.objects.filter(deployment=deployment,
                                                   reason__in=ROLLOUT_REASONS)[:15])
    return {"deployment": deployment, "policy": status["policy"], "rollout": rollout,
            "steps": steps, "charts": charts(status["measurements"]),
            "stable_weight": 100 - rollout.weight if rollout is not None else 100,
            "measurements": status["measurements"][-8:][::-1], "timeline": timeline,
            "can_write": access.has_role(request_actor(request), deployment.agent.team_id,
                                         Role.OPERATOR),
            "preview_url": f"/gw/{deployment.agent.team.slug}/{deployment.agent.slug}/"
                           f"{deployment.environment}/preview/"}


@scoped_view
@require_GET
def rollout_page(request: HttpRequest, deployment_id: int) -> HttpResponse:
    deployment = access.get_for(request_actor(request), access.DEPLOYMENTS, pk=deployment_id)
    template = "rollouts/rollout.html#rollout" if request.htmx else "rollouts/rollout.html"
    return render(request, template, context(request, deployment))


VERBS = {"promote": lambda d, a: actions.promote(d, actor=a),
         "promote-full": lambda d, a: actions.promote(d, actor=a, full=True),
         "abort": lambda d, a: actions.abort(d, actor=a),
         "retry": lambda d, a: actions.retry(d, actor=a)}


@scoped_view
@require_POST
def rollout_action(request: HttpRequest, deployment_id: int, verb: str) -> HttpResponse:
    actor = request_actor(request)
    deployment = access.get_for(actor, access.DEPLOYMENTS, Role.OPERATOR, pk=deployment_id)
    if verb == "undo":
        raw = request.POST.get("revision", "").strip()
        if raw and not raw.isdigit():
            raise Invalid({"revision": [f"{raw!r} is not a revision number."]})
        try:
            actions.undo(deployment, actor=actor, revision=int(raw) if raw else None)
        except NotFound as exc:  # a revision that is not kept: say so on the page
            raise Invalid({"revision": [str(exc.detail)]}) from None
    elif verb in VERBS:
        VERBS[verb](deployment, actor)
    else:
        raise Invalid(f"Unknown action {verb!r}.")
    return redirect("rollouts:rollout", deployment_id=deployment.pk)
