"""Create or revoke a gateway key from the server's shell::

    manage.py gateway_key create --team demo --name shop [--agents a,b] [--rate 10]
                                 [--concurrent 5] [--expires 30d]
    manage.py gateway_key revoke --prefix 1a2b3c4d5e6f

``create`` prints the key once (only its hash is stored); both are audited.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from deployments.audit import Actor
from deployments.errors import DomainError
from deployments.management.commands.create_token import parse_expiry
from deployments.models import Team

from ...actions import create_gateway_key, revoke_gateway_key
from ...models import GatewayKey

ACTOR = Actor(user=None, source="admin")


class Command(BaseCommand):
    help = "Create a gateway key for a team's callers (printed once), or revoke one."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        create = sub.add_parser("create")
        create.add_argument("--team", required=True, help="team slug")
        create.add_argument("--name", required=True, help="who calls with it")
        create.add_argument("--agents", default="", help="agent slugs it may call, comma "
                                                         "separated (default: all)")
        create.add_argument("--rate", type=int, default=None, help="requests per second")
        create.add_argument("--concurrent", type=int, default=None,
                            help="requests in flight at once")
        create.add_argument("--expires", default=None, help="30d, an ISO date, or never")
        revoke = sub.add_parser("revoke")
        revoke.add_argument("--prefix", required=True, help="the part after hgk_")

    def handle(self, *args, verb: str, **options):
        if verb == "revoke":
            key = GatewayKey.objects.filter(prefix=options["prefix"]).first()
            if key is None:
                raise CommandError(f"no gateway key hgk_{options['prefix']}_…")
            revoke_gateway_key(key, actor=ACTOR)
            self.stdout.write(f"revoked {key}")
            return
        team = Team.objects.filter(slug=options["team"]).first()
        if team is None:
            raise CommandError(f"no team {options['team']!r}")
        agents = [a.strip() for a in options["agents"].split(",") if a.strip()]
        try:
            _, plaintext = create_gateway_key(
                team, name=options["name"], actor=ACTOR, agents=agents,
                rate_per_s=options["rate"], concurrent=options["concurrent"],
                expires_at=parse_expiry(options["expires"]))
        except DomainError as exc:
            raise CommandError(str(exc.detail)) from None
        self.stdout.write(plaintext)
