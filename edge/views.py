"""The fleet pages: devices (filters, search, online by last seen), a device
(its timeline and its telemetry), enrolment tokens, rollouts and their waves
with live progress. Reads through ``deployments.access``; writes through
``edge.actions`` with the operator role; htmx partials from the same templates."""
from __future__ import annotations

from datetime import timedelta

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from deployments import access
from deployments.errors import DomainError
from deployments.models import Role
from deployments.views.common import add_errors, htmx_redirect
from deployments.web import request_actor, scoped_view
from telemetry.models import Span

from . import actions, fleet
from .auth import instance_name
from .forms import DeviceFilterForm, EnrolmentTokenForm, RolloutForm
from .models import Bundle, Device, DeviceGroup, EdgeRollout, EnrolmentToken
from .rollouts import counts

DEVICES = Device.objects.select_related("group", "bundle")


def _page(request, template: str, partial: str, context: dict, status: int = 200):
    if request.htmx and request.headers.get("HX-Target") == partial:
        template += f"#{partial}"
    return render(request, template, context, status=status)


@scoped_view
@require_GET
def devices(request: HttpRequest) -> HttpResponse:
    actor = request_actor(request)
    groups = access.readable(actor, DeviceGroup.objects.order_by("name"))
    form = DeviceFilterForm(request.GET or None, groups=groups)
    rows = access.readable(actor, DEVICES.all())
    filters = form.cleaned_data if form.is_valid() else {}
    online = {"yes": True, "no": False}.get(filters.get("online") or "")
    group = filters.get("group")
    rows = fleet.filtered(rows, group_id=group.pk if group else None,
                          state=filters.get("state"), online=online,
                          health=filters.get("health"), q=filters.get("q"))
    rows = list(rows[:500])
    now = timezone.now()
    for d in rows:
        d.is_online = d.online(now)
    return _page(request, "edge/devices.html", "devices-table", {
        "form": form, "rows": rows, "query": request.GET.urlencode(),
        "online_count": sum(d.is_online for d in rows)})


def _spans(device: Device) -> list[Span]:
    if device.group.deployment_id is None:
        return []
    return list(Span.objects.filter(deployment_id=device.group.deployment_id,
                                    instance=instance_name(device.pk))
                .only("trace_id", "span_id", "start_ns", "name", "duration_ns", "status_code",
                      "error").order_by("-start_ns")[:50])


@scoped_view
@require_GET
def device_detail(request: HttpRequest, device_id: int) -> HttpResponse:
    actor = request_actor(request)
    device = access.get_for(actor, DEVICES.select_related("group__deployment"), pk=device_id)
    device.is_online = device.online()
    return _page(request, "edge/device.html", "device-live", {
        "device": device, "events": device.events.all()[:100], "spans": _spans(device),
        "can_operate": access.has_role(actor, device.team_id, Role.OPERATOR)})


VERBS = {"quarantine": actions.quarantine_device, "release": actions.release_device,
         "revoke": actions.revoke_device}


@scoped_view
@require_POST
def device_action(request: HttpRequest, device_id: int, verb: str) -> HttpResponse:
    actor = request_actor(request)
    device = access.get_for(actor, DEVICES.all(), Role.OPERATOR, pk=device_id)
    if verb not in VERBS:
        return HttpResponse(status=404)
    VERBS[verb](device, actor=actor)
    return htmx_redirect(request, f"/edge/devices/{device.pk}/")


def _tokens_context(actor, form=None, created=None) -> dict:
    groups = access.readable(actor, DeviceGroup.objects.order_by("name"))
    return {"form": form or EnrolmentTokenForm(groups=groups), "created": created,
            "groups": groups,
            "tokens": access.readable(actor, EnrolmentToken.objects.select_related("group"))[:200],
            "now": timezone.now()}


