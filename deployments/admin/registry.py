"""Agents, versions, targets, deployments, secrets and tokens through the verbs;
instances and the audit log read-only."""
from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages

from .. import actions
from ..models import (
    Agent,
    AgentVersion,
    ApiToken,
    AuditEvent,
    Deployment,
    Instance,
    Revision,
    Secret,
    Target,
)
from ..runtimes import connection_public_view
from .base import ReadOnlyAdmin, VerbAdmin, admin_actor, guarded

# Agents and versions ------------------------------------------------------------------


@admin.register(Agent)
class AgentAdmin(VerbAdmin):
    list_display = ["slug", "name", "team", "pattern", "created_at"]
    list_filter = ["pattern", "team"]
    search_fields = ["slug", "name", "description"]
    list_select_related = ["team"]
    fields = ["team", "slug", "name", "description", "pattern"]
    fixed_after_create = ["team", "slug", "pattern"]

    def create(self, actor, data):
        return actions.create_agent(data["team"], actor=actor, **{
            name: data[name] for name in ("slug", "name", "description", "pattern")})

    def update(self, actor, agent, changes):
        return actions.update_agent(agent, actor=actor, **changes)

    def delete(self, actor, agent):
        actions.delete_agent(agent, actor=actor)


@admin.register(AgentVersion)
class AgentVersionAdmin(VerbAdmin):
    """Versions are immutable: created here (numbered by the verb), never changed."""

    list_display = ["agent", "number", "image", "digest", "created_at", "created_by"]
    list_filter = ["agent__team", "agent__pattern"]
    search_fields = ["agent__slug", "image", "digest"]
    list_select_related = ["agent__team", "created_by"]
    SPEC = list(AgentVersion.SPEC_FIELDS)
    fields = ["agent", *SPEC]
    aliases = {"agent_id": "agent"}

    def get_fields(self, request, obj=None):
        if obj is None:
            return self.fields
        return ["agent", "number", *self.SPEC, "digest", "created_at", "created_by"]

    def create(self, actor, data):
        return actions.create_version(data["agent"], actor=actor,
                                      **{name: data[name] for name in self.SPEC})


# Targets ---------------------------------------------------------------------------


class TargetForm(forms.ModelForm):
    new_connection = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), required=False,
        label="Connection settings (JSON)",
        help_text="Write-only. Leave empty to keep the stored settings; keys you omit "
                  "keep their stored values.")

    class Meta:
        model = Target
        fields = ["team", "name", "kind", "labels", "price_cpu_hour", "price_gib_hour"]

    def clean_new_connection(self):
        raw = self.cleaned_data.get("new_connection", "").strip()
        try:
            given = json.loads(raw) if raw else None
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg}") from None
        if given is not None and not isinstance(given, dict):
            raise forms.ValidationError("Give a JSON object.")
        return given  # checked against the kind's schema by the verb


@admin.register(Target)
class TargetAdmin(VerbAdmin):
    form = TargetForm
    list_display = ["name", "team", "kind", "status", "price_cpu_hour", "price_gib_hour"]
    list_filter = ["kind", "status", "team"]
    search_fields = ["name", "team__slug"]
    readonly_fields = ["connection_settings", "status", "status_reason", "last_probe_at"]
    fixed_after_create = ["team", "kind"]
    list_select_related = ["team"]
    aliases = {"connection": "new_connection"}
    FIELDS = ("name", "kind", "labels", "price_cpu_hour", "price_gib_hour")

    @admin.display(description="stored connection")
    def connection_settings(self, obj):
        return json.dumps(connection_public_view(obj.kind, obj.connection), indent=1)

    def changes(self, form):
        changes = super().changes(form)
        connection = changes.pop("new_connection", None)
        if connection:
            changes["connection"] = connection  # omitted keys keep their stored values
        return changes

    def create(self, actor, data):
        return actions.create_target(data["team"], actor=actor,
                                     connection=data.get("new_connection") or {},
                                     **{name: data[name] for name in self.FIELDS})

    def update(self, actor, target, changes):
        # The verb reconciles the target's deployments after commit.
        return actions.update_target(target, actor=actor, **changes)

    def delete(self, actor, target):
        actions.delete_target(target, actor=actor)


# Deployments -------------------------------------------------------------------------


