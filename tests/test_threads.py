"""Threads and double-texting (#14) as they are served: the gateway process
(which serves the LangGraph-compatible API under /lg/<team>/) in front of
reference agents running as real processes, on this run's PostgreSQL — driven
by the official langgraph-sdk client."""
from __future__ import annotations

import os
import random
import signal
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import (
    APIStatusError,
    ConflictError,
    NotFoundError,
    UnprocessableEntityError,
)

from deployments.batch import scheduler
from deployments.models import AuditEvent
from threads.models import Checkpoint, Thread, ThreadRun

from .browser_support import chromium
from .gateway_support import ready_instance, start_agent, start_gateway, wait_until
from .processes import database_env, free_port, start_web, stop, wait_for
from .threads_support import Served, client_for, realtime, served_assistant, token_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def served(django_db_setup, django_db_blocker, tmp_path_factory):
    logs = tmp_path_factory.mktemp("threads")
    started = []
    agents = {}
    for name, env in (("fast", {}), ("slow", {"AGENT_TOKEN_DELAY_MS": "120"})):
        process, port = start_agent(name, logs / f"{name}.log", **env)
        started.append(process)
        agents[name] = port
    port = free_port()
    with django_db_blocker.unblock():
        env = database_env()
    gateway = start_gateway(port, env, logs / "gateway.log", HANGAR_GATEWAY_REFRESH_S="0.3",
                            HANGAR_GATEWAY_TRACE_WAIT_S="0.5", HANGAR_THREADS_SWEEP_MS="300",
                            HANGAR_THREADS_HEARTBEAT_MS="200",
                            HANGAR_THREADS_MAX_STATE_BYTES="65536",
                            # Racing runs from one token: its limits are not under test here
                            # (tests/test_threads_limits.py).
                            HANGAR_GATEWAY_RATE_PER_S="100000",
                            HANGAR_GATEWAY_CONCURRENT="10000")
    started.append(gateway)
    yield Served(gateway=f"http://127.0.0.1:{port}", agents=agents, logs=logs)
    for process in started:
        stop(process, timeout=10)


def test_a_thread_remembers_its_turns_through_the_sdk(world, served):
    realtime(world, served, "fast")
    client = client_for(served, token_for(world))
    assistant = served_assistant(client, "support-bot:production")
    assert assistant["graph_id"] == "support-bot"
    thread = client.threads.create(metadata={"user": "ada"})
    first = client.runs.wait(thread["thread_id"], "support-bot:production",
                             input={"messages": [{"role": "user", "content": "hello there"}]})
    assert first["turns"] == 1
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    parts = list(client.runs.stream(thread["thread_id"], "support-bot:production",
                                    input="and again", stream_mode=["values", "updates"]))
    events = [p.event for p in parts]
    assert events[0] == "metadata" and "values" in events and "updates" in events
    state = client.threads.get_state(thread["thread_id"])
    assert state["values"]["turns"] == 2
    assert [m["content"] for m in state["values"]["messages"]][::2] == ["hello there",
                                                                        "and again"]
    history = client.threads.get_history(thread["thread_id"])
    assert [h["values"]["turns"] for h in history] == [2, 1]


def slow_setup(world, served, **kwargs):
    realtime(world, served, "slow", slug="slowbot", **kwargs)
    client = client_for(served, token_for(world))
    served_assistant(client, "slowbot:production")
    return client


def running(run_id):
    return ThreadRun.objects.filter(pk=run_id, status="running", partial__isnull=False).exists()


def went_away(served) -> int:
    """Calls the slow agent saw their caller hang up on (its log says so)."""
    return (served.logs / "slow.log").read_text().count("client went away")


def roles(values) -> list[tuple[str, str | None]]:
    return [(m["role"], m["content"] if m["role"] == "user" else None)
            for m in values["messages"]]


