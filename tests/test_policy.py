"""A tightened team policy refuses only changes that go up: more replicas, a
higher autoscaling maximum, resuming, a new version on a forbidden target kind.
The way down (pause, stop, scale down, scale to zero, autoscaling off) stays
open — through the verbs, the API, a budget's action and the UI, which answers
a refused change with a 4xx page that says why, never a 500."""
from __future__ import annotations

from unittest import mock

import pytest

from deployments import actions
from deployments.audit import Actor
from deployments.errors import Invalid
from deployments.models import Deployment, Policy
from telemetry import budgets, storage

from .factories import DeploymentFactory
from .test_telemetry_budgets import make_budget, spend
from .test_ui import HX, login


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr(storage.ANNOUNCER, "finished", lambda *args: None)


def admin(world) -> Actor:
    return Actor(user=world.users["admin"])


def fresh(world) -> Deployment:
    return Deployment.objects.select_related("agent", "target").get(pk=world.deployment.pk)


@pytest.fixture
def over_limit(world):
    """Five replicas with autoscaling up to eight, then the admin lowers the
    team's limit to two."""
    Deployment.objects.filter(pk=world.deployment.pk).update(
        replicas=5, autoscale_min=1, autoscale_max=8, autoscale_signal="cpu",
        autoscale_target=70)
    Policy.objects.filter(team=world.team).update(max_replicas=2)
    return fresh(world)


@pytest.fixture
def forbidden_kind(world):
    """Three replicas on a local target, then the policy allows only docker."""
    Deployment.objects.filter(pk=world.deployment.pk).update(replicas=3)
    Policy.objects.filter(team=world.team).update(allowed_target_kinds=["docker"])
    assert world.target.kind == "local"
    return fresh(world)


@pytest.mark.parametrize("changes", [
    {"state": "paused"},
    {"state": "stopped"},
    {"replicas": 3},  # down, though still above the limit
    {"replicas": 0},
    {"autoscale_signal": ""},  # autoscaling off
    {"autoscale_max": 6},  # a lower maximum, still above the limit
    {"replicas": 0, "autoscale_signal": ""},  # a budget's scale to zero
])
def test_the_way_down_passes_a_tightened_replica_limit(world, over_limit, changes):
    updated = actions.update_deployment(over_limit, actor=admin(world), **changes)
    for name, value in changes.items():
        assert getattr(updated, name) == value
    assert updated.generation == over_limit.generation + 1


@pytest.mark.parametrize("changes,field", [
    ({"replicas": 6}, "replicas"),
    ({"autoscale_max": 9}, "autoscale_max"),
])
def test_going_up_over_a_tightened_replica_limit_is_refused(world, over_limit, changes, field):
    with pytest.raises(Invalid) as refused:
        actions.update_deployment(over_limit, actor=admin(world), **changes)
    assert refused.value.detail == {
        field: ["Team policy allows at most 2 replicas per deployment."]}
    assert fresh(world).replicas == 5 and fresh(world).autoscale_max == 8


def test_turning_autoscaling_on_above_the_limit_is_refused(world, over_limit):
    actions.update_deployment(over_limit, autoscale_signal="", actor=admin(world))
    with pytest.raises(Invalid) as refused:
        actions.update_deployment(fresh(world), autoscale_signal="cpu", actor=admin(world))
    assert "autoscale_max" in refused.value.detail


def test_resuming_above_the_limit_is_refused_until_scaled_down(world, over_limit):
    paused = actions.update_deployment(over_limit, state="paused", actor=admin(world))
    with pytest.raises(Invalid) as refused:
        actions.update_deployment(paused, state="active", actor=admin(world))
    assert refused.value.detail["state"] == [
        "Team policy allows at most 2 replicas per deployment. Scale down to resume."]
    actions.update_deployment(fresh(world), replicas=2, autoscale_signal="", actor=admin(world))
    assert actions.update_deployment(fresh(world), state="active",
                                     actor=admin(world)).state == "active"


def test_a_new_version_within_the_replica_limit_rules_still_rolls_out(world, over_limit):
    """Same replica count, other code: nothing goes up that the limit counts."""
    updated = actions.update_deployment(over_limit, version=world.spare_version,
                                        actor=admin(world))
    assert updated.version_id == world.spare_version.pk


@pytest.mark.parametrize("changes", [
    {"state": "paused"}, {"state": "stopped"}, {"replicas": 1}, {"replicas": 0},
])
def test_the_way_down_passes_a_forbidden_target_kind(world, forbidden_kind, changes):
    updated = actions.update_deployment(forbidden_kind, actor=admin(world), **changes)
    for name, value in changes.items():
        assert getattr(updated, name) == value


@pytest.mark.parametrize("changes", [
    {"replicas": 4},
    {"version": "spare"},
])
def test_going_up_on_a_forbidden_target_kind_is_refused(world, forbidden_kind, changes):
    if "version" in changes:
        changes = {"version": world.spare_version}
    with pytest.raises(Invalid) as refused:
        actions.update_deployment(forbidden_kind, actor=admin(world), **changes)
    (message,) = refused.value.detail["target"]
    assert message.startswith("Team policy allows only targets of kind: docker (this one is local)")
    assert fresh(world).replicas == 3 and fresh(world).version_id == world.version.pk


