from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from deployments.views import favicon, healthz
from telemetry.receiver import traces

from .api import api

admin.site.site_header = "Hangar governance"
admin.site.site_title = "Hangar admin"
admin.site.index_title = "Teams, access and audit"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("favicon.ico", favicon, name="favicon"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("v1/traces", traces, name="otlp-traces"),
    # The pages live at the paths the README names; /telemetry/… was their first home.
    path("telemetry/<path:rest>", RedirectView.as_view(url="/%(rest)s", query_string=True)),
    path("edge/", include("edge.urls")),
    path("gateway/", include("gateway.urls")),
    path("", include("rollouts.urls")),
    path("", include("threads.urls")),
    path("", include("telemetry.urls")),
    path("", include("deployments.urls")),
]
