from django.apps import AppConfig


class EdgeConfig(AppConfig):
    name = "edge"
    verbose_name = "Edge fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from deployments import access, figures
        from telemetry.ingest import auth as ingest_auth

        from . import models
        from .auth import telemetry_source
        from .health import edge_health

        for model in (models.DeviceGroup, models.EnrolmentToken, models.Device,
                      models.SigningKey, models.Bundle, models.EdgeRollout):
            access.register_team_path(model)
        figures.register_figure("edge_health", edge_health)
        ingest_auth.register_scheme("device", telemetry_source)
