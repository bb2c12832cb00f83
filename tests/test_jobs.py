"""The Redis job queue and its workers: delivery, reclaim, dead letters, crashes, outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.engine import Engine
from bot.errors import StoreUnavailable
from bot.jobs import Job, Worker
from bot.models import TERMINAL_STATES, Request, RequestRecord
from bot.store import Store
from bot.store.redis import RedisStore
from bot.store.redis_jobs import GROUP, RedisJobQueue
from bot.wiring import open_engine
from connectors import _sandbox
from tests.support.actions import ScriptedConnector
from tests.support.lam_process import LEADS, LamProcesses
from tests.support.redis_server import RedisServer
from tests.support.waiting import DEADLINE, eventually


async def take_within(queue: RedisJobQueue, consumer: str) -> Job:
    return await eventually(lambda: queue.take(consumer, 0.05), f"a job for {consumer!r}")


async def finished(store: Store, request_id: str) -> RequestRecord:
    async def probe() -> RequestRecord | None:
        record = await store.get(request_id)
        return record if record.state in TERMINAL_STATES else None

    return await eventually(probe, f"request {request_id} to finish")


async def step_starts(store: Store) -> Counter[tuple[str | None, str]]:
    """How often each (request, step) was recorded as started in the audit trail."""
    starts: Counter[tuple[str | None, str]] = Counter()
    async for event in store.audit_events():
        if event.kind == "step.started" and event.step is not None:
            starts[(event.request_id, event.step.step_id)] += 1
    return starts


@pytest.fixture
async def queue(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisJobQueue]:
    opened = await RedisJobQueue.open(redis_url, prefix=redis_prefix, idle_timeout=0.2)
    yield opened
    await opened.aclose()


@contextmanager
def working(engine: Engine, *names: str, max_deliveries: int = 5) -> Iterator[asyncio.Event]:
    """In-process workers running until the block ends; the event stops them early."""
    assert engine.jobs is not None
    stop = asyncio.Event()
    workers = [
        Worker(engine, engine.jobs, name=name, max_deliveries=max_deliveries, heartbeat=0.1)
        for name in names
    ]
    tasks = [asyncio.create_task(worker.run(stop, wait=0.05)) for worker in workers]
    try:
        yield stop
    finally:
        stop.set()
        for task in tasks:
            task.cancel()


# The queue on its own.


async def test_a_submitted_job_is_taken_once_and_gone_when_done(
    queue: RedisJobQueue, raw: aioredis.Redis
) -> None:
    """A job is delivered to one consumer, and after done it is neither pending nor kept."""
    await queue.submit("r1")
    job = await take_within(queue, "a")
    assert (job.request_id, job.deliveries) == ("r1", 1)
    assert await queue.take("b", 0) is None
    await queue.done(job)
    assert await raw.xlen(queue.stream) == 0
    assert (await raw.xpending(queue.stream, GROUP))["pending"] == 0


async def test_an_unacknowledged_job_is_reclaimed_by_another_consumer_after_the_idle_timeout(
    queue: RedisJobQueue,
) -> None:
    """A job whose consumer went silent is handed to the next consumer as a second delivery."""
    await queue.submit("r1")
    first = await take_within(queue, "dead")
    again = await take_within(queue, "alive")
    assert (again.id, again.request_id, again.deliveries) == (first.id, "r1", 2)


async def test_touch_keeps_a_job_from_being_reclaimed(queue: RedisJobQueue) -> None:
    """While its consumer touches it, nobody else gets the job, for many idle timeouts."""
    await queue.submit("r1")
    job = await take_within(queue, "busy")
    until = time.monotonic() + 5 * queue.idle_timeout
    while time.monotonic() < until:
        await queue.touch(job, "busy")
        assert await queue.take("other", 0.05) is None
    reclaimed = await take_within(queue, "other")
    assert (reclaimed.id, reclaimed.deliveries) == (job.id, 2)


async def test_deliveries_count_up_with_every_reclaim(queue: RedisJobQueue) -> None:
    """Each reclaim counts as one more delivery; a touch does not."""
    await queue.submit("r1")
    first = await take_within(queue, "a")
    await queue.touch(first, "a")
    counts = [first.deliveries]
    for consumer in ("b", "c", "d"):
        counts.append((await take_within(queue, consumer)).deliveries)
    assert counts == [1, 2, 3, 4]


async def test_a_queue_whose_group_vanished_creates_it_again(
    queue: RedisJobQueue, raw: aioredis.Redis
) -> None:
    """After the stream and its group are gone (a Redis that lost its data), take still works."""
    await raw.delete(queue.stream)
    assert await queue.take("a", 0) is None
    await queue.submit("r2")
    assert (await take_within(queue, "a")).request_id == "r2"


async def test_an_unreachable_queue_raises_store_unavailable_with_the_url_masked(
    tmp_path: Path,
) -> None:
    """Every queue call fails with StoreUnavailable while Redis is down, without the password."""
    server = RedisServer(tmp_path / "redis", password="hunter2")
    server.start()
    try:
        queue = await RedisJobQueue.open(server.url, idle_timeout=1)
        server.stop()
        job = Job(request_id="r1", id="1-0")
        for call in (
            lambda: queue.submit("r1"),
            lambda: queue.take("a", 0),
            lambda: queue.touch(job, "a"),
            lambda: queue.done(job),
            lambda: queue.bury(job, "why"),
        ):
            with pytest.raises(StoreUnavailable, match=r"cannot reach Redis at 'redis://:\*\*\*@"):
                await call()
        await queue.aclose()
    finally:
        server.kill()


# The engine and in-process workers.


async def test_an_allowed_request_is_queued_and_a_worker_runs_it(
    queued_engine: Engine, connector: ScriptedConnector
) -> None:
    """With a queue, an allowed request is left approved for a worker, which runs it once."""
    record = await queued_engine.ask(Request(text="noop in staging", requester="user:alice"))
    assert record.state == "approved"
    assert connector.calls["test.noop"] == 0
    with working(queued_engine, "w1"):
        done = await finished(queued_engine.store, record.id)
    assert done.state == "succeeded"
    assert connector.calls["test.noop"] == 1


async def test_the_last_approval_queues_the_request(
    queued_engine: Engine, connector: ScriptedConnector
) -> None:
    """Approving a request that needed it queues it instead of running it in the approver."""
    asked = await queued_engine.ask(Request(text="restart web in prod", requester="user:alice"))
    assert asked.state == "awaiting_approval"
    approved = await queued_engine.approve(asked.id, "user:bob")
    assert approved.state == "approved"
    assert connector.calls["test.restart"] == 0
    with working(queued_engine, "w1"):
        done = await finished(queued_engine.store, asked.id)
    assert done.state == "succeeded"
    assert connector.calls["test.restart"] == 1


async def test_a_job_queued_twice_runs_its_request_once(
    queued_engine: Engine, connector: ScriptedConnector
) -> None:
    """A request queued again (as a starting worker does) still runs exactly once."""
    record = await queued_engine.ask(Request(text="noop in staging", requester="user:alice"))
    assert await queued_engine.resubmit_approved() == 1
    with working(queued_engine, "w1", "w2"):
        done = await finished(queued_engine.store, record.id)
    assert done.state == "succeeded"
    assert connector.calls["test.noop"] == 1


async def test_a_job_that_keeps_dying_is_buried_and_its_request_failed(
    queued_engine: Engine, connector: ScriptedConnector, raw: aioredis.Redis
) -> None:
    """Past max deliveries the job moves to the dead-letter stream and the request fails."""
    queue = queued_engine.jobs
    assert isinstance(queue, RedisJobQueue)
    record = await queued_engine.ask(Request(text="noop in staging", requester="user:alice"))
    await take_within(queue, "died")  # taken by a worker that never comes back
    with working(queued_engine, "w1", max_deliveries=1):
        failed = await finished(queued_engine.store, record.id)
    assert failed.state == "failed"
    assert failed.reason is not None and "dead-letter" in failed.reason
    assert connector.calls["test.noop"] == 0
    ((_, letter),) = await raw.xrange(queue.dead_stream)
    assert letter == {"request_id": record.id, "reason": failed.reason, "deliveries": "2"}
    assert await raw.xlen(queue.stream) == 0
    assert (await raw.xpending(queue.stream, GROUP))["pending"] == 0
    assert await queued_engine.verify_audit() > 0


class CancelSwallowingQueue:
    """The real queue, but its touch swallows cancellation, as a redis-py call can on 3.11."""

    def __init__(self, queue: RedisJobQueue) -> None:
        self.queue = queue
        self.touches = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.queue, name)

    async def touch(self, job: Job, consumer: str) -> None:
        self.touches += 1
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


async def test_a_heartbeat_that_swallows_its_cancellation_does_not_hold_the_job(
    queued_engine: Engine, raw: aioredis.Redis
) -> None:
    """A job ends and is acknowledged even when the heartbeat in flight ignores cancel()."""
    queue = queued_engine.jobs
    assert isinstance(queue, RedisJobQueue)
    record = await queued_engine.ask(Request(text="noop in staging", requester="user:alice"))
    job = await take_within(queue, "w")
    swallowing = CancelSwallowingQueue(queue)
    worker = Worker(queued_engine, swallowing, name="w", heartbeat=0.001)  # type: ignore[arg-type]
    await asyncio.wait_for(worker.work(job), DEADLINE)
    assert swallowing.touches >= 1
    assert (await queued_engine.store.get(record.id)).state == "succeeded"
    assert (await raw.xpending(queue.stream, GROUP))["pending"] == 0


# Real processes.


def stop_worker(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=DEADLINE)


def test_lam_worker_refuses_to_start_without_redis(lam_processes: LamProcesses) -> None:
    """Without REDIS_URL, lam worker exits 2 with one line saying it needs REDIS_URL."""
    result = lam_processes.run("worker", REDIS_URL="")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: lam worker needs REDIS_URL")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("LAM_JOB_IDLE_SECONDS", "0"),
        ("LAM_JOB_MAX_DELIVERIES", "many"),
        ("LAM_REDIS_PREFIX", "two words"),
    ],
)
def test_a_bad_job_setting_stops_start_up_naming_it(
    lam_processes: LamProcesses, setting: str, value: str
) -> None:
    """A job setting that does not validate stops lam with exit 2 and names the setting."""
    result = lam_processes.run("worker", **{setting: value})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert setting in line


async def test_a_killed_worker_leaves_its_running_step_interrupted_not_run_again(
    lam_processes: LamProcesses, redis_url: str, redis_prefix: str
) -> None:
    """kill -9 in a long step: another worker reclaims the job, runs nothing again, fails it."""
    asked = lam_processes.run(
        "ask", "run shell.quick then run shell.slow", "--env", "staging", "--as", "alice", "--json"
    )
    assert asked.returncode == 0, asked.stderr
    request_id = json.loads(asked.stdout)["id"]
    assert json.loads(asked.stdout)["state"] == "approved"
    store = await RedisStore.open(redis_url, prefix=redis_prefix)
    try:
        first = await lam_processes.start_worker("A")

        async def slow_step_running() -> bool:
            result = (await store.get(request_id)).result_of("s2")
            return result is not None and result.status == "running"

        await eventually(slow_step_running, "step s2 to be running")
        # The sleep itself, not only the bwrap starting it: a bwrap killed before it has
        # set itself up to die with its parent would be waited out, not tested.
        sleeping = await eventually(
            lambda: lam_processes.marked_processes("sleep"), "the slow runbook's sleep"
        )
        first.kill()
        assert first.wait(timeout=DEADLINE) == -signal.SIGKILL

        sandboxed = (await _sandbox.probe_bwrap("bwrap", None)).bwrap is not None
        if sandboxed:
            # bwrap --die-with-parent takes the sandbox, and the sleep in it, down with A.
            await eventually(
                lambda: not lam_processes.marked_processes(),
                f"the orphaned runbook processes {sleeping} to die",
            )

        second = await lam_processes.start_worker("B", LAM_JOB_IDLE_SECONDS="0.5")
        record = await finished(store, request_id)
        assert stop_worker(second) == 0

        assert record.state == "failed"
        assert record.reason is not None and "outcome is unknown" in record.reason
        statuses = {result.step_id: result.status for result in record.results}
        assert statuses == {"s1": "succeeded", "s2": "interrupted"}
        starts = await step_starts(store)
        assert (starts[(request_id, "s1")], starts[(request_id, "s2")]) == (1, 1)
    finally:
        await store.aclose()
    verified = lam_processes.run("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("audit chain intact")


async def test_a_redis_restart_mid_flight_fails_calls_clearly_and_runs_nothing_twice(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    """Requests queued before a Redis restart all finish after it, none runs a step twice.

    Redis is shut down with SHUTDOWN SAVE and started again from that snapshot: the
    private server keeps no other persistence, and a restart that loses acknowledged
    writes would test data loss, not recovery. While it is down, calls fail with
    StoreUnavailable (in process) or one error line (the CLI); the worker waits, and
    afterwards reclaims what it could not finish.
    """
    with LamProcesses(tmp_path, private_redis.url, "lam:") as lam:
        engine = await open_engine(lam.settings())
        try:
            worker = await lam.start_worker("W", LAM_JOB_IDLE_SECONDS="0.5")
            queued = [
                await engine.ask(
                    Request(
                        text="run shell.quick then run shell.pause",
                        requester="user:alice",
                        environment="staging",
                    )
                )
                for _ in range(8)
            ]
            assert {record.state for record in queued} == {"approved"}

            async def some_finished() -> list[RequestRecord]:
                records = [await engine.store.get(record.id) for record in queued]
                return [r for r in records if r.state in TERMINAL_STATES]

            before = await eventually(some_finished, "the worker to finish a request")
            private_redis.stop(keep_data=True)
            assert len(before) < len(queued)

            with pytest.raises(StoreUnavailable, match="cannot reach Redis"):
                await engine.ask(Request(text="run shell.quick", requester="user:alice"))
            outage = lam.run("ask", "run shell.quick", "--env", "staging", "--as", "alice")
            assert outage.returncode != 0
            (line,) = outage.stderr.strip().splitlines()
            assert line.startswith("error: REDIS_URL 'redis://127.0.0.1:") and "Redis" in line

            private_redis.start()
            records = [await finished(engine.store, record.id) for record in queued]
            assert stop_worker(worker) == 0

            for record in records:
                # A step running when Redis went away has an unknown outcome: never run again.
                assert record.state == "succeeded" or (
                    record.state == "failed" and "outcome is unknown" in (record.reason or "")
                ), record
            starts = await step_starts(engine.store)
            assert max(starts.values()) == 1
            assert {request_id for request_id, _ in starts} == {record.id for record in queued}
            assert await engine.verify_audit() > 0
        finally:
            await engine.aclose()


APPROVER_SCRIPT = """\
import asyncio, json, pathlib, sys
from bot.config import load_settings
from bot.errors import LamError
from bot.wiring import open_engine

