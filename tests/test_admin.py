"""Governance in the admin: every changelist loads, writes go through the verbs
(policy, audit, reconcile), a refusal is shown on the form instead of a 500,
write-only values never render, models without a verb are read-only."""
from __future__ import annotations

import json
import os
from decimal import Decimal

import pytest
import redis
from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client, RequestFactory
from django.urls import reverse

from deployments.admin import VerbAdmin
from deployments.audit import Actor
from deployments.models import (
    Agent,
    AgentVersion,
    ApiToken,
    AuditEvent,
    Deployment,
    Instance,
    Membership,
    Policy,
    Secret,
    Target,
    Team,
)
from telemetry import budgets
from telemetry.models import Budget

from .factories import UserFactory


@pytest.fixture
def root(world):
    user = UserFactory(username="root", is_superuser=True, is_staff=True)
    client = Client()
    client.force_login(user)
    return client


def url(model, view: str, *args) -> str:
    meta = model._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_{view}", args=args)


def page_data(response) -> dict:
    """The body the admin page in ``response`` would submit as it stands."""
    context = response.context
    form_list = [context["adminform"].form]
    data: dict = {}
    for inline in context["inline_admin_formsets"]:
        formset = inline.formset
        management = formset.management_form
        for name in management.fields:
            data[management[name].html_name] = management[name].value()
        data[management["TOTAL_FORMS"].html_name] = len(formset.initial_forms)
        form_list.extend(formset.initial_forms)
    for form in form_list:
        for bound in form:
            value = bound.value()
            if isinstance(bound.field, forms.BooleanField):
                if value:
                    data[bound.html_name] = "on"
            elif isinstance(value, list | tuple):
                data[bound.html_name] = [str(v) for v in value]
            elif value is not None:
                data[bound.html_name] = value
    return data


def admin_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(source="admin").order_by("id"))


def test_every_changelist_loads_with_search_and_filters(root, world):
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        response = root.get(url)
        assert response.status_code == 200, url
        if model.__module__.startswith("deployments"):
            assert model_admin.search_fields, f"{meta.model_name} has no search"
            assert model_admin.list_filter, f"{meta.model_name} has no filters"
            assert root.get(url, {"q": "acme"}).status_code == 200


def test_every_add_and_change_page_loads(root, world):
    budgets.create_budget(world.team, name="m", amount_usd=Decimal("5"), actor=Actor(user=None))
    Instance.objects.create(deployment=world.deployment, target=world.target, name="i-1")
    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.get(username="root")
    for model, model_admin in admin.site._registry.items():
        if model_admin.has_add_permission(request):
            assert root.get(url(model, "add")).status_code == 200, model
        obj = model.objects.first()
        if obj is not None:
            assert root.get(url(model, "change", obj.pk)).status_code == 200, model


def test_change_pages_never_render_write_only_values(root, world):
    pages = [
        reverse("admin:deployments_secret_change", args=[world.secret.pk]),
        reverse("admin:deployments_target_change", args=[world.spare_target.pk]),
        reverse("admin:deployments_secret_changelist"),
        reverse("admin:deployments_auditevent_changelist"),
    ]
    for url in pages:
        html = root.get(url).content.decode()
        assert "sk-live-supersecret" not in html and "PRIVATE-KEY-MATERIAL" not in html
    assert "tls_key&quot;: &quot;set" in root.get(pages[1]).content.decode()