def test_a_run_on_a_deployment_the_gateway_has_not_read_yet_is_served(world, served,
                                                                       tmp_path):
    """A gateway that reads its table once a minute and hears no event of this
    (new) team still serves the run a moment after its first replica is ready:
    the run has the table read again instead of failing on the stale one."""
    port = free_port()
    gateway = start_gateway(port, database_env(), tmp_path / "stale.log",
                            HANGAR_GATEWAY_REFRESH_S="60",
                            HANGAR_GATEWAY_RATE_PER_S="100000", HANGAR_GATEWAY_CONCURRENT="10000")
    try:
        deployment = world.deployment
        ready_instance(deployment, "support-bot-1", served.agents["fast"], announce=False)
        client = get_sync_client(url=f"http://127.0.0.1:{port}/lg/acme",
                                 api_key=token_for(world), timeout=30)
        thread = client.threads.create()
        answer = client.runs.wait(thread["thread_id"], "support-bot:production", input="hi")
        assert answer["turns"] == 1
        assert ThreadRun.objects.get(thread_id=thread["thread_id"]).status == "success"
    finally:
        stop(gateway)


def test_double_texting_strategies_do_exactly_what_they_say(world, served):
    client = slow_setup(world, served)
    bot = "slowbot:production"
    tid = client.threads.create()["thread_id"]
    client.runs.wait(tid, bot, input="one")  # a checkpoint to come back to

    # reject: 409, and the running run goes on untouched to success.
    first = client.runs.create(tid, bot, input="two")
    wait_until(lambda: running(first["run_id"]), what="the run to stream its state")
    with pytest.raises(ConflictError) as refused:
        client.runs.create(tid, bot, input="refused", multitask_strategy="reject")
    assert "busy" in str(refused.value.body)
    assert client.runs.join(tid, first["run_id"])["turns"] == 2
    assert client.runs.get(tid, first["run_id"])["status"] == "success"

    # enqueue: one after the other in arrival order, none lost, none at once.
    queued = [client.runs.create(tid, bot, input=f"queued {i}", multitask_strategy="enqueue")
              for i in range(3)]
    assert client.runs.get(tid, queued[1]["run_id"])["status"] == "pending"
    client.runs.join(tid, queued[-1]["run_id"])
    rows = list(ThreadRun.objects.filter(pk__in=[q["run_id"] for q in queued])
                .order_by("position"))
    assert [r.status for r in rows] == ["success"] * 3
    assert [str(r.pk) for r in rows] == [q["run_id"] for q in queued]
    assert all(a.ended_at <= b.started_at for a, b in zip(rows, rows[1:], strict=False))

    # interrupt: cancelled at the agent, marked interrupted, its partial state kept,
    # and the new run starts from it.
    cut = went_away(served)
    doomed = client.runs.create(tid, bot, input="cut short")
    wait_until(lambda: running(doomed["run_id"]), what="the run to stream its state")
    after = client.runs.wait(tid, bot, input="instead", multitask_strategy="interrupt")
    assert client.runs.get(tid, doomed["run_id"])["status"] == "interrupted"
    assert roles(after)[-3:] == [("user", "cut short"), ("user", "instead"),
                                 ("assistant", None)]
    assert ThreadRun.objects.get(pk=doomed["run_id"]).error.startswith("interrupted by run")
    # The agent saw the interrupted call go away (its upstream connection closed).
    wait_until(lambda: went_away(served) == cut + 1,
               what="the agent to see the interrupted call closed")

    # rollback: cancelled and deleted, the state back at the checkpoint before it.
    before = client.threads.get_state(tid)["values"]
    gone = client.runs.create(tid, bot, input="never happened")
    wait_until(lambda: running(gone["run_id"]), what="the run to stream its state")
    after = client.runs.wait(tid, bot, input="rolled", multitask_strategy="rollback")
    with pytest.raises(NotFoundError):
        client.runs.get(tid, gone["run_id"])
    assert roles(after) == roles(before) + [("user", "rolled"), ("assistant", None)]
    state = client.threads.get_state(tid)
    assert state["values"] == after and client.threads.get(tid)["status"] == "idle"
    wait_until(lambda: went_away(served) == cut + 2,
               what="the agent to see the rolled-back call closed")


