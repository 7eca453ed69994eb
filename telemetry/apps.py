from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "telemetry"
    verbose_name = "Telemetry and cost"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from deployments import figures

        from . import tasks  # noqa: F401  (registers with Celery; budgets enqueue by name)
        from .summary import deployment_series, deployment_summaries

        figures.register_summaries(deployment_summaries)
        figures.register_series("runs", deployment_series)
