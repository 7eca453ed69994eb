"""The deployment page (status, timeline, revisions, charts, logs) and what its
buttons do: scale, pause/stop, restart, roll back, delete."""
from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from .. import access, actions, figures, revisions
from ..audit import Actor
from ..errors import DomainError
from ..forms import ScaleForm, StateForm
from ..logs import log_response
from ..models import Deployment, DeploymentState, Health, Instance, Role
from ..web import request_actor, scoped_view
from . import panels as pattern_panels
from .common import add_errors, htmx_redirect


def _progress(deployment: Deployment, instances: list[Instance]) -> str:
    """How applying the latest generation goes, in one word for the page:
    "done", "applying", "paused", "waiting" (a target cannot be reached) or
    "stuck" (Degraded with nothing starting or waiting to restart: it will
    not get better without a change, so the page must not show a spinner)."""
    if deployment.observed_generation >= deployment.generation:
        return "done"
    if deployment.state == DeploymentState.PAUSED:
        return "paused"
    if deployment.health == Health.UNKNOWN:
        return "waiting"
    if deployment.health == Health.DEGRADED and not any(
            i.health == Health.PROGRESSING or i.next_restart_at for i in instances):
        return "stuck"
    return "applying"


def _deployment_context(actor: Actor, deployment: Deployment, **extra) -> dict:
    instances = list(Instance.objects.filter(deployment=deployment)
                     .select_related("version", "target", "revision"))
    return {
        "deployment": deployment,
        "instances": instances,
        "timeline": deployment.events.all()[:30],
        "revisions": revisions.history(deployment),
        "in_flight": deployment.observed_generation < deployment.generation,
        "progress": _progress(deployment, instances),
        "ready": sum(1 for i in instances if i.health == "Healthy"),
        "endpoints": [i.address for i in instances if i.address and i.phase == "running"],
        "can_write": access.has_role(actor, deployment.agent.team_id, Role.OPERATOR),
        "scale_form": extra.pop("scale_form", None)
        or ScaleForm(initial={"replicas": deployment.replicas}),
        "pattern_panels": [pattern_panels.render_context(p, actor, deployment)
                           for p in pattern_panels.panels_for(deployment)],
        **extra,
    }



