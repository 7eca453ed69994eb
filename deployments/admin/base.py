"""The admin's one write path: ``VerbAdmin`` and ``VerbInline`` save and delete
through verbs, and ``ReadOnlyAdmin`` is for models without one.

A refused verb rolls the whole submission back; the form is then shown again
with the verb's answer on the field (or inline row) it names. A refused delete
or bulk action comes back as an error message.
"""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpResponseRedirect

from ..audit import Actor
from ..errors import DomainError


def admin_actor(request) -> Actor:
    return Actor.from_request(request, "admin")


# A verb's refusal, shown on the form ------------------------------------------------


class Refused(Exception):
    """A verb refused an admin write. ``prefix``/``index`` name the inline row it
    came from (``None`` for the main form)."""

    def __init__(self, error: DomainError, prefix: str | None = None, index: int | None = None):
        super().__init__(error.detail)
        self.error, self.prefix, self.index = error, prefix, index

    @property
    def text(self) -> str:
        return describe(self.error.detail)


def describe(detail: Any) -> str:
    if isinstance(detail, dict):
        return " ".join(f"{key}: {describe(value)}" for key, value in detail.items())
    if isinstance(detail, list | tuple):
        return " ".join(describe(item) for item in detail)
    return str(detail)


def show_refusal(form: forms.BaseForm, detail: Any, aliases: dict[str, str]) -> None:
    """Put a verb's error detail on the form fields it names, the rest on the form."""
    if not isinstance(detail, dict):
        form.add_error(None, describe(detail))
        return
    for key, value in detail.items():
        field = aliases.get(key, key)
        if field in form.fields and not form.fields[field].disabled:
            form.add_error(field, describe(value))
        else:
            form.add_error(None, f"{key}: {describe(value)}")


def _refusal(request) -> Refused | None:
    return getattr(request, "_hangar_refused", None)


def guarded(call, *args, **kwargs):
    """Call a verb; its domain error becomes the admin's :class:`Refused`."""
    try:
        return call(*args, **kwargs)
    except DomainError as exc:
        raise Refused(exc) from None


class Writes:
    """The verbs behind one model's admin, shared by its page and its inlines.

    ``create(actor, data)`` gets the form's cleaned data and returns the new row;
    ``update(actor, obj, changes)`` gets the current row and the changed fields;
    ``delete(actor, obj)``. A missing one means that write is not offered.
    ``aliases`` maps a verb's error key to the form field that shows it.
    """

    create = None
    update = None
    delete = None
    aliases: dict[str, str] = {}

    def changes(self, form: forms.BaseForm) -> dict[str, Any]:
        return {name: form.cleaned_data[name] for name in form.changed_data
                if name in form.cleaned_data}