def test_cancel_interrupt_or_rollback_and_the_queue_goes_on(world, served):
    client = slow_setup(world, served)
    bot = "slowbot:production"
    tid = client.threads.create()["thread_id"]
    cut = went_away(served)
    current = client.runs.create(tid, bot, input="long one")
    waiting = client.runs.create(tid, bot, input="next", multitask_strategy="enqueue")
    wait_until(lambda: running(current["run_id"]), what="the run to stream its state")
    client.runs.cancel(tid, current["run_id"], action="interrupt")
    assert client.runs.get(tid, current["run_id"])["status"] == "interrupted"
    done = client.runs.join(tid, waiting["run_id"])
    assert roles(done) == [("user", "long one"), ("user", "next"), ("assistant", None)]
    third = client.runs.create(tid, bot, input="to undo")
    wait_until(lambda: running(third["run_id"]), what="the run to stream its state")
    client.runs.cancel(tid, third["run_id"], action="rollback")
    with pytest.raises(NotFoundError):
        client.runs.get(tid, third["run_id"])
    assert client.threads.get_state(tid)["values"] == done
    listed = client.runs.list(tid)
    assert [r["run_id"] for r in listed] == [waiting["run_id"], current["run_id"]]
    assert AuditEvent.objects.filter(action="run.cancel_interrupt").count() == 1
    assert AuditEvent.objects.filter(action="run.cancel_rollback").count() == 1
    # Both cancelled calls were closed at the agent.
    wait_until(lambda: went_away(served) == cut + 2, what="the agent to see both calls closed")


def test_runs_racing_on_threads_keep_every_invariant(world, served):
    realtime(world, served, "fast")
    key = token_for(world)
    served_assistant(client_for(served, key), "support-bot:production")
    bot = "support-bot:production"
    threads = [client_for(served, key).threads.create()["thread_id"] for _ in range(50)]
    rng = random.Random(14)
    plan = [(tid, i, rng.choice(["enqueue", "enqueue", "interrupt", "rollback", "reject"]))
            for tid in threads for i in range(10)]
    accepted, refused = [], []
    local = threading.local()
    barriers = {tid: threading.Barrier(10) for tid in threads}

    def post(item):
        tid, i, strategy = item
        if not hasattr(local, "client"):
            local.client = client_for(served, key)
        barriers[tid].wait()  # the ten runs of a thread leave together
        try:
            run = local.client.runs.create(tid, bot, input=f"turn {i}",
                                           multitask_strategy=strategy)
            accepted.append((run["run_id"], tid, strategy))
        except ConflictError:
            refused.append(item)

    with ThreadPoolExecutor(max_workers=100) as pool:
        list(pool.map(post, plan))
    assert len(accepted) + len(refused) == 500
    assert all(s == "reject" for _, _, s in refused)
    wait_until(lambda: not ThreadRun.objects.filter(status__in=["pending", "running"]).exists(),
               timeout=120, what="every run to end")
    rows = list(ThreadRun.objects.filter(thread_id__in=threads).order_by("thread_id",
                                                                          "position"))
    kept = {str(r.pk) for r in rows}
    # None lost: a run that is gone was rolled back by a later rollback on its thread.
    for run_id, tid, _ in accepted:
        if run_id not in kept:
            assert any(t == tid and s == "rollback" and r != run_id
                       for r, t, s in accepted), run_id
    partial_of = dict(Checkpoint.objects.filter(thread_id__in=threads, source="partial")
                      .values_list("run_id", "values"))
    for tid in threads:
        runs = [r for r in rows if str(r.thread_id) == tid]
        assert {r.status for r in runs} <= {"success", "interrupted"}, [r.error for r in runs]
        started = sorted((r for r in runs if r.started_at), key=lambda r: r.started_at)
        # Never two at once, and they ran in arrival order.
        assert all(a.ended_at <= b.started_at for a, b in zip(started, started[1:],
                                                               strict=False))
        assert [r.position for r in started] == sorted(r.position for r in started)
        # The state is the fold of the successful runs, plus the kept partial states.
        expected = []
        for r in runs:
            if r.status == "success":
                expected += [("user", r.input), ("assistant", None)]
            elif r.pk in partial_of:  # the state it streamed before it was cut
                kept = roles(partial_of[r.pk])
                assert kept[:len(expected)] == expected and len(kept) > len(expected)
                expected = kept
        values = Thread.objects.get(pk=tid).values or {"messages": []}
        assert roles(values) == expected
        assert Thread.objects.get(pk=tid).status == "idle"