@scoped_view
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    """Enrolment tokens: create one for a group (its secret is in this answer only)."""
    actor = request_actor(request)
    if request.method == "GET":
        return _page(request, "edge/tokens.html", "tokens-panel", _tokens_context(actor))
    groups = access.readable(actor, DeviceGroup.objects.all())
    form = EnrolmentTokenForm(request.POST, groups=groups)
    if form.is_valid():
        data = form.cleaned_data
        try:
            group = access.get_for(actor, DeviceGroup.objects.all(), Role.OPERATOR,
                                   pk=data["group"].pk)
            token, secret = actions.create_enrolment_token(
                group, name=data["name"], max_uses=data["max_uses"],
                expires_at=timezone.now() + timedelta(hours=data["expires_in_hours"]),
                actor=actor)
        except DomainError as exc:
            if exc.status == 403:
                raise
            add_errors(form, exc)
        else:
            response = _page(request, "edge/tokens.html", "tokens-panel", _tokens_context(
                actor, created={"token": token, "secret": secret}), status=201)
            response["Cache-Control"] = "no-store"
            return response
    return _page(request, "edge/tokens.html", "tokens-panel",
                 _tokens_context(actor, form), status=422)


@scoped_view
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    actor = request_actor(request)
    token = access.get_for(actor, EnrolmentToken.objects.all(), Role.OPERATOR, pk=token_id)
    actions.revoke_enrolment_token(token, actor=actor)
    return htmx_redirect(request, "/edge/tokens/")


def _rollouts_context(actor, form=None) -> dict:
    groups = access.readable(actor, DeviceGroup.objects.order_by("name"))
    bundles = access.readable(actor, Bundle.objects.all())
    return {"form": form or RolloutForm(groups=groups, bundles=bundles),
            "rollouts": access.readable(actor, fleet.ROLLOUTS.select_related("group"))[:100],
            "bundles": bundles}


@scoped_view
@require_http_methods(["GET", "POST"])
def rollouts(request: HttpRequest) -> HttpResponse:
    actor = request_actor(request)
    if request.method == "GET":
        return _page(request, "edge/rollouts.html", "rollout-form", _rollouts_context(actor))
    form = RolloutForm(request.POST, groups=access.readable(actor, DeviceGroup.objects.all()),
                       bundles=access.readable(actor, Bundle.objects.all()))
    if form.is_valid():
        data = form.cleaned_data
        try:
            group = access.get_for(actor, DeviceGroup.objects.all(), Role.OPERATOR,
                                   pk=data["group"].pk)
            rollout = actions.start_rollout(
                group, data["bundle"], waves=data["waves"],
                health_threshold=data["health_threshold"],
                failure_threshold=data["failure_threshold"], actor=actor)
        except DomainError as exc:
            if exc.status == 403:
                raise
            add_errors(form, exc)
        else:
            return htmx_redirect(request, f"/edge/rollouts/{rollout.pk}/")
    return _page(request, "edge/rollouts.html", "rollout-form", _rollouts_context(actor, form),
                 status=422)


@scoped_view
@require_GET
def rollout_detail(request: HttpRequest, rollout_id: int) -> HttpResponse:
    actor = request_actor(request)
    rollout = access.get_for(actor, fleet.ROLLOUTS.select_related("group"), pk=rollout_id)
    waves = [{"wave": w, **counts(rollout, w)} for w in rollout.waves.all()]
    return _page(request, "edge/rollout.html", "rollout-live", {
        "rollout": rollout, "waves": waves,
        "can_operate": access.has_role(actor, rollout.team_id, Role.OPERATOR)})


@scoped_view
@require_POST
def rollout_action(request: HttpRequest, rollout_id: int, verb: str) -> HttpResponse:
    actor = request_actor(request)
    rollout = access.get_for(actor, EdgeRollout.objects.all(), Role.OPERATOR, pk=rollout_id)
    verbs = {"promote": actions.promote_rollout, "abort": actions.abort_rollout}
    if verb not in verbs:
        return HttpResponse(status=404)
    verbs[verb](rollout, actor=actor)
    return htmx_redirect(request, f"/edge/rollouts/{rollout.pk}/")


@scoped_view
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return redirect("edge:devices")
