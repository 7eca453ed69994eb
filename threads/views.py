"""The threads pages: a real-time deployment's threads (status, last run,
metadata search) and a thread's page (its runs in order with the strategy each
applied, duration, cost and trace; its checkpoints with the diff from one to the
next). Both refresh themselves (htmx polling of the same view, ``hx-select``).
Viewers read; another team's thread is a 404."""
from __future__ import annotations

import difflib
import json

from django.db.models import OuterRef, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from deployments import access
from deployments.models import Deployment
from deployments.web import request_actor, scoped_view
from telemetry.models import Run

from .models import Checkpoint, Thread, ThreadRun


def _metadata_filter(query: str) -> dict:
    """``key=value`` pairs separated by spaces (values may be JSON)."""
    found = {}
    for part in query.split():
        key, sep, value = part.partition("=")
        if not sep or not key:
            continue
        try:
            found[key] = json.loads(value)
        except ValueError:
            found[key] = value
    return found


@scoped_view
@require_GET
def deployment_threads(request: HttpRequest, deployment_id: int) -> HttpResponse:
    deployment = access.get_for(request_actor(request), Deployment.objects.select_related(
        "agent"), pk=deployment_id)
    q = request.GET.get("q", "").strip()
    last = ThreadRun.objects.filter(thread=OuterRef("pk")).order_by("-position")
    threads = (Thread.objects.filter(team_id=deployment.agent.team_id, agent=deployment.agent,
                                     environment=deployment.environment)
               .annotate(last_status=Subquery(last.values("status")[:1]),
                         last_at=Subquery(last.values("created_at")[:1]))
               .order_by("-updated_at"))
    wanted = _metadata_filter(q)
    if wanted:
        threads = threads.filter(metadata__contains=wanted)
    return render(request, "threads/thread_list.html", {
        "deployment": deployment, "threads": list(threads[:200]), "q": q,
        "searched": bool(wanted)})


def _diff(before, after) -> list[tuple[str, str]]:
    """Lines of a unified diff between two states, each with its kind."""
    a = json.dumps(before, indent=2, sort_keys=True).splitlines() if before is not None else []
    b = json.dumps(after, indent=2, sort_keys=True).splitlines() if after is not None else []
    lines = []
    for line in difflib.unified_diff(a, b, lineterm="", n=1):
        if line.startswith(("---", "+++")):
            continue
        kind = "add" if line.startswith("+") else "del" if line.startswith("-") else \
            "hunk" if line.startswith("@@") else "same"
        lines.append((kind, line))
    return lines


@scoped_view
@require_GET
def thread_detail(request: HttpRequest, thread_id) -> HttpResponse:
    thread = access.get_for(request_actor(request), Thread.objects.select_related("agent"),
                            pk=thread_id)
    runs = list(ThreadRun.objects.filter(thread=thread).order_by("position"))
    traces = {}
    ids = [r.trace_id for r in runs if r.trace_id]
    if ids:
        for row in Run.objects.filter(team_id=thread.team_id, trace_id__in=ids).values(
                "trace_id", "deployment_id", "cost_usd", "input_tokens", "output_tokens"):
            traces[row["trace_id"].hex] = row
    checkpoints = list(Checkpoint.objects.filter(thread=thread).order_by("number"))
    shown, previous = [], None
    for c in checkpoints:
        shown.append({"checkpoint": c, "pretty": json.dumps(c.values, indent=2, sort_keys=True),
                      "diff": _diff(previous, c.values)})
        previous = c.values
    deployment = (Deployment.objects.filter(agent_id=thread.agent_id,
                                            environment=thread.environment).first()
                  if thread.agent_id else None)
    return render(request, "threads/thread_detail.html", {
        "thread": thread, "deployment": deployment,
        "runs": [{"run": r, "trace": traces.get(r.trace_id)} for r in runs],
        "checkpoints": list(reversed(shown))})
