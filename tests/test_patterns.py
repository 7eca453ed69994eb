"""Pattern settings are validated per pattern when a version is created."""
from __future__ import annotations

import json

import pytest

from deployments.models import AgentVersion
from deployments.patterns import PATTERNS, get_pattern

from .factories import AgentFactory

API = "/api/v1"

GOOD = {
    "batch": {"schedule": "*/5 * * * *", "timezone": "Europe/Paris",
              "concurrency_policy": "replace", "timeout_s": 600, "retries": 2},
    "stream": {"source": {"kind": "redis", "url": "redis://127.0.0.1:6379/0", "stream": "orders",
                          "group": "triage"}, "lag_target": 50},
    "realtime": {"concurrency": 8, "request_timeout_s": 120, "double_texting": "enqueue"},
    "edge": {"device_selector": {"site": "lyon"}},
}
BAD = {  # one bad value per pattern, and the field the answer must name
    "batch": ({"concurrency_policy": "sometimes"}, "concurrency_policy"),
    "stream": ({"lag_target": -1}, "lag_target"),
    "realtime": ({"double_texting": "shout"}, "double_texting"),
    "edge": ({"device_selector": ["site"]}, "device_selector"),
}


def create(world, pattern: str, settings) -> object:
    agent = AgentFactory(team=world.team, slug=f"p-{pattern}", pattern=pattern)
    return world.client("operator").post(
        f"{API}/agents/{agent.pk}/versions", content_type="application/json",
        data=json.dumps({"image": "hangar/reference-agent:1", "pattern_settings": settings}))


def test_every_pattern_is_registered_with_a_schema():
    assert set(PATTERNS) == {"batch", "stream", "realtime", "edge"}
    for name in PATTERNS:
        assert get_pattern(name).settings_schema.model_fields


@pytest.mark.parametrize("pattern", sorted(GOOD))
def test_documented_settings_are_accepted_and_stored_as_given(world, pattern):
    answer = create(world, pattern, GOOD[pattern])
    assert answer.status_code == 201, answer.content
    assert answer.json()["pattern_settings"] == GOOD[pattern]
    assert AgentVersion.objects.get(pk=answer.json()["id"]).pattern_settings == GOOD[pattern]


@pytest.mark.parametrize("pattern", sorted(BAD))
def test_a_bad_value_is_a_422_naming_the_field(world, pattern):
    settings, field = BAD[pattern]
    answer = create(world, pattern, settings)
    assert answer.status_code == 422, answer.content
    messages = answer.json()["detail"]["pattern_settings"]
    assert any(m.startswith(f"{field}:") for m in messages), messages
    assert not AgentVersion.objects.filter(agent__slug=f"p-{pattern}").exists()


@pytest.mark.parametrize("pattern,key", [("realtime", "schedule"), ("batch", "schedul")])
def test_a_key_the_pattern_does_not_know_is_refused(world, pattern, key):
    answer = create(world, pattern, {key: "*/5 * * * *"})
    assert answer.status_code == 422
    assert any(m.startswith(f"{key}:") for m in answer.json()["detail"]["pattern_settings"])


def test_batch_checks_the_schedule_and_the_time_zone(world):
    answer = create(world, "batch", {"schedule": "every five minutes", "timezone": "Mars/Olympus"})
    assert answer.status_code == 422
    messages = answer.json()["detail"]["pattern_settings"]
    assert any(m.startswith("schedule:") and "five fields" in m for m in messages), messages
    assert any(m.startswith("timezone:") and "Mars/Olympus" in m for m in messages), messages


def test_the_version_form_shows_the_field_error(world):
    from django.test import Client

    agent = AgentFactory(team=world.team, slug="p-form", pattern="batch")
    client = Client()
    client.force_login(world.users["operator"])
    page = client.post(f"/agents/{agent.pk}/versions/", {
        "image": "hangar/reference-agent:1", "cpu": "0.5", "memory_mb": "256",
        "pattern_settings": '{"retries": -3}'}, headers={"HX-Request": "true"})
    assert page.status_code == 422
    assert "retries:" in page.content.decode()
    assert not agent.versions.exists()
