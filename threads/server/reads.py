"""The API's JSON shapes (threads, runs, states, crons) and its database reads
(sync: called through ``db`` from the event loop)."""
from __future__ import annotations

import json
from datetime import datetime

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection

from deployments.errors import Invalid, NotFound

from .. import actions
from ..models import Checkpoint, Cron, RunStatus, Thread, ThreadRun

SORTS = {"thread_id": "id", "status": "status", "created_at": "created_at",
         "updated_at": "updated_at"}


def dumps(payload) -> bytes:
    return json.dumps(payload, cls=DjangoJSONEncoder).encode()


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# JSON shapes --------------------------------------------------------------------------


def thread_json(t: Thread) -> dict:
    return {"thread_id": str(t.pk), "created_at": iso(t.created_at),
            "updated_at": iso(t.updated_at), "metadata": t.metadata, "status": t.status,
            "values": t.values if t.values is not None else {}, "interrupts": {},
            "assistant_id": f"{t.agent.slug}:{t.environment}" if t.agent_id else None}


def run_json(r: ThreadRun, agent_slug: str | None = None) -> dict:
    return {"run_id": str(r.pk), "thread_id": str(r.thread_id) if r.thread_id else None,
            "assistant_id": f"{agent_slug or r.agent.slug}:{r.environment}",
            "created_at": iso(r.created_at),
            "updated_at": iso(r.updated_at), "status": r.status, "metadata": r.metadata,
            "multitask_strategy": r.multitask_strategy, "kwargs": r.options,
            "position": r.position, "applied": r.applied, "error": r.error or None,
            "started_at": iso(r.started_at), "ended_at": iso(r.ended_at),
            "trace_id": r.trace_id or None}


def state_json(thread: Thread, checkpoint: Checkpoint | None, parent: Checkpoint | None) -> dict:
    def ref(c):
        return None if c is None else {"thread_id": str(thread.pk), "checkpoint_ns": "",
                                       "checkpoint_id": c.checkpoint_id, "checkpoint_map": None}
    values = checkpoint.values if checkpoint is not None else thread.values
    return {"values": values if values is not None else {}, "next": [], "tasks": [],
            "interrupts": [],
            "checkpoint": ref(checkpoint) or {"thread_id": str(thread.pk), "checkpoint_ns": "",
                                              "checkpoint_id": None, "checkpoint_map": None},
            "metadata": {"source": checkpoint.source if checkpoint else "input",
                         "run_id": str(checkpoint.run_id) if checkpoint and checkpoint.run_id
                         else None, "step": checkpoint.number if checkpoint else 0},
            "created_at": iso(checkpoint.created_at) if checkpoint else None,
            "parent_checkpoint": ref(parent)}


def cron_json(c: Cron) -> dict:
    return {"cron_id": str(c.pk), "assistant_id": f"{c.agent.slug}:{c.environment}",
            "thread_id": str(c.thread_id) if c.thread_id else None, "schedule": c.schedule,
            "timezone": c.timezone, "end_time": iso(c.end_time), "payload": c.payload,
            "metadata": c.metadata, "enabled": c.enabled, "user_id": None,
            "multitask_strategy": c.multitask_strategy,
            "next_run_date": iso(c.next_due_at), "created_at": iso(c.created_at),
            "updated_at": iso(c.updated_at), "on_run_completed": None}


# Database reads (sync) ----------------------------------------------------------------


def _thread_row(team_id, thread_id) -> Thread:
    return (Thread.objects.select_related("agent").filter(
        team_id=team_id, pk=actions.parse_uuid(thread_id)).first()
        or _raise(NotFound(f"no thread {thread_id}")))


def _raise(exc):
    raise exc


def search_threads(team_id: int, body: dict) -> list[dict]:
    query = Thread.objects.filter(team_id=team_id).select_related("agent")
    if body.get("status"):
        query = query.filter(status=body["status"])
    if body.get("ids"):
        query = query.filter(pk__in=[actions.parse_uuid(i) for i in body["ids"]])
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise Invalid({"metadata": ["Give an object."]})
    sort = SORTS.get(body.get("sort_by") or "updated_at")
    if sort is None:
        raise Invalid({"sort_by": [f"Sort by one of {', '.join(SORTS)}."]})
    order = "" if body.get("sort_order") == "asc" else "-"
    limit, offset = _page(body)
    if metadata and connection.vendor == "postgresql":
        query = query.filter(metadata__contains=metadata)
        rows = list(query.order_by(order + sort)[offset:offset + limit])
    else:
        rows = [t for t in query.order_by(order + sort)
                if all(t.metadata.get(k) == v for k, v in metadata.items())]
        rows = rows[offset:offset + limit]
    return [thread_json(t) for t in rows]


