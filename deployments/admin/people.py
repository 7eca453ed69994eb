"""Teams, their members and policies, and users, through the verbs."""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpResponseRedirect

from .. import actions
from ..errors import Invalid
from ..models import Membership, Policy, Team
from .base import ReadOnlyAdmin, VerbAdmin, VerbInline, Writes, admin_actor

# Teams, members, policies -----------------------------------------------------------


class MembershipWrites(Writes):
    def create(self, actor, data):
        return actions.add_member(data["team"], username=data["user"].get_username(),
                                  role=data["role"], actor=actor)

    def update(self, actor, membership, changes):
        if set(changes) - {"role"}:
            raise Invalid(
                "Only the role of a membership can be changed; remove it and add another.")
        return actions.change_member_role(membership, role=changes["role"], actor=actor)

    def delete(self, actor, membership):
        actions.remove_member(membership, actor=actor)


class PolicyWrites(Writes):
    """A team's policy is made with the team; here it is only changed."""

    POLICY_FIELDS = ("max_replicas", "allowed_target_kinds", "allowed_patterns")

    def create(self, actor, data):
        # The inline's row on a new team: the team's policy exists already.
        policy, _ = Policy.objects.get_or_create(team=data["team"])
        return actions.update_policy(policy, actor=actor, **{
            name: data[name] for name in self.POLICY_FIELDS if name in data})

    def update(self, actor, policy, changes):
        return actions.update_policy(policy, actor=actor, **changes)


class MembershipInline(MembershipWrites, VerbInline, admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]
    fields = ["user", "role"]


class PolicyInline(PolicyWrites, VerbInline, admin.StackedInline):
    model = Policy
    fields = list(PolicyWrites.POLICY_FIELDS)
    max_num = 1


@admin.register(Team)
class TeamAdmin(VerbAdmin):
    list_display = ["slug", "name", "member_count", "created_at"]
    search_fields = ["slug", "name"]
    list_filter = ["created_at"]
    inlines = [MembershipInline, PolicyInline]
    fields = ["name", "slug", "created_at"]
    readonly_fields = ["created_at"]
    fixed_after_create = ["slug"]

    @admin.display(description="members")
    def member_count(self, obj):
        return obj.memberships.count()

    def create(self, actor, data):
        # Members come from the inline, not from who clicked Save.
        return actions.create_team(name=data["name"], slug=data["slug"], actor=actor, join=False)

    def update(self, actor, team, changes):
        return actions.update_team(team, actor=actor, **changes)

    def delete(self, actor, team):
        actions.delete_team(team, actor=actor)


@admin.register(Membership)
class MembershipAdmin(MembershipWrites, VerbAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__slug"]
    autocomplete_fields = ["user", "team"]
    list_select_related = ["user", "team"]
    fields = ["team", "user", "role", "created_at"]
    readonly_fields = ["created_at"]
    fixed_after_create = ["team", "user"]


@admin.register(Policy)
class PolicyAdmin(PolicyWrites, VerbAdmin):
    list_display = ["team", "max_replicas", "allowed_target_kinds", "allowed_patterns"]
    list_filter = ["team"]
    search_fields = ["team__slug"]
    fields = ["team", *PolicyWrites.POLICY_FIELDS]
    readonly_fields = ["team"]
    create = None  # made with its team


# Users -------------------------------------------------------------------------------

User = get_user_model()
admin.site.unregister(User)
admin.site.unregister(Group)

USER_CHANGE_FIELDS = ("username", "first_name", "last_name", "email", "is_active", "is_staff",
                      "is_superuser", "groups", "user_permissions")


@admin.register(User)
class VerbUserAdmin(VerbAdmin, UserAdmin):
    list_filter = ["is_staff", "is_superuser", "is_active", "memberships__team"]
    readonly_fields = ["last_login", "date_joined"]

    def create(self, actor, data):
        password = data.get("password1") if data.get("set_usable_password", True) else None
        return actions.create_user(username=data["username"], password=password, actor=actor)

    def changes(self, form):
        changes = super().changes(form)
        for name, value in changes.items():
            if isinstance(value, models.QuerySet):
                changes[name] = list(value)
        return {name: value for name, value in changes.items() if name in USER_CHANGE_FIELDS}

    def update(self, actor, user, changes):
        return actions.update_user(user, actor=actor, **changes)

    def delete(self, actor, user):
        actions.delete_user(user, actor=actor)

    def user_change_password(self, request, id, form_url=""):
        user = self.get_object(request, unquote(id))
        if request.method != "POST" or user is None:
            return super().user_change_password(request, id, form_url)
        if not self.has_change_permission(request, user):
            raise PermissionDenied
        form = self.change_password_form(user, request.POST)
        if not form.is_valid():
            return super().user_change_password(request, id, form_url)  # shows the errors
        usable = form.cleaned_data["set_usable_password"]
        if not usable and "unset-password" not in request.POST:
            return super().user_change_password(request, id, form_url)
        user = actions.set_user_password(
            user, password=form.cleaned_data["password1"] if usable else None,
            actor=admin_actor(request))
        self.log_change(request, user, self.construct_change_message(request, form, None))
        messages.success(request, "Password changed." if usable
                         else "Password-based authentication was disabled.")
        update_session_auth_hash(request, user)
        return HttpResponseRedirect(f"../../{user.pk}/change/")


@admin.register(Group)
class ReadOnlyGroupAdmin(ReadOnlyAdmin, GroupAdmin):
    """Hangar's roles live in team memberships; groups are not used."""
