from django.urls import path

from . import views
from .views import batch, stream_panels

app_name = "deployments"

urlpatterns = [
    path("", views.agent_list, name="agents"),
    path("fleet/", views.fleet, name="fleet"),
    path("agents/new/", views.agent_create, name="agent-create"),
    path("agents/<int:agent_id>/", views.agent_detail, name="agent"),
    path("agents/<int:agent_id>/versions/", views.version_create, name="version-create"),
    path("agents/<int:agent_id>/deploy/", views.deployment_create, name="deployment-create"),
    path("deployments/<int:deployment_id>/", views.deployment_detail, name="deployment"),
    path("deployments/<int:deployment_id>/scale/", views.deployment_scale, name="deployment-scale"),
    path("deployments/<int:deployment_id>/state/", views.deployment_state, name="deployment-state"),
    path("deployments/<int:deployment_id>/metrics/", views.deployment_metrics,
         name="deployment-metrics"),
    path("deployments/<int:deployment_id>/delete/", views.deployment_delete,
         name="deployment-delete"),
    path("deployments/<int:deployment_id>/restart/", views.deployment_restart,
         name="deployment-restart"),
    path("deployments/<int:deployment_id>/rollback/", views.deployment_rollback,
         name="deployment-rollback"),
    path("deployments/<int:deployment_id>/instances/<str:name>/logs/", views.instance_logs,
         name="instance-logs"),
    path("deployments/<int:deployment_id>/schedules/", batch.schedule_create,
         name="schedule-create"),
    path("schedules/<int:schedule_id>/trigger/", batch.schedule_trigger, name="schedule-trigger"),
    path("schedules/<int:schedule_id>/suspend/", batch.schedule_suspend, name="schedule-suspend"),
    path("schedules/<int:schedule_id>/resume/", batch.schedule_resume, name="schedule-resume"),
    path("job-runs/<int:run_id>/cancel/", batch.job_run_cancel, name="job-run-cancel"),
    path("deployments/<int:deployment_id>/dead-letters/replay/",
         stream_panels.dead_letters_replay, name="dead-letters-replay"),
    path("deployments/<int:deployment_id>/dead-letters/purge/",
         stream_panels.dead_letters_purge, name="dead-letters-purge"),
    path("tokens/", views.tokens_index, name="tokens"),
    path("teams/<int:team_id>/tokens/", views.team_tokens, name="team-tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
]
