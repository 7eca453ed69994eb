from django.apps import AppConfig


class ThreadsConfig(AppConfig):
    name = "threads"
    verbose_name = "Threads"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from deployments import access

        from .models import Cron, Thread, ThreadRun

        for model in (Thread, ThreadRun, Cron):
            access.register_team_path(model)
