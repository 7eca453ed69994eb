"""Gateway keys (#13 point 4): created by the verb (hashed at rest, shown once,
audited), scoped to agents, with their own limits, refused once revoked or
expired — through a real gateway process."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone

from deployments.audit import Actor
from deployments.errors import Unprocessable
from deployments.models import AuditEvent
from gateway.actions import create_gateway_key, revoke_gateway_key
from gateway.models import GatewayKey

from .factories import AgentFactory, DeploymentFactory
from .gateway_support import ready_instance, start_agent, start_gateway, wait_until
from .processes import database_env, free_port, stop


@pytest.mark.django_db
def test_a_key_is_hashed_at_rest_shown_once_and_every_verb_audited(world, capsys):
    actor = Actor(user=world.users["admin"])
    key, plaintext = create_gateway_key(world.team, name="shop", actor=actor,
                                        agents=["support-bot"], rate_per_s=5, concurrent=2)
    assert plaintext.startswith(f"hgk_{key.prefix}_")
    secret = plaintext.split("_", 2)[2]
    stored = GatewayKey.objects.filter(pk=key.pk).values().get()
    assert secret not in str(stored) and key.hashed != secret
    created = AuditEvent.objects.get(action="gateway_key.create")
    assert secret not in str(created.after) and created.actor_label == "admin"
    revoke_gateway_key(key, actor=actor)
    revoke_gateway_key(key, actor=actor)  # twice: one revocation
    assert AuditEvent.objects.filter(action="gateway_key.revoke").count() == 1
    call_command("gateway_key", "create", "--team", "acme", "--name", "cli")
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("hgk_") and GatewayKey.objects.filter(name="cli").exists()


@pytest.mark.django_db
def test_bad_key_input_names_the_field_and_creates_nothing(world):
    actor = Actor(user=world.users["admin"])
    cases = [({"name": ""}, "name"), ({"name": "x", "agents": ["foreign"]}, "agents"),
             ({"name": "x", "rate_per_s": 0}, "rate_per_s"),
             ({"name": "x", "concurrent": -1}, "concurrent"),
             ({"name": "x", "expires_at": timezone.now() - timedelta(days=1)}, "expires_at")]
    for kwargs, field in cases:
        with pytest.raises(Unprocessable) as caught:
            create_gateway_key(world.team, actor=actor, **kwargs)
        assert field in caught.value.detail
    assert not GatewayKey.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_keys_through_the_gateway_scope_limits_revoke_and_expiry(world, tmp_path):
    actor = Actor(user=world.users["admin"])
    other = AgentFactory(team=world.team, slug="billing")
    other_deployment = DeploymentFactory(agent=other, target=world.target)
    started = []
    agent, port = start_agent("bot-1", tmp_path / "bot-1.log", AGENT_LATENCY_MS="1500")
    started.append(agent)
    other_agent, other_port = start_agent("bill-1", tmp_path / "bill-1.log")
    started.append(other_agent)
    ready_instance(world.deployment, "bot-1", port)
    ready_instance(other_deployment, "bill-1", other_port)
    gw_port = free_port()
    started.append(start_gateway(gw_port, database_env(), tmp_path / "gateway.log",
                                 HANGAR_GATEWAY_AUTH_TTL_S="0.2",
                                 HANGAR_GATEWAY_REFRESH_S="0.3"))
    base = f"http://127.0.0.1:{gw_port}/gw/acme"
    try:
        key, plaintext = create_gateway_key(world.team, name="shop", actor=actor,
                                            agents=["support-bot"], concurrent=1)
        headers = {"Authorization": f"Bearer {plaintext}"}
        bot = f"{base}/support-bot/production/invoke"
        assert requests.post(bot, json={"input": "x"}, headers=headers,
                             timeout=30).status_code == 200
        # Scoped to support-bot: another agent of the same team is not there for it.
        wait_until(lambda: requests.post(f"{base}/billing/production/invoke", json={},
                                         headers=headers, timeout=10).status_code == 404,
                   what="billing answered 404 for a key scoped to support-bot")
        # Its own concurrency limit: one in flight, the second is a 429.
        call = threading.Thread(target=lambda: requests.post(bot, json={"input": "x"},
                                                             headers=headers, timeout=30))
        call.start()
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                   .json()["inflight"] == 1, what="one request in flight")
        refused = requests.post(bot, json={"input": "x"}, headers=headers, timeout=10)
        call.join()
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        revoke_gateway_key(key, actor=actor)
        wait_until(lambda: requests.post(bot, json={"input": "x"}, headers=headers,
                                         timeout=30).status_code == 401, what="401 revoked")
        expiring, plaintext2 = create_gateway_key(world.team, name="brief", actor=actor)
        headers2 = {"Authorization": f"Bearer {plaintext2}"}
        assert requests.post(bot, json={"input": "x"}, headers=headers2,
                             timeout=30).status_code == 200
        GatewayKey.objects.filter(pk=expiring.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1))
        wait_until(lambda: requests.post(bot, json={"input": "x"}, headers=headers2,
                                         timeout=30).status_code == 401, what="401 expired")
    finally:
        for process in started:
            stop(process, timeout=10)
