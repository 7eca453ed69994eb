from django.urls import path

from . import views

app_name = "gateway"

urlpatterns = [
    path("keys/", views.keys, name="keys"),
    path("keys/<int:key_id>/revoke/", views.revoke, name="key-revoke"),
]
