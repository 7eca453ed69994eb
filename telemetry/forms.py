from __future__ import annotations

import re
from decimal import Decimal

from django import forms

from .models import BudgetAction

THRESHOLD = re.compile(r"^\s*(\d{1,4})\s*%?\s*[:=]\s*([a-z_]+)\s*$")


class BudgetForm(forms.Form):
    name = forms.CharField(max_length=100)
    agent = forms.ModelChoiceField(queryset=None, required=False, empty_label="Whole team")
    amount_usd = forms.DecimalField(label="Amount per month (USD)", min_value=Decimal("0.01"),
                                    max_digits=14, decimal_places=2)
    thresholds = forms.CharField(
        initial="80:alert, 100:pause",
        help_text="percent:action, comma-separated; actions: alert, pause, scale_to_zero")
    webhook_url = forms.URLField(required=False, assume_scheme="https",
                                 help_text="optional; receives a JSON POST per threshold")

    def __init__(self, *args, agents=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent"].queryset = agents

    def clean_thresholds(self) -> list[dict]:
        items = []
        for part in self.cleaned_data["thresholds"].split(","):
            if not part.strip():
                continue
            match = THRESHOLD.match(part)
            if not match or match.group(2) not in BudgetAction.values:
                raise forms.ValidationError(
                    f"{part.strip()!r}: write percent:action, e.g. 80:alert or 100:pause.")
            items.append({"percent": int(match.group(1)), "action": match.group(2)})
        if not items:
            raise forms.ValidationError("Give at least one threshold.")
        return items


class BudgetChangeForm(forms.Form):
    amount_usd = forms.DecimalField(min_value=Decimal("0.01"), max_digits=14, decimal_places=2)
    enabled = forms.BooleanField(required=False)


class RunFilterForm(forms.Form):
    """The filters of ``GET /api/v1/runs``, for the runs page (all optional)."""

    team = forms.ModelChoiceField(queryset=None, required=False, empty_label="All teams")
    agent = forms.ModelChoiceField(queryset=None, required=False, empty_label="All agents")
    deployment = forms.ModelChoiceField(queryset=None, required=False,
                                        empty_label="All deployments")
    status = forms.ChoiceField(choices=[("", "Any status"), ("ok", "OK"), ("error", "Error")],
                               required=False)
    model = forms.CharField(max_length=200, required=False)
    since = forms.DateTimeField(required=False,
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = forms.DateTimeField(required=False,
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    min_cost = forms.DecimalField(label="Min cost (USD)", required=False, min_value=0,
                                  widget=forms.NumberInput(attrs={"step": "any"}))
    max_cost = forms.DecimalField(label="Max cost (USD)", required=False, min_value=0,
                                  widget=forms.NumberInput(attrs={"step": "any"}))
    cost_unknown = forms.NullBooleanField(
        label="Cost", required=False,
        widget=forms.Select(choices=[("", "Any cost"), ("false", "Known"),
                                     ("true", "Unknown price")]))

    def __init__(self, *args, teams=None, agents=None, deployments=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = teams
        self.fields["agent"].queryset = agents
        self.fields["deployment"].queryset = deployments

    def clean(self) -> dict:
        data = super().clean()
        low, high = data.get("min_cost"), data.get("max_cost")
        if low is not None and high is not None and low > high:
            self.add_error("max_cost", "The maximum cost is below the minimum.")
        since, until = data.get("since"), data.get("until")
        if since and until and since >= until:
            self.add_error("until", "“Until” must be after “since”.")
        return data

    def filters(self) -> dict:
        """The valid filters, by the API's names (invalid ones are left out)."""
        data = self.cleaned_data if self.is_bound else {}
        found = {k: v for k, v in data.items() if v not in (None, "") and k not in self.errors}
        for name in ("team", "agent", "deployment"):
            if name in found:
                found[name] = found[name].pk
        return found