@scoped_view
@require_GET
def deployment_detail(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = request_actor(request)
    deployment = access.get_for(actor, access.DEPLOYMENTS, pk=deployment_id)
    template = "deployments/deployment_detail.html"
    partials = {"deployment-status": "#status", "timeline": "#timeline",
                "revisions": "#revisions"}
    if request.htmx and request.htmx.target in partials:
        template += partials[request.htmx.target]
    elif request.htmx and (panel := pattern_panels.by_element_id(deployment,
                                                                  request.htmx.target or "")):
        return render(request, panel.template, {
            "deployment": deployment,
            "can_write": access.has_role(actor, deployment.agent.team_id, Role.OPERATOR),
            "panel": pattern_panels.render_context(panel, actor, deployment)})
    return render(request, template, _deployment_context(actor, deployment))


@scoped_view
@require_GET
def deployment_metrics(request: HttpRequest, deployment_id: int) -> JsonResponse:
    """Chart series for the deployment page (last hour)."""
    deployment = access.get_for(request_actor(request), Deployment.objects.all(), pk=deployment_id)
    since = timezone.now() - timedelta(hours=1)
    samples = list(deployment.samples.filter(at__gte=since).order_by("at").values(
        "at", "desired", "ready", "cpu_percent", "memory_bytes", "inflight")[:720])
    series = {
        "t": [s["at"].isoformat() for s in samples],
        "desired": [s["desired"] for s in samples],
        "ready": [s["ready"] for s in samples],
        "cpu": [s["cpu_percent"] for s in samples],
        "memory_mib": [round(s["memory_bytes"] / 2**20, 1) if s["memory_bytes"] else None
                       for s in samples],
        "inflight": [s["inflight"] for s in samples],
    }
    series.update(figures.series(deployment.pk, since))
    return JsonResponse(series)


def _confirmed(request: HttpRequest, deployment: Deployment) -> bool:
    return request.POST.get("confirm", "").strip() == deployment.name


@scoped_view
@require_POST
def deployment_delete(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = request_actor(request)
    deployment = access.get_for(actor, access.DEPLOYMENTS, Role.OPERATOR, pk=deployment_id)
    if not _confirmed(request, deployment):
        messages.error(request, f"Type {deployment.name} to confirm the deletion.")
        return htmx_redirect(request, reverse("deployments:deployment", args=[deployment.pk]))
    agent_id = deployment.agent_id
    actions.delete_deployment(deployment, actor=actor)
    messages.success(request, f"Deployment {deployment} deleted; its instances are being removed.")
    return htmx_redirect(request, reverse("deployments:agent", args=[agent_id]))


@scoped_view
@require_POST
def deployment_scale(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = request_actor(request)
    deployment = access.get_for(actor, access.DEPLOYMENTS, Role.OPERATOR, pk=deployment_id)
    form = ScaleForm(request.POST)
    status = 422
    if form.is_valid() and form.cleaned_data["replicas"] == 0 and \
            not _confirmed(request, deployment):
        form.add_error("replicas", f"Scaling to zero stops every instance: type "
                                   f"{deployment.name} to confirm.")
    if form.is_valid() and not form.errors:
        try:
            deployment = actions.scale_deployment(
                deployment, replicas=form.cleaned_data["replicas"], actor=actor)
        except DomainError as exc:
            add_errors(form, exc)
        else:
            status = 200
            form = ScaleForm(initial={"replicas": deployment.replicas})
            deployment = access.DEPLOYMENTS.get(pk=deployment.pk)
    message = (f"Scaling to {deployment.replicas}: generation {deployment.generation} is being "
               "applied; the status above follows it live." if status == 200 else "")
    context = _deployment_context(actor, deployment, scale_form=form, scale_message=message)
    if not request.htmx:
        if status == 200:
            messages.success(request, message)
            return redirect("deployments:deployment", deployment_id=deployment.pk)
        return render(request, "deployments/deployment_detail.html", context, status=status)
    response = render(request, "deployments/deployment_detail.html#scale", context, status=status)
    if status == 200:
        response["HX-Trigger"] = "hangar:scaled"
    return response


@scoped_view
@require_GET
def instance_logs(request: HttpRequest, deployment_id: int, name: str) -> HttpResponse:
    """The last lines of an instance's output, as a partial for the logs panel."""
    deployment = access.get_for(request_actor(request), access.DEPLOYMENTS, pk=deployment_id)
    instance = Instance.objects.filter(deployment=deployment, name=name).select_related(
        "target", "deployment__target").first()
    if instance is None:
        raise Http404("No such instance.")
    try:
        text = log_response(instance, tail=200, follow=False).content.decode()
    except DomainError as exc:
        text = f"[{exc.detail}]"
    return render(request, "deployments/deployment_detail.html#logs",
                  {"deployment": deployment, "instance": instance, "log_text": text})


@scoped_view
@require_POST
def deployment_restart(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = request_actor(request)
    deployment = access.get_for(actor, access.DEPLOYMENTS, Role.OPERATOR, pk=deployment_id)
    actions.restart_deployment(deployment, actor=actor)
    messages.success(request, "Restarting every instance, one by one.")
    return htmx_redirect(request, reverse("deployments:deployment", args=[deployment.pk]))


@scoped_view
@require_POST
def deployment_rollback(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """Re-apply the revision chosen on the deployment page."""
    actor = request_actor(request)
    deployment = access.get_for(actor, access.DEPLOYMENTS, Role.OPERATOR, pk=deployment_id)
    number = request.POST.get("revision", "")
    if not number.isdigit() or int(number) < 1:
        messages.error(request, "Choose a revision to roll back to.")
    else:
        try:
            deployment = actions.rollback_deployment(deployment, revision=int(number),
                                                     actor=actor)
        except DomainError as exc:
            messages.error(request, f"Cannot roll back: {exc.detail}")
        else:
            messages.success(request, f"Rolling back to revision {number}: it is applied as "
                                      f"revision {deployment.revision.number}.")
    return htmx_redirect(request, reverse("deployments:deployment", args=[deployment.pk]))


@scoped_view
@require_POST
def deployment_state(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = request_actor(request)
    deployment = access.get_for(actor, access.DEPLOYMENTS, Role.OPERATOR, pk=deployment_id)
    form = StateForm(request.POST)
    if not form.is_valid():
        return HttpResponse("Unknown state.", status=400)
    if form.cleaned_data["state"] == "stopped" and not _confirmed(request, deployment):
        messages.error(request, f"Type {deployment.name} to confirm stopping it.")
        return htmx_redirect(request, reverse("deployments:deployment", args=[deployment.pk]))
    actions.update_deployment(deployment, state=form.cleaned_data["state"], actor=actor)
    messages.success(request, f"Deployment is now {form.cleaned_data['state']}.")
    return htmx_redirect(request, reverse("deployments:deployment", args=[deployment.pk]))
