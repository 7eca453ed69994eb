"""Admitting a run on an idle thread in one round trip (``hangar_threads_admit_idle``):
the same rows as the ORM path, and the ORM path whenever the thread is not idle."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from deployments import audit
from deployments.errors import Conflict, NotFound
from threads import actions
from threads.actions import Assistant
from threads.models import Thread, ThreadRun

pytestmark = pytest.mark.django_db


def assistant_of(world, team=None) -> Assistant:
    team = team or world.team
    return Assistant(team_id=team.pk, team_slug=team.slug, agent_id=world.agent.pk,
                     agent_slug=world.agent.slug, environment="production",
                     strategy="enqueue", timeout_s=42.0)


def test_a_run_on_an_idle_thread_is_admitted_in_one_statement(world, settings):
    thread = actions.create_thread(world.team.pk, actor=audit.SYSTEM)
    Thread.objects.filter(pk=thread.pk).update(values={"messages": ["hi"]}, runs_made=3)
    with CaptureQueriesContext(connection) as queries:
        admission = actions.admit(assistant_of(world), thread_id=str(thread.pk), owner="gw-1",
                                  input={"text": "hello"}, options={"stream_mode": ["values"]},
                                  metadata={"k": "v"}, strategy="reject")
    assert len(queries) == 1
    assert admission.start and admission.state == {"messages": ["hi"]}
    run = ThreadRun.objects.get(pk=admission.run.pk)
    assert (run.status, run.position, run.owner, run.multitask_strategy) == (
        "running", 4, "gw-1", "reject")
    assert (run.input, run.options, run.metadata, run.timeout_s) == (
        {"text": "hello"}, {"stream_mode": ["values"]}, {"k": "v"}, 42.0)
    assert run.started_at == run.created_at == admission.run.started_at
    assert run.lease_until == run.started_at + timedelta(seconds=settings.HANGAR_THREADS_LEASE_S)
    thread.refresh_from_db()
    assert (thread.status, thread.runs_made, thread.agent_id, thread.environment) == (
        "busy", 4, world.agent.pk, "production")
    # The instance handed back is the stored row: saving it updates, never inserts.
    admission.run.error = "x"
    admission.run.save(update_fields=["error"])
    assert ThreadRun.objects.filter(thread=thread).count() == 1


def test_a_busy_thread_takes_the_strategy_path(world):
    thread = actions.create_thread(world.team.pk, actor=audit.SYSTEM)
    first = actions.admit(assistant_of(world), thread_id=str(thread.pk), owner="gw-1")
    second = actions.admit(assistant_of(world), thread_id=str(thread.pk), owner="gw-1",
                           strategy="enqueue")
    assert not second.start and second.run.status == "pending"
    assert [r.position for r in ThreadRun.objects.filter(thread=thread).order_by("position")] \
        == [1, 2]
    with pytest.raises(Conflict):
        actions.admit(assistant_of(world), thread_id=str(thread.pk), owner="gw-1",
                      strategy="reject")
    assert ThreadRun.objects.get(pk=first.run.pk).status == "running"


def test_another_teams_or_a_missing_thread_is_not_found(world):
    thread = actions.create_thread(world.other_team.pk, actor=audit.SYSTEM)
    with pytest.raises(NotFound):
        actions.admit(assistant_of(world), thread_id=str(thread.pk), owner="gw-1")
    with pytest.raises(NotFound):
        actions.admit(assistant_of(world), thread_id=str(uuid.uuid4()), owner="gw-1")
    made = actions.admit(assistant_of(world), thread_id=str(uuid.uuid4()), owner="gw-1",
                         if_not_exists="create")
    assert made.start and ThreadRun.objects.filter(thread_id=made.run.thread_id).count() == 1
    assert not ThreadRun.objects.filter(thread=thread).exists()
    assert Thread.objects.get(pk=thread.pk).status == "idle"


def test_a_run_never_starts_before_the_last_one_ended_on_a_clock_ahead(world):
    thread = actions.create_thread(world.team.pk, actor=audit.SYSTEM)
    ahead = timezone.now() + timedelta(seconds=5)  # the end stamped by a gateway ahead of us
    Thread.objects.filter(pk=thread.pk).update(updated_at=ahead)
    admission = actions.admit(assistant_of(world), thread_id=str(thread.pk), owner="gw-1")
    assert ThreadRun.objects.get(pk=admission.run.pk).started_at >= ahead