@admin.register(Deployment)
class DeploymentAdmin(VerbAdmin):
    """Created from the UI or API (they pick a version and a target); here scaled,
    paused or stopped, and deleted."""

    list_display = ["__str__", "target", "replicas", "state", "health", "generation",
                    "observed_generation"]
    list_filter = ["state", "health", "agent__pattern", "target__kind", "agent__team"]
    search_fields = ["agent__slug", "environment", "target__name"]
    list_select_related = ["agent__team", "target"]
    fields = ["agent", "version", "target", "environment", "replicas", "state",
              "generation", "observed_generation", "health", "health_reason"]
    readonly_fields = ["agent", "version", "target", "environment", "generation",
                       "observed_generation", "health", "health_reason"]

    def update(self, actor, deployment, changes):
        # Bumps the generation, audits and reconciles.
        return actions.update_deployment(deployment, actor=actor, **changes)

    def delete(self, actor, deployment):
        actions.delete_deployment(deployment, actor=actor)


@admin.register(Instance)
class InstanceAdmin(ReadOnlyAdmin):
    """Instances are the reconciler's: change the deployment instead."""

    list_display = ["name", "deployment", "phase", "health", "host", "restarts", "updated_at"]
    list_filter = ["phase", "health", "deployment__agent__team"]
    search_fields = ["name", "runtime_id", "host"]
    list_select_related = ["deployment__agent__team"]


@admin.register(Revision)
class RevisionAdmin(ReadOnlyAdmin):
    """Revisions are made by the deployment verbs; roll back from the UI or API."""

    list_display = ["deployment", "number", "version", "cause", "actor_label", "created_at"]
    list_filter = ["deployment__agent__team", "created_at"]
    search_fields = ["deployment__agent__slug", "deployment__environment", "cause", "digest"]
    list_select_related = ["deployment__agent__team", "deployment__target", "version__agent"]


# Secrets and tokens ------------------------------------------------------------------


class SecretForm(forms.ModelForm):
    new_value = forms.CharField(
        widget=forms.PasswordInput(render_value=False), required=False, label="Value",
        help_text="Write-only; never shown again. Leave empty to keep the stored value.")

    class Meta:
        model = Secret
        fields = ["team", "name"]

    def clean(self):
        data = super().clean()
        if not self.instance.pk and not data.get("new_value"):
            raise forms.ValidationError({"new_value": "A new secret needs a value."})
        return data


@admin.register(Secret)
class SecretAdmin(VerbAdmin):
    form = SecretForm
    list_display = ["name", "team", "created_at", "updated_at"]
    list_filter = ["team"]
    search_fields = ["name", "team__slug"]
    list_select_related = ["team"]
    fixed_after_create = ["team", "name"]
    aliases = {"value": "new_value"}

    def create(self, actor, data):
        return actions.create_secret(data["team"], name=data["name"], value=data["new_value"],
                                     actor=actor)

    def update(self, actor, secret, changes):
        if not changes.get("new_value"):
            return secret
        return actions.update_secret(secret, value=changes["new_value"], actor=actor)

    def delete(self, actor, secret):
        actions.delete_secret(secret, actor=actor)


class TokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["team", "user", "name", "scope", "expires_at"]


@admin.register(ApiToken)
class ApiTokenAdmin(VerbAdmin):
    """Created here (the plaintext is shown once) and revoked, never edited or
    deleted: the row stays for the audit trail."""

    form = TokenForm
    list_display = ["name", "prefix", "team", "user", "scope", "expires_at", "last_used_at",
                    "revoked_at"]
    list_filter = ["scope", "team", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "user__username", "team__slug"]
    list_select_related = ["team", "user"]
    actions = ["revoke"]
    autocomplete_fields = ["user", "team"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:
            return ["team", "user", "name", "scope", "expires_at", "prefix", "last_used_at",
                    "revoked_at", "created_at"]
        return []

    def create(self, actor, data):
        return actions.create_token(data["team"], user=data["user"], name=data["name"],
                                    scope=data["scope"], expires_at=data["expires_at"],
                                    actor=actor)

    def save_model(self, request, obj, form, change):
        # Only ever an add (there is no change permission); the verb returns the
        # plaintext too, shown this once.
        token, plaintext = guarded(self.create, admin_actor(request), form.cleaned_data)
        obj.pk = token.pk
        obj._state.adding = False
        obj.refresh_from_db()
        messages.warning(request, f"Copy this token now, it is not shown again: {plaintext}")

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            guarded(actions.revoke_token, token, actor=admin_actor(request))
        self.message_user(request, f"Revoked {queryset.count()} token(s).")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "actor_label", "action", "object_type", "object_repr", "source",
                    "source_ip"]
    list_filter = ["source", "action", "object_type", "team", "at"]
    search_fields = ["actor_label", "action", "object_repr", "object_id"]
    date_hierarchy = "at"
