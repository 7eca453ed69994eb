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
