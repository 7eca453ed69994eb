from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from deployments.views import healthz
from telemetry.receiver import traces

from .api import api

admin.site.site_header = "Hangar governance"
admin.site.site_title = "Hangar admin"
admin.site.index_title = "Teams, access and audit"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("v1/traces", traces, name="otlp-traces"),
    path("telemetry/", include("telemetry.urls")),
    path("", include("deployments.urls")),
]
