"""Create an API token from the server's shell: the first token, before anyone
can open the Tokens page, or for automation set up by an operator."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from deployments import actions
from deployments.audit import Actor
from deployments.errors import DomainError
from deployments.models import SCOPE_ROLE, Team


def parse_expiry(value: str | None) -> datetime | None:
    """``30d`` (days from now), an ISO date or date-time, or nothing (never expires)."""
    if not value or value == "never":
        return None
    if value.endswith("d") and value[:-1].isdigit():
        return timezone.now() + timedelta(days=int(value[:-1]))
    try:
        found = parse_datetime(value) or parse_datetime(f"{value}T00:00:00")
    except ValueError:
        found = None
    if found is None:
        raise CommandError(f"--expires {value!r}: give e.g. 30d, 2026-12-31 or "
                           "2026-12-31T18:00:00+00:00.")
    return timezone.make_aware(found) if timezone.is_naive(found) else found


class Command(BaseCommand):
    help = ("Create an API token acting for a user in a team and print it (it is shown "
            "this once; only its hash is stored).")

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="username the token acts for")
        parser.add_argument("--team", required=True, help="team slug")
        parser.add_argument("--scope", default="read", choices=list(SCOPE_ROLE),
                            help="read | deploy | admin (default read)")
        parser.add_argument("--expires", default=None,
                            help="30d, an ISO date or date-time, or never (the default)")
        parser.add_argument("--name", default="", help="what uses it (default cli-<user>)")

    def handle(self, *args, user: str, team: str, scope: str, expires: str | None, name: str,
               **options):
        found_user = get_user_model().objects.filter(username=user).first()
        if found_user is None:
            raise CommandError(f"No user {user!r}.")
        found_team = Team.objects.filter(slug=team).first()
        if found_team is None:
            raise CommandError(f"No team with the slug {team!r}.")
        try:
            token, plaintext = actions.create_token(
                found_team, user=found_user, name=name or f"cli-{user}", scope=scope,
                expires_at=parse_expiry(expires), actor=Actor(user=found_user, source="system"))
        except DomainError as exc:
            raise CommandError(str(exc.detail)) from None
        expiry = token.expires_at.isoformat() if token.expires_at else "never"
        self.stderr.write(f"Token {token.name} for {user} in {team}, scope {scope}, "
                          f"expires {expiry}. It is not shown again:")
        self.stdout.write(plaintext)
