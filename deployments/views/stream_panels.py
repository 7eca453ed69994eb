"""The stream pattern's panels on the deployment page, and the dead-letter forms.

``stream``: lag and pending over the last hour (the samples Hangar measured
from the broker), messages in and results out per minute, results per replica,
the dead-letter count and the cost per 1,000 messages (telemetry, in the
template). ``deadletters``: the newest dead letters, each to inspect, with
replay and purge of the ticked ones or of all — operators only; every form
error is shown in the panel (422), a broker that does not answer in the toast.
Both re-render on live events (``data-live-events`` in their templates).
"""
from __future__ import annotations

from contextlib import closing
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from .. import access, actions
from ..audit import Actor
from ..deadletters import BrokerUnavailable, store_for
from ..errors import DomainError
from ..models import AuditEvent, Deployment, Role
from ..streams.redis_deadletters import valid_id
from ..web import request_actor, scoped_view
from . import panels
from .panels import Panel

SHOWN = 20  # dead letters listed in the panel
CHART_W, CHART_H = 600, 120


class DeadLetterForm(forms.Form):
    """Which dead letters a replay or purge acts on: the ticked ``ids``, or
    ``scope=all``; purging all needs the deployment's name typed in ``confirm``."""

    scope = forms.ChoiceField(choices=[("selected", "Ticked"), ("all", "All")],
                              initial="selected")
    confirm = forms.CharField(required=False, max_length=200)

    def __init__(self, *args, deployment: Deployment, verb: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.deployment, self.verb = deployment, verb

    def clean(self) -> dict:
        data = super().clean()
        ids = [i.strip() for i in self.data.getlist("ids")] if self.is_bound else []
        if data.get("scope") == "all":
            data["ids"] = None
            if self.verb == "purge" and data.get("confirm", "").strip() != self.deployment.name:
                self.add_error("confirm", f"Purging every dead letter cannot be undone: type "
                                          f"{self.deployment.name} to confirm.")
            return data
        bad = [i for i in ids if not valid_id(i)]
        if bad:
            self.add_error(None, f"Not a dead-letter id: {', '.join(bad[:3])}.")
        elif not ids:
            self.add_error(None, "Tick at least one dead letter, or act on all of them.")
        data["ids"] = ids
        return data


def _history(deployment: Deployment) -> list[dict]:
    """Lag samples of the last hour, oldest first: ``at``, ``lag``, ``pending``."""
    samples = getattr(deployment, "stream_samples", None)
    if samples is None:
        return []
    since = timezone.now() - timedelta(hours=1)
    return list(samples.filter(at__gte=since).order_by("at").values("at", "lag", "pending")[:720])


def _chart(history: list[dict]) -> dict[str, Any]:
    """SVG polylines of lag and pending (the panel draws them server-side, so a
    live re-render redraws them too)."""
    points = [h for h in history if h["lag"] is not None]
    if len(points) < 2:
        return {"lag": "", "pending": "", "peak": max((h["lag"] for h in points), default=0)}
    start, end = points[0]["at"], points[-1]["at"]
    span = max((end - start).total_seconds(), 1)
    peak = max(max(h["lag"] for h in points), 1)

    def line(key: str) -> str:
        return " ".join(
            f"{(h['at'] - start).total_seconds() / span * CHART_W:.1f},"
            f"{CHART_H - (h[key] or 0) / peak * CHART_H:.1f}" for h in points)

    return {"lag": line("lag"), "pending": line("pending"), "peak": peak,
            "since": start, "until": end}


def stream_context(actor: Actor, deployment: Deployment) -> dict[str, Any]:
    history = _history(deployment)
    latest = history[-1] if history else None
    context: dict[str, Any] = {"chart": _chart(history), "latest": latest,
                               "width": CHART_W, "height": CHART_H}
    try:
        store = store_for(deployment)
    except DomainError as exc:
        return {**context, "error": str(exc.detail)}
    with closing(store):
        try:
            context["deadletters"] = store.dead_letter_count()
            context["throughput"] = store.throughput()
        except BrokerUnavailable as exc:
            context["error"] = str(exc.detail)
    return context


def last_action(deployment: Deployment) -> str:
    """The newest replay or purge of the deployment's dead letters, from the
    audit log (so every viewer, and a live re-render, still shows it)."""
    row = (AuditEvent.objects.filter(object_type="deployment", object_id=str(deployment.pk),
                                     action__startswith="deployment.deadletters.")
           .order_by("-pk").first())
    if row is None:
        return ""
    after = row.after or {}
    when = timezone.localtime(row.at).strftime("%H:%M:%S")
    if row.action.endswith(".replay"):
        text = f"Replayed {after.get('replayed', 0)} dead letter(s) to {after.get('source', '')}."
        if after.get("missing"):
            text += f" {len(after['missing'])} were no longer dead letters."
    else:
        text = f"Purged {after.get('purged', 0)} dead letter(s)."
    return f"{text} — {row.actor_label}, {when}"


def deadletters_context(actor: Actor, deployment: Deployment, *, form=None) -> dict[str, Any]:
    context: dict[str, Any] = {"form": form or DeadLetterForm(deployment=deployment),
                               "message": last_action(deployment), "items": [], "count": 0}
    try:
        store = store_for(deployment)
    except DomainError as exc:
        return {**context, "error": str(exc.detail)}
    with closing(store):
        try:
            context["items"] = store.dead_letters(limit=SHOWN)
            context["count"] = store.dead_letter_count()
        except BrokerUnavailable as exc:
            context["error"] = str(exc.detail)
    context["more"] = max(context["count"] - len(context["items"]), 0)
    return context


STREAM = Panel("stream", "deployments/panels/stream.html", stream_context)
DEADLETTERS = Panel("stream-deadletters", "deployments/panels/deadletters.html",
                    deadletters_context)


def _act(request: HttpRequest, deployment_id: int, verb: str) -> HttpResponse:
    actor = request_actor(request)
    deployment = access.get_for(actor, access.DEPLOYMENTS, Role.OPERATOR, pk=deployment_id)
    form = DeadLetterForm(request.POST, deployment=deployment, verb=verb)
    status = 422
    if form.is_valid():
        ids = form.cleaned_data["ids"]
        store = store_for(deployment)
        with closing(store):
            if verb == "replay":
                actions.replay_dead_letters(deployment, store, ids=ids, actor=actor)
            else:
                actions.purge_dead_letters(deployment, store, ids=ids, actor=actor)
        status, form = 200, None
    if not request.htmx:
        if status == 200:
            messages.success(request, last_action(deployment))
        else:
            messages.error(request, " ".join(e for errs in form.errors.values() for e in errs))
        return redirect("deployments:deployment", deployment_id=deployment.pk)
    panel = panels.render_context(DEADLETTERS, actor, deployment)
    panel.update(deadletters_context(actor, deployment, form=form))
    return render(request, DEADLETTERS.template,
                  {"deployment": deployment, "can_write": True, "panel": panel}, status=status)


@scoped_view
@require_POST
def dead_letters_replay(request: HttpRequest, deployment_id: int) -> HttpResponse:
    return _act(request, deployment_id, "replay")


@scoped_view
@require_POST
def dead_letters_purge(request: HttpRequest, deployment_id: int) -> HttpResponse:
    return _act(request, deployment_id, "purge")
