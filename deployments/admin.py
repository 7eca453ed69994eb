"""Governance in the Django admin: teams, members and roles, tokens, targets,
policies, secrets; the audit log read-only. Every write made here is audited
with source ``admin``.
"""
from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db import transaction

from . import actions, audit
from .audit import Actor
from .models import (
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
from .runtimes import connection_public_view, validate_connection


def admin_actor(request) -> Actor:
    return Actor.from_request(request, "admin")


class AuditedAdmin(admin.ModelAdmin):
    """Writes one AuditEvent per saved or deleted object, inlines included."""

    def save_model(self, request, obj, form, change):
        before = None
        if change:
            before = audit.snapshot(type(obj).objects.get(pk=obj.pk))
        super().save_model(request, obj, form, change)
        action = f"{obj._meta.model_name}.{'update' if change else 'create'}"
        audit.record(admin_actor(request), action, obj, before=before, after=audit.snapshot(obj))

    def delete_model(self, request, obj):
        audit.record(admin_actor(request), f"{obj._meta.model_name}.delete", obj,
                     before=audit.snapshot(obj))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)

    def save_formset(self, request, form, formset, change):
        actor = admin_actor(request)
        befores = {}
        for inline_form in formset.initial_forms:
            if inline_form.instance.pk and inline_form.has_changed():
                befores[inline_form.instance.pk] = audit.snapshot(
                    type(inline_form.instance).objects.get(pk=inline_form.instance.pk))
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            audit.record(actor, f"{obj._meta.model_name}.delete", obj, before=audit.snapshot(obj))
            obj.delete()
        for obj in instances:
            is_new = obj.pk is None
            obj.save()
            audit.record(actor, f"{obj._meta.model_name}.{'create' if is_new else 'update'}", obj,
                         before=None if is_new else befores.get(obj.pk),
                         after=audit.snapshot(obj))
        formset.save_m2m()


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


class PolicyInline(admin.StackedInline):
    model = Policy
    can_delete = False


@admin.register(Team)
class TeamAdmin(AuditedAdmin):
    list_display = ["slug", "name", "member_count", "created_at"]
    search_fields = ["slug", "name"]
    list_filter = ["created_at"]
    inlines = [MembershipInline, PolicyInline]

    @admin.display(description="members")
    def member_count(self, obj):
        return obj.memberships.count()


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__slug"]
    autocomplete_fields = ["user", "team"]
    list_select_related = ["user", "team"]


@admin.register(Policy)
class PolicyAdmin(AuditedAdmin):
    list_display = ["team", "max_replicas", "allowed_target_kinds", "allowed_patterns"]
    list_filter = ["team"]
    search_fields = ["team__slug"]


@admin.register(Agent)
class AgentAdmin(AuditedAdmin):
    list_display = ["slug", "name", "team", "pattern", "created_at"]
    list_filter = ["pattern", "team"]
    search_fields = ["slug", "name", "description"]
    list_select_related = ["team"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records to look at, never to add, change or delete here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AgentVersion)
class AgentVersionAdmin(ReadOnlyAdmin):
    """Versions are immutable: viewable here, created through the API or UI."""

    list_display = ["agent", "number", "image", "digest", "created_at", "created_by"]
    list_filter = ["agent__team", "agent__pattern"]
    search_fields = ["agent__slug", "image", "digest"]
    list_select_related = ["agent__team", "created_by"]


class TargetForm(forms.ModelForm):
    new_connection = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), required=False,
        label="Connection settings (JSON)",
        help_text="Write-only. Leave empty to keep the stored settings; keys you omit "
                  "keep their stored values.")

    class Meta:
        model = Target
        fields = ["team", "name", "kind", "labels", "price_cpu_hour", "price_gib_hour"]

    def clean(self):
        data = super().clean()
        raw = data.get("new_connection", "").strip()
        kind = data.get("kind") or self.instance.kind
        current = self.instance.connection if self.instance.pk else {}
        try:
            given = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise forms.ValidationError({"new_connection": f"Not valid JSON: {exc.msg}"}) from None
        if not isinstance(given, dict):
            raise forms.ValidationError({"new_connection": "Give a JSON object."})
        from .errors import Invalid

        try:
            self.instance.connection = validate_connection(kind, {**current, **given})
        except Invalid as exc:
            raise forms.ValidationError({"new_connection": str(exc.detail)}) from None
        return data


