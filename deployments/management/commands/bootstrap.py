"""Create the first admin account and a demo team/agent. Safe to re-run."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from deployments import actions
from deployments.audit import Actor
from deployments.models import Agent, Membership, Role, Target, Team


class Command(BaseCommand):
    help = "Create the admin account (printing how to log in) and seed a demo team and agent."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("HANGAR_ADMIN_USER", "admin"))
        parser.add_argument("--url", default="http://127.0.0.1:8000/")
        parser.add_argument("--no-demo", action="store_true", help="skip the demo team")

    def handle(self, *args, username: str, url: str, no_demo: bool, **options):
        user, password = self._admin(username)
        if not no_demo:
            self._demo(user)
        self.stdout.write(self.style.SUCCESS(f"Hangar is at {url}"))
        if password:
            self.stdout.write(f"Log in as: {username} / {password}")
        else:
            self.stdout.write(f"Log in as: {username} (password unchanged)")

    def _admin(self, username: str):
        User = get_user_model()
        password_file = Path(settings.DATA_DIR) / "admin-password"
        user = User.objects.filter(username=username).first()
        if user is not None:
            stored = password_file.read_text().strip() if password_file.exists() else None
            return user, stored
        password = os.environ.get("HANGAR_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, email="", password=password)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password)
        return user, password

    @transaction.atomic
    def _demo(self, user) -> None:
        actor = Actor(user=user, source="system")
        team = Team.objects.filter(slug="demo").first()
        if team is None:
            team = actions.create_team(name="Demo", slug="demo", actor=actor)
        Membership.objects.get_or_create(team=team, user=user, defaults={"role": Role.ADMIN})
        target = Target.objects.filter(team=team, name="this-machine").first()
        if target is None:
            target = actions.create_target(team, actor=actor, name="this-machine", kind="local",
                                           labels={"demo": "true"})
        agent = Agent.objects.filter(team=team, slug="demo-assistant").first()
        if agent is None:
            agent = actions.create_agent(
                team, actor=actor, slug="demo-assistant", name="Demo assistant",
                pattern="realtime",
                description="The reference agent answering over HTTP with an offline model.")
        version = agent.versions.order_by("-number").first()
        if version is None:
            version = actions.create_version(
                agent, actor=actor, image="hangar/reference-agent:latest",
                command=["python", "agents/reference/agent.py"], port=8080,
                env={"AGENT_MODE": "realtime", "AGENT_MODEL": "gpt-4o-mini"},
                health={"path": "/healthz", "ready_path": "/readyz"})
        if not agent.deployments.exists():
            actions.create_deployment(agent, version=version, target=target, actor=actor,
                                      environment="demo", replicas=1)