def test_resuming_on_a_forbidden_target_kind_is_refused(world, forbidden_kind):
    actions.update_deployment(forbidden_kind, state="stopped", actor=admin(world))
    with pytest.raises(Invalid):
        actions.update_deployment(fresh(world), state="active", actor=admin(world))
    assert fresh(world).state == "stopped"


def test_creating_a_deployment_checks_the_whole_policy(world):
    Policy.objects.filter(team=world.team).update(max_replicas=2)
    with pytest.raises(Invalid):
        actions.create_deployment(world.agent, version=world.version, target=world.target,
                                  environment="staging", replicas=3, actor=admin(world))
    Policy.objects.filter(team=world.team).update(max_replicas=50,
                                                  allowed_target_kinds=["docker"])
    with pytest.raises(Invalid):
        actions.create_deployment(world.agent, version=world.version, target=world.target,
                                  environment="staging", replicas=1, actor=admin(world))


# The API --------------------------------------------------------------------------------------


def test_api_scales_down_over_a_tightened_policy_and_refuses_going_up(world, over_limit):
    client = world.client("operator")
    path = f"/api/v1/deployments/{over_limit.pk}"
    down = client.patch(path, {"replicas": 4}, content_type="application/json")
    assert down.status_code == 200, down.content
    assert down.json()["replicas"] == 4
    paused = client.patch(path, {"state": "paused"}, content_type="application/json")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    up = client.patch(path, {"replicas": 5}, content_type="application/json")
    assert up.status_code == 422
    assert up.json() == {"detail": {
        "replicas": ["Team policy allows at most 2 replicas per deployment."]}}


# Budgets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("action,expect", [
    ("pause", {"state": "paused"}),
    ("scale_to_zero", {"replicas": 0, "autoscale_signal": ""}),
])
def test_a_budget_action_over_a_tightened_policy_stops_the_spending(world, over_limit, action,
                                                                     expect):
    Policy.objects.filter(team=world.team).update(max_replicas=1,
                                                  allowed_target_kinds=["kubernetes"])
    other = DeploymentFactory(agent=world.spare_agent, target=world.target, replicas=4)
    budget = make_budget(world, [{"percent": 100, "action": action}], amount="1")
    spend(world, "1.5")
    with mock.patch("telemetry.budgets.publish"):
        (event,) = budgets.evaluate(budget)
    assert sorted(a["deployment_id"] for a in event.affected) == sorted([over_limit.pk, other.pk])
    assert not [a for a in event.affected if "error" in a], event.affected
    for deployment in Deployment.objects.filter(pk__in=[over_limit.pk, other.pk]):
        for name, value in expect.items():
            assert getattr(deployment, name) == value


# The operator UI ------------------------------------------------------------------------------


def test_ui_pauses_over_a_tightened_policy(world, over_limit):
    client = login(world, "operator")
    response = client.post(f"/deployments/{over_limit.pk}/state/", {"state": "paused"},
                           follow=True)
    assert response.status_code == 200
    assert "Deployment is now paused." in response.content.decode()
    assert fresh(world).state == "paused"


def test_ui_scale_down_over_a_tightened_policy_passes_and_up_shows_why(world, over_limit):
    client = login(world, "operator")
    path = f"/deployments/{over_limit.pk}/scale/"
    down = client.post(path, {"replicas": 3}, headers=HX)
    assert down.status_code == 200 and fresh(world).replicas == 3
    up = client.post(path, {"replicas": 4}, headers=HX)
    assert up.status_code == 422
    assert "Team policy allows at most 2 replicas per deployment." in up.content.decode()
    assert fresh(world).replicas == 3


def test_ui_resume_refused_by_policy_is_a_4xx_page_with_the_reason(world, over_limit):
    actions.update_deployment(over_limit, state="paused", actor=admin(world))
    client = login(world, "operator")
    path = f"/deployments/{over_limit.pk}/state/"
    page = client.post(path, {"state": "active"},
                       headers={"Referer": f"http://testserver/deployments/{over_limit.pk}/"})
    assert page.status_code == 422
    html = page.content.decode()
    assert "<p data-error-detail>State: Team policy allows at most 2 replicas per deployment. " \
           "Scale down to resume.</p>" in html
    assert f'href="http://testserver/deployments/{over_limit.pk}/"' in html  # the way back
    # From htmx: an error status (htmx swaps a 422 as a form; ui.js toasts this).
    hx = client.post(path, {"state": "active"}, headers=HX)
    assert hx.status_code == 409
    assert "Scale down to resume." in hx.content.decode()
    assert fresh(world).state == "paused"


def test_ui_refused_page_never_links_elsewhere(world, over_limit):
    actions.update_deployment(over_limit, state="paused", actor=admin(world))
    page = login(world, "operator").post(f"/deployments/{over_limit.pk}/state/",
                                         {"state": "active"},
                                         headers={"Referer": "https://evil.example/phish"})
    assert page.status_code == 422
    assert "evil.example" not in page.content.decode()

