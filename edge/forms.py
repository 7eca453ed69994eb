"""Forms of the fleet pages. They parse and validate; ``edge.actions`` changes state."""
from __future__ import annotations

import re

from django import forms

from .models import Bundle, DeviceGroup, DeviceState

WAVE = re.compile(r"^\s*(\d+)\s*(%?)\s*$")


class DeviceFilterForm(forms.Form):
    q = forms.CharField(required=False)
    group = forms.ModelChoiceField(queryset=DeviceGroup.objects.none(), required=False,
                                   empty_label="All groups")
    state = forms.ChoiceField(choices=[("", "Any state"), *DeviceState.choices], required=False)
    online = forms.ChoiceField(choices=[("", "Online or not"), ("yes", "Online"),
                                        ("no", "Offline")], required=False)
    health = forms.ChoiceField(required=False, choices=[
        ("", "Any health"), ("Healthy", "Healthy"), ("Progressing", "Progressing"),
        ("Degraded", "Degraded"), ("Missing", "Missing"), ("Suspended", "Suspended")])

    def __init__(self, *args, groups=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["group"].queryset = groups if groups is not None else DeviceGroup.objects.none()


class EnrolmentTokenForm(forms.Form):
    group = forms.ModelChoiceField(queryset=DeviceGroup.objects.none(), empty_label=None)
    name = forms.CharField(max_length=100, required=False)
    max_uses = forms.IntegerField(initial=1, label="Uses",
                                  help_text="How many devices may enrol with it.")
    expires_in_hours = forms.IntegerField(initial=24, label="Expires in (hours)")

    def __init__(self, *args, groups=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["group"].queryset = groups if groups is not None else DeviceGroup.objects.none()

    def clean_expires_in_hours(self) -> int:
        hours = self.cleaned_data["expires_in_hours"]
        if not 1 <= hours <= 24 * 366:
            raise forms.ValidationError("Give 1 to 8784 hours.")
        return hours


class RolloutForm(forms.Form):
    group = forms.ModelChoiceField(queryset=DeviceGroup.objects.none(), empty_label=None)
    bundle = forms.ModelChoiceField(queryset=Bundle.objects.none(), empty_label=None)
    waves = forms.CharField(initial="10%, 50%, 100%",
                            help_text="Comma separated: a device count (2) or a percentage "
                                      "(10%); the last wave takes every device left.")
    health_threshold = forms.IntegerField(initial=90, label="Healthy to advance (%)")
    failure_threshold = forms.IntegerField(initial=20, label="Failed to halt (%)")

    def __init__(self, *args, groups=None, bundles=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["group"].queryset = groups if groups is not None else DeviceGroup.objects.none()
        self.fields["bundle"].queryset = bundles if bundles is not None else Bundle.objects.none()

    def clean_waves(self) -> list[dict]:
        waves = []
        for part in self.cleaned_data["waves"].split(","):
            match = WAVE.match(part)
            if not match:
                raise forms.ValidationError(
                    f"{part.strip() or 'An empty wave'} is neither a count (2) nor a "
                    "percentage (10%).")
            number, percent = int(match.group(1)), match.group(2)
            waves.append({"percent": number} if percent else {"count": number})
        return waves