def test_two_runs_in_one_millisecond_and_a_stream_resumed_from_its_last_event(world, served):
    client = slow_setup(world, served)
    bot = "slowbot:production"
    tid = client.threads.create()["thread_id"]
    barrier, made = threading.Barrier(2), []

    def post(text):
        mine = client_for(served, token_for(world))
        barrier.wait()
        made.append(mine.runs.create(tid, bot, input=text,
                                     stream_mode=["values", "messages", "updates"]))

    pair = [threading.Thread(target=post, args=(t,)) for t in ("left", "right")]
    for t in pair:
        t.start()
    for t in pair:
        t.join()
    first, second = sorted((ThreadRun.objects.get(pk=m["run_id"]) for m in made),
                           key=lambda r: r.position)
    assert (first.status, second.status) == ("running", "pending")
    # Read a few events of the first, drop the connection, come back with Last-Event-ID.
    stream = client.runs.join_stream(tid, str(first.pk))
    seen = [next(stream) for _ in range(4)]
    stream.close()
    rest = list(client.runs.join_stream(tid, str(first.pk), last_event_id=seen[-1].id))
    replay = list(client.runs.join_stream(tid, str(first.pk)))
    ids = [p.id for p in seen + rest]
    assert ids == [p.id for p in replay] and len(set(ids)) == len(ids)
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    assert [p.event for p in replay][0] == "metadata" and "messages" in [p.event
                                                                            for p in replay]
    done = client.runs.join(tid, str(second.pk))
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == second.status == "success" and first.ended_at <= second.started_at
    assert [c for r, c in roles(done) if r == "user"] == [first.input, second.input]


def test_bad_input_is_answered_clearly(world, served):
    realtime(world, served, "fast")
    client = client_for(served, token_for(world))
    served_assistant(client, "support-bot:production")
    bot = "support-bot:production"
    with pytest.raises(NotFoundError):
        client.threads.get(str(uuid.uuid4()))
    with pytest.raises(NotFoundError):
        client.threads.get("not-a-thread")
    with pytest.raises(httpx.HTTPStatusError) as unknown_thread:  # wait raises httpx's own
        client.runs.wait(str(uuid.uuid4()), bot, input="x")
    assert unknown_thread.value.response.status_code == 404
    outsider = client_for(served, token_for(world, "outsider", world.other_team),
                          team="umbrella")
    foreign = wait_until(lambda: _quietly(outsider.threads.create), what="umbrella served")
    with pytest.raises(NotFoundError):
        client.threads.get(foreign["thread_id"])
    with pytest.raises(NotFoundError):
        client_for(served, token_for(world), team="umbrella").threads.get(foreign["thread_id"])
    with pytest.raises(NotFoundError):
        client.assistants.get("nobody:production")
    tid = client.threads.create()["thread_id"]
    with pytest.raises(UnprocessableEntityError) as unknown:
        client.runs.create(tid, bot, input="x", multitask_strategy="whenever")
    assert "whenever" in str(unknown.value.body)
    with pytest.raises(APIStatusError) as big:
        client.threads.update_state(tid, {"blob": "x" * 70_000})
    assert big.value.status_code == 413 and "65536" in str(big.value.body)
    with pytest.raises(APIStatusError) as big_input:
        client.runs.create(tid, bot, input="y" * 70_000)
    assert big_input.value.status_code == 413
    anonymous = get_sync_client(url=f"{served.gateway}/lg/acme", api_key=None)
    with pytest.raises(APIStatusError) as nobody:
        anonymous.threads.create()
    assert nobody.value.status_code == 401
    assert client.threads.get(tid)["values"] == {}  # nothing ran, nothing written