@admin.register(Target)
class TargetAdmin(AuditedAdmin):
    form = TargetForm
    list_display = ["name", "team", "kind", "status", "price_cpu_hour", "price_gib_hour"]
    list_filter = ["kind", "status", "team"]
    search_fields = ["name", "team__slug"]
    readonly_fields = ["connection_settings", "status", "status_reason", "last_probe_at"]
    list_select_related = ["team"]

    @admin.display(description="stored connection")
    def connection_settings(self, obj):
        return json.dumps(connection_public_view(obj.kind, obj.connection), indent=1)


@admin.register(Deployment)
class DeploymentAdmin(AuditedAdmin):
    list_display = ["__str__", "target", "replicas", "state", "health", "generation",
                    "observed_generation"]
    list_filter = ["state", "health", "agent__pattern", "target__kind", "agent__team"]
    search_fields = ["agent__slug", "environment", "target__name"]
    list_select_related = ["agent__team", "target"]
    fields = ["agent", "version", "target", "environment", "replicas", "state",
              "generation", "observed_generation", "health", "health_reason"]
    readonly_fields = ["agent", "version", "target", "environment", "generation",
                       "observed_generation", "health", "health_reason"]

    def has_add_permission(self, request):
        return False

    def save_model(self, request, obj, form, change):
        # Through the action: bumps the generation, audits and reconciles.
        changes = {f: form.cleaned_data[f] for f in form.changed_data if f in ("replicas", "state")}
        if changes:
            current = Deployment.objects.get(pk=obj.pk)
            actions.update_deployment(current, actor=admin_actor(request), **changes)

    def delete_model(self, request, obj):
        actions.delete_deployment(obj, actor=admin_actor(request))


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    list_display = ["name", "deployment", "phase", "health", "host", "restarts", "updated_at"]
    list_filter = ["phase", "health", "deployment__agent__team"]
    search_fields = ["name", "runtime_id", "host"]
    list_select_related = ["deployment__agent__team"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


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
        if data.get("new_value"):
            self.instance.value = data["new_value"]
        return data


@admin.register(Secret)
class SecretAdmin(AuditedAdmin):
    form = SecretForm
    list_display = ["name", "team", "created_at", "updated_at"]
    list_filter = ["team"]
    search_fields = ["name", "team__slug"]
    list_select_related = ["team"]


class TokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["team", "user", "name", "scope", "expires_at"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
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

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: the row stays for the audit trail

    def save_model(self, request, obj, form, change):
        if change:
            return
        data = form.cleaned_data
        token, plaintext = actions.create_token(
            data["team"], user=data["user"], name=data["name"], scope=data["scope"],
            expires_at=data["expires_at"], actor=admin_actor(request))
        obj.pk, obj.prefix = token.pk, token.prefix  # the "added" message names hgr_<prefix>_…
        messages.warning(request, f"Copy this token now, it is not shown again: {plaintext}")

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            actions.revoke_token(token, actor=admin_actor(request))
        self.message_user(request, f"Revoked {queryset.count()} token(s).")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "actor_label", "action", "object_type", "object_repr", "source",
                    "source_ip"]
    list_filter = ["source", "action", "object_type", "team", "at"]
    search_fields = ["actor_label", "action", "object_repr", "object_id"]
    date_hierarchy = "at"


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    list_filter = ["is_staff", "is_superuser", "is_active", "memberships__team"]