async def main(request_id, go, approvers):
    engine = await open_engine(load_settings())
    print("ready", flush=True)
    while not pathlib.Path(go).exists():
        await asyncio.sleep(0.005)

    async def approve(approver):
        try:
            return (await engine.approve(request_id, approver)).state
        except LamError as error:
            return type(error).__name__

    outcomes = await asyncio.gather(*(approve(a) for a in approvers))
    await engine.aclose()
    print(json.dumps(outcomes))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
"""


async def test_a_hundred_approvals_from_two_processes_run_the_request_once(
    lam_processes: LamProcesses, raw: aioredis.Redis
) -> None:
    """100 approvers at once, 50 in each of two processes: one approval wins, one run."""
    engine = await open_engine(lam_processes.settings())
    try:
        asked = await engine.ask(
            Request(text="run shell.quick", requester="user:alice", environment="prod")
        )
        assert asked.state == "awaiting_approval"
        go = lam_processes.tmp_path / "go"
        approvers = [
            lam_processes.start_script(APPROVER_SCRIPT, asked.id, str(go), *half)
            for half in (LEADS[:50], LEADS[50:])
        ]
        for process in approvers:
            assert process.stdout is not None
            assert process.stdout.readline() == b"ready\n", process.stderr
        go.touch()
        outcomes: Counter[str] = Counter()
        for process in approvers:
            stdout, stderr = process.communicate(timeout=DEADLINE)
            assert process.returncode == 0, stderr
            outcomes.update(json.loads(stdout.splitlines()[-1]))
        assert outcomes["approved"] == 1
        assert outcomes["IllegalTransition"] == 99
        assert await raw.xlen(f"{lam_processes.env['LAM_REDIS_PREFIX']}jobs") == 1

        with working(engine, "w1", "w2"):
            record = await finished(engine.store, asked.id)
        assert record.state == "succeeded"
        assert len(record.approvals) == 1
        starts = await step_starts(engine.store)
        assert starts == Counter({(asked.id, "s1"): 1})
        assert await engine.verify_audit() > 0
    finally:
        await engine.aclose()
