from django.urls import path

from . import views

app_name = "threads"

urlpatterns = [
    path("deployments/<int:deployment_id>/threads/", views.deployment_threads,
         name="deployment-threads"),
    path("threads/<uuid:thread_id>/", views.thread_detail, name="thread"),
]
