"""Forms for the operator UI. They parse and validate; actions change state."""
from __future__ import annotations

import json
import shlex

from django import forms

from .models import (
    AgentVersion,
    DeploymentState,
    Pattern,
    Target,
    Team,
    TokenScope,
    slug_validator,
)


class AgentForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label=None)
    name = forms.CharField(max_length=100)
    slug = forms.CharField(max_length=63, validators=[slug_validator],
                           help_text="Lowercase letters, digits and hyphens; unique in the team.",
                           widget=forms.TextInput(attrs={"data-slug-from": "name"}))
    pattern = forms.ChoiceField(choices=Pattern.choices)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def __init__(self, *args, teams=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = teams if teams is not None else Team.objects.none()


class VersionForm(forms.Form):
    image = forms.CharField(max_length=255, required=False,
                            help_text="Container image, e.g. hangar/reference-agent:latest")
    command = forms.CharField(max_length=4000, required=False,
                              help_text="Command line; shell quoting applies.")
    env = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                          help_text="One KEY=value per line.")
    secret_refs = forms.CharField(required=False, help_text="Secret names, comma separated.")
    cpu = forms.DecimalField(min_value=0.01, max_value=256, decimal_places=3, initial="0.5",
                             label="CPU (cores)")
    memory_mb = forms.IntegerField(min_value=16, max_value=1024 * 1024, initial=256,
                                   label="Memory (MiB)")
    port = forms.IntegerField(min_value=1, max_value=65535, required=False)
    pattern_settings = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                       help_text='JSON, e.g. {"schedule": "*/5 * * * *"}')

    def clean_command(self) -> list[str]:
        try:
            return shlex.split(self.cleaned_data["command"])
        except ValueError as exc:
            raise forms.ValidationError(f"Cannot parse the command: {exc}") from None

    def clean_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for number, line in enumerate(self.cleaned_data["env"].splitlines(), 1):
            if not line.strip():
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise forms.ValidationError(f"Line {number} is not KEY=value.")
            env[key.strip()] = value
        return env

    def clean_secret_refs(self) -> list[str]:
        return [s.strip() for s in self.cleaned_data["secret_refs"].split(",") if s.strip()]

    def clean_pattern_settings(self) -> dict:
        raw = self.cleaned_data["pattern_settings"].strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Give a JSON object.")
        return value


class DeploymentForm(forms.Form):
    version = forms.ModelChoiceField(queryset=AgentVersion.objects.none(), empty_label=None)
    target = forms.ModelChoiceField(queryset=Target.objects.none(), empty_label=None)
    environment = forms.CharField(max_length=63, initial="production",
                                  validators=[slug_validator])
    replicas = forms.IntegerField(min_value=0, max_value=1000, initial=1)
    state = forms.ChoiceField(choices=DeploymentState.choices, initial=DeploymentState.ACTIVE)

    def __init__(self, *args, agent=None, **kwargs):
        super().__init__(*args, **kwargs)
        if agent is not None:
            self.fields["version"].queryset = agent.versions.order_by("-number")
            self.fields["target"].queryset = Target.objects.filter(team_id=agent.team_id)


class ScaleForm(forms.Form):
    replicas = forms.IntegerField(min_value=0, max_value=1000)


class StateForm(forms.Form):
    state = forms.ChoiceField(choices=DeploymentState.choices)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. ci-deploy.")
    scope = forms.ChoiceField(choices=TokenScope.choices, initial=TokenScope.READ,
                              help_text="Never more than your own role allows.")
    expires_at = forms.DateTimeField(
        label="Expires", required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Leave empty for a token that does not expire.")


class ScheduleForm(forms.Form):
    """A batch deployment's new schedule; the cron line and the zone are checked
    by the verb (``actions.create_schedule``), whose 422 names the field."""

    name = forms.CharField(max_length=63, validators=[slug_validator],
                           help_text="Lowercase letters, digits and hyphens; unique in the "
                                     "deployment.")
    cron = forms.CharField(max_length=200, help_text='Five fields, e.g. "*/5 * * * *" or '
                                                     '"30 2 * * 1-5"; @hourly, @daily…')
    seconds = forms.BooleanField(required=False, label="With a seconds field",
                                 help_text='Six fields, the first the seconds: "*/10 * * * * *".')
    timezone = forms.CharField(max_length=64, initial="UTC", label="Time zone",
                               help_text="IANA name the cron is read in, e.g. Europe/Paris.")
    concurrency_policy = forms.ChoiceField(
        choices=[("forbid", "Forbid: skip while a run is running"),
                 ("allow", "Allow: run both"),
                 ("replace", "Replace: stop the running one")],
        initial="forbid", label="Concurrency")
    timeout_s = forms.IntegerField(min_value=1, max_value=7 * 24 * 3600, required=False,
                                   label="Timeout (s)", help_text="Empty: no timeout.")
    retries = forms.IntegerField(min_value=0, max_value=100, initial=0)
    input = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False,
                            label="Input (JSON)",
                            help_text='Passed to the job, e.g. {"items": ["a", "b"]}.')

    def clean_input(self):
        raw = self.cleaned_data["input"].strip()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg}.") from None
