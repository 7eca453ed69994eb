from django.urls import path

from . import views

app_name = "rollouts"

urlpatterns = [
    path("deployments/<int:deployment_id>/rollout/", views.rollout_page, name="rollout"),
    path("deployments/<int:deployment_id>/rollout/<str:verb>/", views.rollout_action,
         name="action"),
]
