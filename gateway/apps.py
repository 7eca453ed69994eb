from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Real-time gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from deployments import access

        from .models import GatewayKey

        access.register_team_path(GatewayKey)