def test_admin_writes_are_audited(root, world):
    url = reverse("admin:deployments_team_add")
    response = root.post(url, {
        "name": "Gov", "slug": "gov", "created_at_0": "2026-01-01", "created_at_1": "00:00:00",
        "memberships-TOTAL_FORMS": "1", "memberships-INITIAL_FORMS": "0",
        "memberships-0-user": world.users["viewer"].pk, "memberships-0-role": "operator",
        "memberships-0-created_at_0": "2026-01-01", "memberships-0-created_at_1": "00:00:00",
        "policy-TOTAL_FORMS": "1", "policy-INITIAL_FORMS": "0",
        "policy-0-max_replicas": "7", "policy-0-allowed_target_kinds": "[]",
        "policy-0-allowed_patterns": "[]",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    team = Team.objects.get(slug="gov")
    assert team.policy.max_replicas == 7
    assert Membership.objects.get(team=team).role == "operator"
    # The verbs' own names: the same audit vocabulary as the API and the UI.
    actions = set(AuditEvent.objects.filter(source="admin").values_list("action", flat=True))
    assert {"team.create", "member.add", "policy.update"} <= actions
    event = AuditEvent.objects.get(action="team.create", source="admin")
    assert event.actor_label == "root" and event.source_ip == "127.0.0.1"

    # Change a secret's value: audited, stored encrypted, value never in the audit.
    url = reverse("admin:deployments_secret_change", args=[world.secret.pk])
    root.post(url, {"team": world.team.pk, "name": "OPENAI_KEY", "new_value": "sk-new-value"})
    assert Secret.objects.get(pk=world.secret.pk).value == "sk-new-value"
    event = AuditEvent.objects.get(action="secret.update", source="admin")
    assert "sk-new" not in str(event.before) + str(event.after)

    # Revoke a token with the admin action.
    url = reverse("admin:deployments_apitoken_changelist")
    root.post(url, {"action": "revoke", "_selected_action": [world.token_row.pk]})
    assert ApiToken.objects.get(pk=world.token_row.pk).revoked_at is not None
    assert AuditEvent.objects.filter(action="token.revoke", source="admin").count() == 1

    # Delete a target.
    url = reverse("admin:deployments_target_delete", args=[world.spare_target.pk])
    root.post(url, {"post": "yes"})
    assert not Target.objects.filter(pk=world.spare_target.pk).exists()
    assert AuditEvent.objects.filter(action="target.delete", source="admin").count() == 1


def test_admin_token_creation_shows_the_token_once(root, world):
    url = reverse("admin:deployments_apitoken_add")
    response = root.post(url, {"team": world.team.pk, "user": world.users["operator"].pk,
                               "name": "from-admin", "scope": "deploy"}, follow=True)
    html = response.content.decode()
    assert "Copy this token now" in html
    token = ApiToken.objects.get(name="from-admin")
    assert token.user == world.users["operator"]
    plaintext = html.split("not shown again: ")[1].split("<")[0].strip()
    assert plaintext.startswith("hgr_" + token.prefix)
    again = root.get(reverse("admin:deployments_apitoken_change", args=[token.pk]))
    assert plaintext not in again.content.decode()
    event = AuditEvent.objects.get(action="token.create", object_id=str(token.pk))
    assert event.source == "admin" and event.actor_label == "root"


def test_audit_log_is_read_only_in_the_admin(root, world):
    event = AuditEvent.objects.first()
    assert root.get(reverse("admin:deployments_auditevent_add")).status_code == 403
    change = root.post(reverse("admin:deployments_auditevent_change", args=[event.pk]),
                       {"action": "forged"})
    assert change.status_code == 403
    assert root.post(reverse("admin:deployments_auditevent_delete", args=[event.pk]),
                     {"post": "yes"}).status_code == 403


def test_admin_scale_goes_through_the_action(root, world):
    url = reverse("admin:deployments_deployment_change", args=[world.deployment.pk])
    response = root.post(url, {"replicas": 3, "state": "active"})
    assert response.status_code == 302, response.content.decode()[:2000]
    world.deployment.refresh_from_db()
    assert world.deployment.replicas == 3 and world.deployment.generation == 2
    event = AuditEvent.objects.get(action="deployment.scale")
    assert event.source == "admin" and event.before["replicas"] == 1


def test_non_staff_cannot_use_the_admin(world):
    client = Client()
    client.force_login(world.users["admin"])
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


# One write path: policy, audit and reconcile through the verbs ---------------------


def test_agent_with_a_pattern_the_policy_forbids_is_refused_on_the_form(root, world):
    Policy.objects.filter(team=world.team).update(allowed_patterns=["batch"])
    before = AuditEvent.objects.count()
    response = root.post(url(Agent, "add"), {
        "team": world.team.pk, "slug": "streamer", "name": "Streamer", "description": "",
        "pattern": "stream"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Team policy allows only: batch" in html
    assert "Please correct the error below." in html
    # The error sits on the pattern field, and what was typed is still there.
    assert response.context["adminform"].form.errors["pattern"] == [
        "Team policy allows only: batch."]
    assert 'value="streamer"' in html
    assert not Agent.objects.filter(slug="streamer").exists()
    assert AuditEvent.objects.count() == before

    # An allowed pattern goes through, audited once with source "admin".
    response = root.post(url(Agent, "add"), {
        "team": world.team.pk, "slug": "batcher", "name": "Batcher", "description": "",
        "pattern": "batch"})
    assert response.status_code == 302
    agent = Agent.objects.get(slug="batcher")
    [event] = AuditEvent.objects.filter(object_type="agent", object_id=str(agent.pk))
    assert (event.action, event.source, event.actor_label) == ("agent.create", "admin", "root")


def test_a_teams_last_admin_cannot_be_removed_through_the_admin(root, world):
    admin_row = Membership.objects.get(team=world.team, role="admin")
    before = AuditEvent.objects.count()

    # Delete page: back to the page with the verb's answer, the row stays.
    response = root.post(url(Membership, "delete", admin_row.pk), {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert "A team must keep at least one admin." in response.content.decode()
    # Bulk delete from the changelist: refused as a whole, shown as a message.
    response = root.post(url(Membership, "changelist"), {
        "action": "delete_selected", "_selected_action": [admin_row.pk, world.member.pk],
        "post": "yes"}, follow=True)
    assert "A team must keep at least one admin." in response.content.decode()
    assert Membership.objects.filter(pk=world.member.pk).exists()  # all or nothing
    # Demoting on the membership page: an error on the form.
    page = root.get(url(Membership, "change", admin_row.pk))
    response = root.post(url(Membership, "change", admin_row.pk),
                         {**page_data(page), "role": "viewer"})
    assert response.status_code == 200
    assert "A team must keep at least one admin." in response.content.decode()
    # Deleting the user would remove the membership too: refused the same way.
    response = root.post(url(get_user_model(), "delete", world.users["admin"].pk),
                         {"post": "yes"}, follow=True)
    assert "A team must keep at least one admin." in response.content.decode()

    admin_row.refresh_from_db()
    assert admin_row.role == "admin"
    assert get_user_model().objects.filter(pk=world.users["admin"].pk).exists()
    assert AuditEvent.objects.count() == before


def test_team_page_inline_refusal_rolls_back_the_whole_submission(root, world):
    page = root.get(url(Team, "change", world.team.pk))
    data = page_data(page)
    rows = page.context["inline_admin_formsets"][0].formset.initial_forms
    index = next(i for i, row in enumerate(rows) if row.instance.role == "admin")
    before = AuditEvent.objects.count()

    # Rename the team and delete its only admin in one submission.
    response = root.post(url(Team, "change", world.team.pk), {
        **data, "name": "Renamed", f"memberships-{index}-DELETE": "on"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "A team must keep at least one admin." in html
    world.team.refresh_from_db()
    assert world.team.name == "Acme"  # the rename went back with the refused row
    assert Membership.objects.filter(team=world.team, role="admin").count() == 1
    assert AuditEvent.objects.count() == before

    # Demoting the admin in its row: the error is on that row's role.
    response = root.post(url(Team, "change", world.team.pk), {
        **data, f"memberships-{index}-role": "viewer"})
    assert response.status_code == 200
    row = response.context["inline_admin_formsets"][0].formset.forms[index]
    assert "A team must keep at least one admin." in str(row.errors)

    # Adding a new admin and demoting the old one in the same submission works.
    operator = world.users["operator"].memberships.get(team=world.team)
    operator_index = next(i for i, row in enumerate(rows) if row.instance.pk == operator.pk)
    response = root.post(url(Team, "change", world.team.pk), {
        **data, f"memberships-{operator_index}-role": "admin",
        f"memberships-{index}-role": "viewer"})
    assert response.status_code == 302, [
        f.errors for f in response.context["inline_admin_formsets"][0].formset.forms]
    assert set(Membership.objects.filter(team=world.team, role="admin")
               .values_list("user__username", flat=True)) == {"operator"}


def test_target_edit_reconciles_its_deployments_after_commit(
        root, world, django_capture_on_commit_callbacks):
    broker = redis.Redis.from_url(os.environ["REDIS_URL"])
    broker.delete("celery")
    page = root.get(url(Target, "change", world.target.pk))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = root.post(url(Target, "change", world.target.pk), {
            **page_data(page), "price_cpu_hour": "0.25"})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert broker.llen("celery") == 0  # nothing is queued before commit
    for callback in callbacks:
        callback()
    messages = [json.loads(m) for m in broker.lrange("celery", 0, -1)]
    broker.delete("celery")
    assert [m["headers"]["task"] for m in messages] == ["deployments.tasks.reconcile"]
    assert str(world.deployment.pk) in messages[0]["headers"]["argsrepr"]
    world.target.refresh_from_db()
    assert world.target.price_cpu_hour == Decimal("0.25")
    [event] = AuditEvent.objects.filter(action="target.update")
    assert event.source == "admin"
    assert Decimal(event.after["price_cpu_hour"]) == Decimal("0.25") != Decimal(
        event.before["price_cpu_hour"])


def test_target_connection_is_checked_by_the_verb_and_shown_on_its_field(root, world):
    page = root.get(url(Target, "change", world.spare_target.pk))
    response = root.post(url(Target, "change", world.spare_target.pk), {
        **page_data(page), "new_connection": '{"url": 5}'})
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "url" in str(errors["new_connection"])
    response = root.post(url(Target, "change", world.spare_target.pk), {
        **page_data(page), "new_connection": "[1]"})
    assert response.context["adminform"].form.errors["new_connection"] == ["Give a JSON object."]
    assert not AuditEvent.objects.filter(action="target.update").exists()


def test_refused_delete_is_a_message_not_a_500(root, world):
    AgentVersion.objects.filter(pk=world.version.pk).update(secret_refs=["OPENAI_KEY"])
    response = root.post(url(Secret, "delete", world.secret.pk), {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert "A deployed version refers to this secret." in response.content.decode()
    assert Secret.objects.filter(pk=world.secret.pk).exists()
    assert not AuditEvent.objects.filter(action="secret.delete").exists()
    # Rows the database protects are Django's own refusal page.
    response = root.post(url(Team, "delete", world.team.pk), {"post": "yes"})
    assert response.status_code == 200 and "Cannot delete team" in response.content.decode()
    assert Team.objects.filter(pk=world.team.pk).exists()


def test_every_admin_write_leaves_exactly_one_audit_event_from_the_admin(root, world):
    User = get_user_model()

    def one_event(action: str):
        events = admin_events()[seen:]
        assert [e.action for e in events] == [action], [e.action for e in events]
        assert events[0].actor_label == "root"
        return events[0]

    def post(path, data, status=302):
        response = root.post(path, data)
        assert response.status_code == status, response.content.decode()[:3000]
        return response

    def edit(model, pk, **changes):
        page = root.get(url(model, "change", pk))
        return post(url(model, "change", pk), {**page_data(page), **changes})

    seen = 0
    writes = [
        ("team.update", lambda: edit(Team, world.team.pk, name="Acme Inc")),
        ("member.add", lambda: post(url(Membership, "add"), {
            "team": world.other_team.pk, "user": world.users["viewer"].pk, "role": "viewer"})),
        ("member.update", lambda: edit(Membership, world.member.pk, role="operator")),
        ("member.remove", lambda: post(url(Membership, "delete", world.member.pk),
                                       {"post": "yes"})),
        ("policy.update", lambda: edit(Policy, world.team.policy.pk, max_replicas="9")),
        ("agent.create", lambda: post(url(Agent, "add"), {
            "team": world.team.pk, "slug": "fresh", "name": "Fresh", "pattern": "batch"})),
        ("agent.update", lambda: edit(Agent, world.spare_agent.pk, description="changed")),
        ("version.create", lambda: post(url(AgentVersion, "add"), {
            "agent": world.spare_agent.pk, "image": "img:9", "bundle": "", "command": "[]",
            "env": "{}", "secret_refs": '["OPENAI_KEY"]', "cpu": "0.5", "memory_mb": "256",
            "port": "8080", "health": "{}", "model_settings": "{}",
            "pattern_settings": "{}"})),
        ("target.create", lambda: post(url(Target, "add"), {
            "team": world.team.pk, "name": "edge-9", "kind": "edge", "labels": "{}",
            "price_cpu_hour": "0", "price_gib_hour": "0", "new_connection": ""})),
        ("target.update", lambda: edit(Target, world.spare_target.pk,
                                       labels='{"zone": "b"}')),
        ("target.delete", lambda: post(url(Target, "delete", world.spare_target.pk),
                                       {"post": "yes"})),
        ("deployment.scale", lambda: edit(Deployment, world.deployment.pk, replicas="2")),
        ("secret.create", lambda: post(url(Secret, "add"), {
            "team": world.team.pk, "name": "DB_URL", "new_value": "postgres://x"})),
        ("secret.delete", lambda: post(
            url(Secret, "delete", Secret.objects.get(name="DB_URL").pk), {"post": "yes"})),
        ("token.create", lambda: post(url(ApiToken, "add"), {
            "team": world.team.pk, "user": world.users["admin"].pk, "name": "bot",
            "scope": "read"})),
        ("budget.create", lambda: post(url(Budget, "add"), {
            "team": world.team.pk, "name": "monthly", "amount_usd": "10.00",
            "thresholds": '[{"percent": 100, "action": "alert"}]', "enabled": "on"})),
        ("budget.update", lambda: edit(Budget, Budget.objects.get(name="monthly").pk,
                                       amount_usd="20.00")),
        ("budget.delete", lambda: post(
            url(Budget, "delete", Budget.objects.get(name="monthly").pk), {"post": "yes"})),
        ("user.create", lambda: post(url(User, "add"), {
            "username": "newcomer", "usable_password": "true",
            "password1": "a-long-Passphrase-42", "password2": "a-long-Passphrase-42"})),
        ("user.update", lambda: edit(User, User.objects.get(username="newcomer").pk,
                                     email="new@example.com")),
        ("user.password", lambda: post(
            url(User, "password_change", User.objects.get(username="newcomer").pk),
            {"password1": "another-Passphrase-43", "password2": "another-Passphrase-43",
             "usable_password": "true"})),
        ("user.delete", lambda: post(url(User, "delete", User.objects.get(username="newcomer").pk),
                                     {"post": "yes"})),
        ("agent.delete", lambda: post(url(Agent, "delete", Agent.objects.get(slug="fresh").pk),
                                      {"post": "yes"})),
        ("deployment.delete", lambda: post(url(Deployment, "delete", world.deployment.pk),
                                           {"post": "yes"})),
        ("team.delete", lambda: post(url(Team, "delete", world.other_team.pk),
                                     {"post": "yes"}, status=200)),  # refused: deployments
    ]
    for action, write in writes:
        seen = len(admin_events())
        write()
        if action == "team.delete":
            assert len(admin_events()) == seen  # refused: nothing written
            continue
        one_event(action)

    assert Agent.objects.get(slug="support-bot").team.name == "Acme Inc"
    assert world.team.policy.__class__.objects.get(team=world.team).max_replicas == 9
    assert AgentVersion.objects.get(agent=world.spare_agent).number == 1
    assert User.objects.filter(username="newcomer").count() == 0
    assert not Deployment.objects.filter(pk=world.deployment.pk).exists()


def test_budget_admin_runs_the_budget_verbs(root, world, django_capture_on_commit_callbacks):
    # A budget's agent must belong to its team: the verb refuses, shown on the field.
    foreign = Agent.objects.get(slug="foreign")
    response = root.post(url(Budget, "add"), {
        "team": world.team.pk, "agent": foreign.pk, "name": "x", "amount_usd": "1.00",
        "thresholds": '[{"percent": 100, "action": "alert"}]', "enabled": "on"})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["agent"] == [
        "This agent belongs to another team."]
    assert not Budget.objects.exists()
    # Saved budgets are evaluated after commit, as from the API.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        root.post(url(Budget, "add"), {
            "team": world.team.pk, "name": "y", "amount_usd": "1.00",
            "thresholds": '[{"percent": 100, "action": "alert"}]', "enabled": "on"})
    assert Budget.objects.filter(name="y").exists() and len(callbacks) == 1
    budget = budgets.create_budget(world.team, name="z", amount_usd=Decimal("5"),
                                   actor=Actor(user=None))
    assert "webhook_url" not in root.get(url(Budget, "change", budget.pk)).content.decode()


def test_models_without_a_verb_are_read_only(root, world):
    """Every admin either writes through verbs (VerbAdmin) or offers no write."""
    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.get(username="root")
    for model, model_admin in admin.site._registry.items():
        if isinstance(model_admin, VerbAdmin):
            continue
        name = model._meta.label
        assert not model_admin.has_add_permission(request), name
        assert not model_admin.has_change_permission(request), name
        assert not model_admin.has_delete_permission(request), name
    # Through HTTP too, for the reconciler's instances and immutable versions.
    instance = Instance.objects.create(deployment=world.deployment, target=world.target,
                                       name="support-bot-1")
    assert root.post(url(Instance, "delete", instance.pk), {"post": "yes"}).status_code == 403
    assert root.post(url(Instance, "change", instance.pk), {"phase": "failed"}).status_code == 403
    assert root.post(url(AgentVersion, "change", world.version.pk),
                     {"image": "evil"}).status_code == 403
    assert root.post(url(AgentVersion, "delete", world.version.pk),
                     {"post": "yes"}).status_code == 403
    assert root.get(url(AgentVersion, "change", world.version.pk)).status_code == 200  # view
    for model in (Deployment, Policy):
        assert root.get(url(model, "add")).status_code == 403
