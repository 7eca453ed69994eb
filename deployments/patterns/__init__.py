"""Deployment patterns behind one contract (``base.py``); see ``get_pattern``."""
from __future__ import annotations

from .base import PATTERNS, Desired, Pattern, PatternSettings, Verdict, get_pattern

__all__ = ["PATTERNS", "Desired", "Pattern", "PatternSettings", "Verdict", "get_pattern"]
