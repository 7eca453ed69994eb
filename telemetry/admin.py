"""Governance of budgets in the admin, through the verbs in ``budgets`` (audited,
evaluated after commit); runs, budget events and compute cost rows are
read-only records here. Spans are too many to page through: see the run trace
pages."""
from __future__ import annotations

from django.contrib import admin

from deployments.admin import ReadOnlyAdmin, VerbAdmin

from . import budgets
from .models import Budget, BudgetEvent, ComputeCost, Run


@admin.register(Budget)
class BudgetAdmin(VerbAdmin):
    list_display = ("name", "team", "agent", "amount_usd", "enabled", "has_webhook")
    list_filter = ("enabled", "team")
    search_fields = ("name", "team__slug", "agent__slug")
    # The webhook URL may carry a secret: set it through the API or the dashboard.
    fields = ("team", "agent", "name", "amount_usd", "thresholds", "enabled")
    fixed_after_create = ("team", "agent")
    aliases = {"agent_id": "agent"}

    def create(self, actor, data):
        return budgets.create_budget(data["team"], agent=data["agent"], actor=actor, **{
            name: data[name] for name in ("name", "amount_usd", "thresholds", "enabled")})

    def update(self, actor, budget, changes):
        return budgets.update_budget(budget, actor=actor, **changes)

    def delete(self, actor, budget):
        budgets.delete_budget(budget, actor=actor)

    @admin.display(boolean=True, description="webhook")
    def has_webhook(self, obj):
        return bool(obj.webhook_url)


@admin.register(BudgetEvent)
class BudgetEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "budget", "percent", "action", "spent_usd", "reverted_at")
    list_filter = ("action", "month")
    search_fields = ("budget__name", "team__slug")


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "deployment_id", "status", "started_at", "input_tokens",
                    "output_tokens", "cost_usd", "unpriced_spans")
    list_filter = ("status", "started_at")
    search_fields = ("name", "model", "instance")
    show_full_result_count = False


@admin.register(ComputeCost)
class ComputeCostAdmin(ReadOnlyAdmin):
    list_display = ("hour", "deployment_id", "instance", "seconds", "cost_usd")
    list_filter = ("hour",)
    search_fields = ("instance",)
    show_full_result_count = False
