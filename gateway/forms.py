"""The new-gateway-key form of the keys page."""
from __future__ import annotations

from django import forms

from deployments.models import Team


class GatewayKeyForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label=None)
    name = forms.CharField(max_length=100, help_text="Who calls with it.")
    agents = forms.CharField(required=False, help_text="Agent slugs it may call, comma "
                                                       "separated; empty: all of the team's.")
    rate_per_s = forms.IntegerField(required=False, min_value=1, max_value=1_000_000,
                                    label="Requests/s", help_text="Empty: the gateway's default.")
    concurrent = forms.IntegerField(required=False, min_value=1, max_value=1_000_000,
                                    label="Concurrent", help_text="Empty: the gateway's default.")
    expires_in_days = forms.IntegerField(required=False, min_value=1, max_value=3660,
                                         label="Expires in (days)", help_text="Empty: never.")

    def __init__(self, *args, teams=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = teams if teams is not None else Team.objects.none()

    def clean_agents(self) -> list[str]:
        return sorted({a.strip() for a in self.cleaned_data["agents"].split(",") if a.strip()})
