from django.urls import path

from . import views

app_name = "edge"

urlpatterns = [
    path("", views.index, name="index"),
    path("devices/", views.devices, name="devices"),
    path("devices/<int:device_id>/", views.device_detail, name="device"),
    *[path(f"devices/<int:device_id>/{verb}/", views.device_action, {"verb": verb},
           name=f"device-{verb}") for verb in views.VERBS],
    path("tokens/", views.tokens, name="enrolment-tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
    path("rollouts/", views.rollouts, name="rollouts"),
    path("rollouts/<int:rollout_id>/", views.rollout_detail, name="rollout"),
    *[path(f"rollouts/<int:rollout_id>/{verb}/", views.rollout_action, {"verb": verb},
           name=f"rollout-{verb}") for verb in ("promote", "abort")],
]
