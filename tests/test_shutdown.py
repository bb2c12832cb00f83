"""SIGTERM to a real ``lam worker`` or ``lam serve`` in the middle of a job.

The first signal stops new work and lets the running step finish within
``LAM_SHUTDOWN_GRACE_SECONDS``; the grace running out, or a second signal, stops the
step and hands its job back to the queue, where the next worker takes it at once. The
process exits 0 either way.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.engine import Engine
from bot.jobs import Worker
from bot.models import Request, RequestRecord
from bot.store import Store
from bot.store.redis_jobs import RedisJobQueue
from bot.wiring import open_engine
from tests.support.lam_process import LamProcesses
from tests.support.redis_server import free_port
from tests.support.slack import SIGNING_SECRET, SlackSimulator
from tests.support.waiting import DEADLINE, eventually


@pytest.fixture
async def engine(lam_processes: LamProcesses) -> AsyncIterator[Engine]:
    """The test's own engine on the processes' Redis: it asks, and it looks."""
    opened = await open_engine(lam_processes.settings())
    yield opened
    await opened.aclose()


async def exit_code(process: subprocess.Popen[bytes]) -> int:
    """Wait for ``process`` without blocking the loop (a simulator in it may have to answer)."""
    return await asyncio.to_thread(process.wait, DEADLINE)


async def ask(engine: Engine, runbook: str) -> RequestRecord:
    record = await engine.ask(
        Request(text=f"run shell.{runbook}", requester="user:alice", environment="staging")
    )
    assert record.state == "approved", record
    return record


async def step_running(store: Store, request_id: str) -> bool:
    result = (await store.get(request_id)).result_of("s1")
    return result is not None and result.status == "running"


async def step_starts(store: Store, request_id: str) -> int:
    return len(
        [
            event
            async for event in store.audit_events()
            if event.kind == "step.started" and event.request_id == request_id
        ]
    )


def queue_of(engine: Engine) -> RedisJobQueue:
    assert isinstance(engine.jobs, RedisJobQueue)
    return engine.jobs


async def test_sigterm_lets_the_running_step_finish_and_takes_no_new_job(
    lam_processes: LamProcesses, engine: Engine
) -> None:
    """On SIGTERM mid-step the step finishes, the job queued behind it stays queued, exit 0."""
    worker = await lam_processes.start_worker("W", LAM_SHUTDOWN_GRACE_SECONDS="20")
    running = await ask(engine, "steady")
    await eventually(lambda: step_running(engine.store, running.id), "step s1 to run")
    waiting = await ask(engine, "quick")

    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert await exit_code(worker) == 0
    assert time.monotonic() - signalled < 20

    assert (await engine.store.get(running.id)).state == "succeeded"
    events = lam_processes.events("W")
    assert events.index("shutdown.started") < events.index("request.succeeded")
    assert (await engine.store.get(waiting.id)).state == "approved"
    # Still waiting for a worker: not delivered to W, not pending with it.
    assert await queue_of(engine).depth() == 1
    assert "job.released" not in events


async def test_a_job_that_arrives_as_the_worker_stops_is_handed_back_unstarted(
    engine: Engine, raw: aioredis.Redis
) -> None:
    """A job delivered to a worker already told to stop is not run, and goes back to the
    queue as if never delivered."""
    queue = queue_of(engine)
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(engine, queue, name="W").run(stop, wait=5.0))

    async def reading() -> bool:
        # The worker is blocked in XREADGROUP, waiting for a job.
        clients = await raw.client_list()
        return any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in clients)

    await eventually(reading, "the worker to wait for a job")
    stop.set()
    asked = await ask(engine, "quick")
    await asyncio.wait_for(worker, DEADLINE)

    assert (await engine.store.get(asked.id)).state == "approved"
    job = await queue.take("next", 0)
    assert job is not None and (job.request_id, job.deliveries) == (asked.id, 1)


@pytest.mark.parametrize("cut_by", ["grace", "second signal"])
async def test_a_step_cut_short_goes_back_to_the_queue_for_the_next_worker(
    lam_processes: LamProcesses, engine: Engine, cut_by: str
) -> None:
    """Cut short by the grace period or a second signal, the step is stopped, its job is
    handed back for the next worker at once, and the process still exits 0."""
    grace = "0.5" if cut_by == "grace" else "30"
    worker = await lam_processes.start_worker("W", LAM_SHUTDOWN_GRACE_SECONDS=grace)
    asked = await ask(engine, "slow")
    await eventually(lambda: step_running(engine.store, asked.id), "step s1 to run")
    await eventually(lambda: lam_processes.marked_processes("sleep"), "the slow runbook's sleep")

    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    if cut_by == "second signal":
        await eventually(
            lambda: "shutdown.started" in lam_processes.events("W"), "the first signal"
        )
        worker.send_signal(signal.SIGTERM)
    assert await exit_code(worker) == 0
    assert time.monotonic() - signalled < 10
    await eventually(lambda: not lam_processes.marked_processes(), "the runbook's processes to end")
    events = lam_processes.events("W")
    assert "shutdown.hurried" in events and "job.released" in events

    left = await engine.store.get(asked.id)
    assert left.state == "executing" and await step_running(engine.store, asked.id)
    # Handed back, not left to idle out: the next worker gets it now, as a second delivery.
    queue = queue_of(engine)
    assert queue.idle_timeout >= 60
    job = await queue.take("next", 0)
    assert job is not None and (job.request_id, job.deliveries) == (asked.id, 2)
    await Worker(engine, queue, name="next").work(job)
    record = await engine.store.get(asked.id)
    # Its outcome is unknown, so it is not run again; a person decides.
    assert record.state == "failed" and "outcome is unknown" in (record.reason or "")
    assert await step_starts(engine.store, asked.id) == 1


async def test_lam_serve_stops_taking_events_then_finishes_and_posts_the_audit(
    lam_processes: LamProcesses, engine: Engine
) -> None:
    """SIGTERM to lam serve over HTTP: Slack events are refused at once, the running step
    finishes, every audit event reaches the audit channel, and it exits 0."""
    port = free_port()
    async with SlackSimulator() as sim:
        serve = await lam_processes.start(
            "serve",
            "serve",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            ready="slack.serving",
            SLACK_BOT_TOKEN=sim.bot_token,
            SLACK_SIGNING_SECRET=SIGNING_SECRET,
            SLACK_API_URL=sim.api_url,
            LAM_AUDIT_CHANNEL="C0AUDIT",
            LAM_SHUTDOWN_GRACE_SECONDS="20",
        )
        events_url = f"http://127.0.0.1:{port}/slack/events"
        delivery = await sim.send_event(events_url, sim.app_mention("what is the meaning of life"))
        assert delivery.status == 200
        asked = await ask(engine, "steady")
        await eventually(lambda: step_running(engine.store, asked.id), "step s1 to run")

        serve.send_signal(signal.SIGTERM)
        await eventually(
            lambda: "slack.stopped_listening" in lam_processes.events("serve"),
            "serve to stop listening",
        )
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        assert await step_running(engine.store, asked.id)
        assert await exit_code(serve) == 0

        assert (await engine.store.get(asked.id)).state == "succeeded"
        last_seq, _ = await engine.store.audit_head()
        posted = "\n".join(
            str(call.args.get("text"))
            for call in sim.calls_to("chat.postMessage")
            if call.args.get("channel") == "C0AUDIT"
        )
        assert f"`{last_seq}`" in posted and "request.succeeded" in posted