def _page(body: dict) -> tuple[int, int]:
    try:
        limit, offset = int(body.get("limit", 10)), int(body.get("offset", 0))
    except (TypeError, ValueError):
        raise Invalid({"limit": ["Give whole numbers for limit and offset."]}) from None
    if not 1 <= limit <= 1000 or offset < 0:
        raise Invalid({"limit": ["limit is 1 to 1000, offset 0 or more."]})
    return limit, offset


def thread_state(team_id: int, thread_id, checkpoint_id: str | None = None) -> dict:
    thread = _thread_row(team_id, thread_id)
    checkpoints = thread.checkpoints.order_by("-number")
    if checkpoint_id:
        number = checkpoint_id.rpartition(":")[2]
        if not number.isdigit():
            raise NotFound(f"no checkpoint {checkpoint_id}")
        checkpoints = checkpoints.filter(number__lte=int(number))
        first = checkpoints.first()
        if first is None or first.number != int(number):
            raise NotFound(f"no checkpoint {checkpoint_id}")
    pair = list(checkpoints[:2])
    return state_json(thread, pair[0] if pair else None, pair[1] if len(pair) > 1 else None)


def thread_history(team_id: int, thread_id, limit: int, before: str | None) -> list[dict]:
    thread = _thread_row(team_id, thread_id)
    checkpoints = thread.checkpoints.order_by("-number")
    if before:
        number = str(before).rpartition(":")[2]
        if number.isdigit():
            checkpoints = checkpoints.filter(number__lt=int(number))
    rows = list(checkpoints[:limit + 1])
    return [state_json(thread, c, rows[i + 1] if i + 1 < len(rows) else None)
            for i, c in enumerate(rows[:limit])]


def list_runs(team_id: int, thread_id, limit: int, offset: int, status: str | None):
    _thread_row(team_id, thread_id)
    query = ThreadRun.objects.filter(team_id=team_id, thread_id=thread_id).select_related(
        "agent")
    if status:
        query = query.filter(status=status)
    return [run_json(r) for r in query.order_by("-position")[offset:offset + limit]]


def run_row(team_id: int, run_id, thread_id=None) -> ThreadRun:
    found = actions.get_run(team_id, run_id, thread_id)
    return ThreadRun.objects.select_related("agent").get(pk=found.pk)


def cron_row(team_id: int, cron_id) -> Cron:
    found = (Cron.objects.select_related("agent")
             .filter(team_id=team_id, pk=actions.parse_uuid(cron_id, "cron")).first())
    if found is None:
        raise NotFound(f"no cron {cron_id}")
    return found


def search_crons(team_id: int, body: dict, assistant_agent: tuple | None) -> list[dict]:
    query = Cron.objects.filter(team_id=team_id).select_related("agent")
    if assistant_agent is not None:
        query = query.filter(agent_id=assistant_agent[0], environment=assistant_agent[1])
    if body.get("thread_id"):
        query = query.filter(thread_id=actions.parse_uuid(body["thread_id"]))
    if body.get("enabled") is not None:
        query = query.filter(enabled=bool(body["enabled"]))
    limit, offset = _page(body)
    return [cron_json(c) for c in query.order_by("created_at")[offset:offset + limit]]


def run_result(run_id: str) -> tuple[int, dict]:
    run = ThreadRun.objects.filter(pk=run_id).first()
    if run is None:
        return 200, {"__error__": {"error": "RunDeleted",
                                   "message": f"run {run_id} was rolled back"}}
    if run.status == RunStatus.SUCCESS:
        return 200, run.output if run.output is not None else {}
    if run.status == RunStatus.INTERRUPTED:
        values = None
        if run.thread_id:
            values = Thread.objects.filter(pk=run.thread_id).values_list(
                "values", flat=True).first()
        return 200, values if values is not None else {}
    return 200, {"__error__": {"error": run.status, "message": run.error}}

