from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "rollouts"
    verbose_name = "Progressive delivery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from deployments import access, traffic

        from . import events, tasks  # noqa: F401  (live event and Celery tasks register)
        from .engine import split_for
        from .models import Hook, Rollout
        from .notify import health_changed
        from .plan import job_revision

        access.register_team_path(Hook)
        access.register_team_path(Rollout, "deployment__agent__team_id")
        traffic.register(split_for)
        traffic.register_jobs(job_revision)
        traffic.on_health_change(health_changed)
