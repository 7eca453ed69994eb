"""End the agent processes that local targets run on this machine.

They outlive the worker that started them by design (a restarted control plane
re-adopts them); ``scripts/run stop`` calls this when the user wants them gone.
Desired state is left alone: the next reconcile pass starts them again.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand

from deployments.models import Deployment, Target, TargetKind
from deployments.runtimes import RuntimeFailure, get_driver


class Command(BaseCommand):
    help = "Stop every agent process of the local targets (they restart on the next reconcile)."

    def handle(self, *args, **options):
        deployment_ids = list(Deployment.objects.values_list("pk", flat=True))
        stopped = 0
        for target in Target.objects.filter(kind=TargetKind.LOCAL):
            driver = get_driver(target)
            for deployment_id in deployment_ids:
                try:
                    for instance in driver.list_instances(deployment_id):
                        driver.remove_instance(deployment_id, instance.name)
                        stopped += 1 if instance.phase == "running" else 0
                except RuntimeFailure as exc:
                    self.stderr.write(f"{target.name}: {exc}")
        self.stdout.write(f"Stopped {stopped} agent process{'es' if stopped != 1 else ''}.")
