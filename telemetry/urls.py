from django.urls import path

from . import views

app_name = "telemetry"

urlpatterns = [
    path("costs/", views.costs_index, name="costs"),
    path("teams/<int:team_id>/costs/", views.team_costs, name="team-costs"),
    path("teams/<int:team_id>/budgets/", views.budget_create, name="budget-create"),
    path("budgets/<int:budget_id>/", views.budget_update, name="budget-update"),
    path("budgets/<int:budget_id>/delete/", views.budget_delete, name="budget-delete"),
    path("budget-events/<int:event_id>/revert/", views.budget_event_revert,
         name="budget-event-revert"),
    path("deployments/<int:deployment_id>/runs/", views.deployment_runs, name="deployment-runs"),
    path("deployments/<int:deployment_id>/cost-panel/", views.cost_panel, name="cost-panel"),
    path("runs/", views.runs_index, name="runs"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("deployments/<int:deployment_id>/traces/<str:trace_id>/", views.trace_run,
         name="trace"),
]
