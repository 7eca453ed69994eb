from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "telemetry"
    verbose_name = "Telemetry and cost"
    default_auto_field = "django.db.models.BigAutoField"