def _quietly(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - not served yet
        return None


def test_a_gateway_killed_mid_run_leaves_an_error_and_the_queue_goes_on(world, served,
                                                                          tmp_path):
    client = slow_setup(world, served, timeout_s=2)
    bot = "slowbot:production"
    port = free_port()
    doomed = start_gateway(port, database_env(), tmp_path / "doomed.log",
                           HANGAR_GATEWAY_REFRESH_S="0.3", HANGAR_THREADS_LEASE_MS="1000")
    try:
        other = get_sync_client(url=f"http://127.0.0.1:{port}/lg/acme",
                                api_key=token_for(world), timeout=30)
        served_assistant(other, bot)
        tid = other.threads.create()["thread_id"]
        first = other.runs.create(tid, bot, input="in flight")
        queued = other.runs.create(tid, bot, input="waiting", multitask_strategy="enqueue")
        wait_until(lambda: running(first["run_id"]), what="the run to stream its state")
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
    finally:
        stop(doomed)
    # The module's gateway sweeps: the run is an error with its reason, the thread
    # moves on, the queued run runs there.
    done = client.runs.join(tid, queued["run_id"])
    lost = client.runs.get(tid, first["run_id"])
    assert lost["status"] == "error" and "stopped: no lease renewal" in lost["error"]
    assert roles(done) == [("user", "waiting"), ("assistant", None)]
    assert client.threads.get(tid)["status"] == "idle"

    # A run past its timeout is 'timeout' (the slow agent needs more than 2 s here),
    # and the thread takes the next run.
    long_text = " ".join(["word"] * 60)
    late = client.runs.create(tid, bot, input=long_text)
    after = client.runs.create(tid, bot, input="short", multitask_strategy="enqueue")
    client.runs.join(tid, after["run_id"])
    timed = client.runs.get(tid, late["run_id"])
    assert timed["status"] == "timeout" and "2s" in timed["error"]

    # A deleted thread's running run is cancelled at the agent.
    tail = client.runs.create(tid, bot, input=long_text)
    wait_until(lambda: running(tail["run_id"]), what="the run to stream its state")
    client.threads.delete(tid)
    assert not ThreadRun.objects.filter(pk=tail["run_id"]).exists()
    with pytest.raises(NotFoundError):
        client.threads.get(tid)
    assert AuditEvent.objects.filter(action="thread.delete", object_id=tid).exists()


def test_crons_fire_once_per_occurrence_in_their_zone_and_follow_the_strategy(world, served):
    client = slow_setup(world, served)
    bot = "slowbot:production"
    tid = client.threads.create()["thread_id"]
    with pytest.raises(UnprocessableEntityError):
        client.crons.create_for_thread(tid, bot, schedule="30 9 * * *", timezone="Mars/Olympus")
    made = client.crons.create_for_thread(tid, bot, schedule="30 9 * * *",
                                          timezone="Asia/Tokyo", input="good morning")
    due = datetime.fromisoformat(made["next_run_date"])
    tokyo = due.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (tokyo.hour, tokyo.minute) == (9, 30) and due.utcoffset() is not None
    assert (due.astimezone(UTC).hour, due.astimezone(UTC).minute) == (0, 30)
    # The batch scheduler's tick fires it, once, however often it ticks.
    assert scheduler.tick(now=due - timedelta(seconds=1)).runs == []
    assert ThreadRun.objects.filter(cron_id=made["cron_id"]).count() == 0
    for _ in range(3):
        scheduler.tick(now=due)
    fired = list(ThreadRun.objects.filter(cron_id=made["cron_id"]))
    assert len(fired) == 1 and fired[0].metadata["cron_occurrence"] == due.isoformat()
    done = client.runs.join(tid, str(fired[0].pk))
    assert roles(done) == [("user", "good morning"), ("assistant", None)]
    nxt = datetime.fromisoformat(client.crons.search(thread_id=tid)[0]["next_run_date"])
    assert nxt - due == timedelta(days=1)

    # A busy thread with a reject cron: the cron's run is rejected, and recorded.
    strict = client.crons.create_for_thread(tid, bot, schedule="*/5 * * * *", input="tick",
                                            multitask_strategy="reject")
    busy = client.runs.create(tid, bot, input="busy now")
    wait_until(lambda: running(busy["run_id"]), what="the run to stream its state")
    scheduler.tick(now=datetime.fromisoformat(strict["next_run_date"]))
    rejected = ThreadRun.objects.get(cron_id=strict["cron_id"])
    assert rejected.status == "rejected" and busy["run_id"] in rejected.error
    assert client.runs.join(tid, busy["run_id"])["turns"] == 2  # untouched

    # A stateless cron runs too; crons are updated and deleted.
    loose = client.crons.create(bot, schedule="0 * * * *", input="hourly")
    scheduler.tick(now=datetime.fromisoformat(loose["next_run_date"]))
    stateless = ThreadRun.objects.get(cron_id=loose["cron_id"])
    wait_until(lambda: ThreadRun.objects.get(pk=stateless.pk).status == "success",
               what="the stateless cron run")
    client.crons.update(loose["cron_id"], schedule="15 * * * *", timezone="Europe/Paris")
    assert client.crons.search(assistant_id=bot)[-1]["timezone"] == "Europe/Paris"
    client.crons.delete(loose["cron_id"])
    assert len(client.crons.search(assistant_id=bot)) == 2
    assert AuditEvent.objects.filter(action__startswith="cron.").count() == 5


def test_the_thread_pages_show_runs_and_checkpoints_live(world, served, tmp_path):
    from playwright.sync_api import expect

    client = slow_setup(world, served)
    bot = "slowbot:production"
    tid = client.threads.create(metadata={"user": "ada"})["thread_id"]
    other = client.threads.create(metadata={"user": "bob"})["thread_id"]
    client.runs.wait(other, bot, input="hi")
    client.runs.wait(tid, bot, input="first words")
    port = free_port()
    web = start_web(port, database_env(), tmp_path / "web.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", web, tmp_path / "web.log")
        with chromium() as browser:
            def login(who):
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.set_default_timeout(20_000)
                page.goto(f"http://127.0.0.1:{port}/login/")
                page.fill("input[name=username]", who)
                page.fill("input[name=password]", "pw-for-tests")
                page.click("button[type=submit]")
                page.wait_for_url(lambda url: "/login/" not in url)
                return page

            page = login("viewer")
            slow = ThreadRun.objects.get(thread_id=tid).agent.deployments.get()
            page.goto(f"http://127.0.0.1:{port}/deployments/{slow.pk}/")
            page.get_by_test_id("threads-link").click()
            expect(page.get_by_test_id("threads").locator("tbody tr")).to_have_count(2)
            page.fill("input[name=q]", "user=ada")
            page.click("text=Search")
            rows = page.get_by_test_id("threads").locator("tbody tr")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("idle")
            expect(rows.first).to_contain_text("success")
            rows.first.locator("a").click()
            expect(page.get_by_test_id("thread-runs").locator("tbody tr")).to_have_count(1)
            # Live: a double-text while the page is open shows up without a reload.
            first = client.runs.create(tid, bot, input="second words")
            wait_until(lambda: running(first["run_id"]), what="the run to stream its state")
            expect(page.get_by_test_id("thread-status")).to_have_text("busy")
            client.runs.wait(tid, bot, input="third words", multitask_strategy="interrupt")
            runs = page.get_by_test_id("thread-runs").locator("tbody tr")
            expect(runs).to_have_count(3)
            expect(runs.nth(1)).to_contain_text("interrupted")
            expect(runs.nth(2)).to_contain_text("success")
            expect(runs.nth(2)).to_contain_text("interrupted " + first["run_id"])
            expect(page.get_by_test_id("thread-status")).to_have_text("idle")
            newest = page.get_by_test_id("checkpoint").first
            expect(newest).to_contain_text("run")
            expect(newest.get_by_test_id("checkpoint-diff")).to_contain_text('"third words"')
            expect(page.get_by_test_id("checkpoint")).to_have_count(3)  # run, partial, run
            partial = page.get_by_test_id("checkpoint").nth(1)
            expect(partial).to_contain_text("partial")
            # Another team's member gets a 404, like an unknown thread.
            outsider = login("outsider")
            answer = outsider.goto(f"http://127.0.0.1:{port}/threads/{tid}/")
            assert answer.status == 404
            answer = outsider.goto(f"http://127.0.0.1:{port}/deployments/{slow.pk}/threads/")
            assert answer.status == 404
    finally:
        stop(web)