class VerbAdmin(Writes, admin.ModelAdmin):
    """A ModelAdmin whose saves and deletes go through verbs (see the module doc)."""

    # Bulk edits from the changelist would skip the verbs' one-row checks.
    list_editable = ()

    def has_add_permission(self, request):
        return self.create is not None and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        return self.update is not None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self.delete is not None and super().has_delete_permission(request, obj)

    def get_readonly_fields(self, request, obj=None):
        fixed = getattr(self, "fixed_after_create", ())
        return [*super().get_readonly_fields(request, obj), *(fixed if obj is not None else ())]

    # Saving --------------------------------------------------------------------

    def save_model(self, request, obj, form, change):
        actor = admin_actor(request)
        if change:
            changes = self.changes(form)
            if not changes:
                return
            current = type(obj).objects.get(pk=obj.pk)
            saved = guarded(self.update, actor, current, changes)
        else:
            saved = guarded(self.create, actor, form.cleaned_data)
        obj.pk = saved.pk
        obj._state.adding = False
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        # Many-to-many values are part of ``changes``: the verb sets them.
        for formset in formsets:
            self.save_formset(request, form, formset, change)

    def save_formset(self, request, form, formset, change):
        inline: VerbInline = formset.verb_inline
        actor = admin_actor(request)
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

        def create(row):
            formset.new_objects.append(inline.create(actor, row.cleaned_data))

        def update(row, changes):
            inline.update(actor, type(row.instance).objects.get(pk=row.instance.pk), changes)
            formset.changed_objects.append((row.instance, list(changes)))

        def delete(row):
            inline.delete(actor, type(row.instance).objects.get(pk=row.instance.pk))
            formset.deleted_objects.append(row.instance)

        creates, updates, deletes = [], [], []
        for index, row in enumerate(formset.forms):
            if formset.can_delete and formset._should_delete_form(row):
                if row.instance.pk is not None:
                    deletes.append((index, lambda row=row: delete(row)))
            elif row.instance.pk is None:
                if row.has_changed():
                    creates.append((index, lambda row=row: create(row)))
            elif row.has_changed() and (changes := inline.changes(row)):
                updates.append((index, lambda row=row, changes=changes: update(row, changes)))
        # The rows of one submission are taken as a whole: new rows first and
        # deletions last, and a row a verb refuses is tried again after the others
        # (promote one admin and demote the other, in either row order). Each verb
        # is atomic, so a refused try leaves nothing behind.
        pending = [*creates, *updates, *deletes]
        while pending:
            refused = []
            for index, run in pending:
                try:
                    run()
                except DomainError as exc:
                    refused.append((index, run, exc))
            if len(refused) == len(pending):
                index, _, exc = refused[0]
                raise Refused(exc, prefix=formset.prefix, index=index)
            pending = [(index, run) for index, run, _ in refused]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form_class = super().get_form(request, obj, change=change, **kwargs)
        refused = _refusal(request)
        if refused is None or refused.prefix is not None:
            return form_class
        aliases = self.aliases

        class RefusedForm(form_class):
            def _post_clean(self):
                super()._post_clean()
                show_refusal(self, refused.error.detail, aliases)

        return RefusedForm

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except Refused as refused:
            if _refusal(request) is not None:
                raise  # never loop: the second pass only validates
            # The transaction is rolled back; validate the same POST again with the
            # verb's answer added, which renders the form with it instead of saving.
            request._hangar_refused = refused
            return super().changeform_view(request, object_id, form_url, extra_context)

    # Deleting ------------------------------------------------------------------

    def get_deleted_objects(self, objs, request):
        # What the verb removes along with its object (a team's policy, an
        # agent's versions, a deployment's instances) needs no permission of its
        # own: the verb decides, and refuses what must not go.
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected

    def delete_model(self, request, obj):
        guarded(self.delete, admin_actor(request), type(obj).objects.get(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except Refused as refused:
            self.message_user(request, refused.text, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def response_action(self, request, queryset):
        # Bulk actions are all-or-nothing; a refusal is shown as a message.
        try:
            with transaction.atomic():
                return super().response_action(request, queryset)
        except Refused as refused:
            self.message_user(request, refused.text, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


class VerbInline(Writes):
    """Inline rows saved through verbs by the parent's :class:`VerbAdmin`."""

    def has_add_permission(self, request, obj=None):
        return self.create is not None and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return self.update is not None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self.delete is not None and super().has_delete_permission(request, obj)

    def get_formset(self, request, obj=None, **kwargs):
        formset_class = super().get_formset(request, obj, **kwargs)
        refused = _refusal(request)
        inline = self

        class VerbFormSet(formset_class):
            verb_inline = inline

            def clean(self):
                super().clean()
                if refused is None or refused.prefix != self.prefix:
                    return
                row = self.forms[refused.index] if refused.index < len(self.forms) else None
                if row is None or (self.can_delete and self._should_delete_form(row)):
                    raise ValidationError(refused.text)
                show_refusal(row, refused.error.detail, inline.aliases)

        return VerbFormSet


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records to look at, never to add, change or delete here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
