"""Governance in the admin: every changelist loads, writes are audited,
write-only values never render, the audit log is read-only."""
from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from deployments.models import ApiToken, AuditEvent, Membership, Secret, Target, Team

from .factories import UserFactory


@pytest.fixture
def root(world):
    user = UserFactory(username="root", is_superuser=True, is_staff=True)
    client = Client()
    client.force_login(user)
    return client


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
    actions = set(AuditEvent.objects.filter(source="admin").values_list("action", flat=True))
    assert {"team.create", "membership.create", "policy.create"} <= actions
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
