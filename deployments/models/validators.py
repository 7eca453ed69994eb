"""The name rules models and forms share."""
from __future__ import annotations

from django.core.validators import RegexValidator

slug_validator = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    "Use lowercase letters, digits and hyphens (1-63 characters, no leading/trailing hyphen).",
)
name_validator = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
    "Use letters, digits and underscores, not starting with a digit.",
)
