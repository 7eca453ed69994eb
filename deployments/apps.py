from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"
    verbose_name = "Hangar"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # System checks register on import; tasks register with Celery, so that
        # verbs can enqueue them by name in every process (see effects.enqueue).
        from . import checks, tasks  # noqa: F401
