"""LAM on Redis: audit appends, requests through the engine, and worker processes.

Measured in one run, against a private ``redis-server`` on a free port (never 6379):

- audit appends per second through ``RedisStore`` (one request transition with its
  hash-chained audit event, as the engine stores every change), next to raw ``XADD``
  of the very same stream entries, pipelined 100 at a time and one per round trip;
- requests per second through the whole engine (intent, offline planner, Casbin policy,
  a no-op action policy allows outright, run inline) on ``RedisStore`` and on
  ``SqliteStore``, with ``bench.pipeline``'s policy and action;
- requests per second through ``lam worker`` processes, one and then two: approved
  requests of a one-step shell runbook (``echo``, sandboxed when bubblewrap works) are
  queued all at once, and the clock runs until every one has succeeded.

    python -m bench.audit [--rounds 5] [--appends 2000] [--requests 200] [--jobs 100]

Reports medians over the rounds; bounded to about two minutes with the defaults; never
run as a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from bench.pipeline import bench_engine, engine_round, timed_requests
from bot.audit import Redactor
from bot.config import Settings
from bot.jobs import Job
from bot.logs import configure_logging
from bot.models import AuditEvent, Request, RequestRecord
from bot.store.redis import RedisStore
from bot.store.redis_jobs import RedisJobQueue
from bot.wiring import open_engine
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
PIPELINE_BATCH = 100
WORKER_POLICY = "g, user:bench, role:bench, *\np, role:bench, *, shell.hello, *, run, allow\n"
WORKER_CONFIG = """\
connectors:
  - type: shell
    name: shell
    settings:
      runbooks:
        hello:
          description: Say hello.
          examples: [hello]
          argv: [echo, hello]
"""


async def audit_round(url: str, prefix: str, appends: int) -> tuple[float, float, float]:
    """Seconds for ``appends`` LAM transitions, then for raw XADDs of the same entries."""
    store = await RedisStore.open(url, prefix=f"{prefix}lam:")
    raw = aioredis.from_url(url, decode_responses=True)
    try:
        record = RequestRecord(request=Request(text="noop in staging", requester="user:bench"))
        record = await store.create(record, [_event(record, "request.received")])
        started = time.perf_counter()
        for _ in range(appends):
            record = await store.save(record, record.version, [_event(record, "step.finished")])
        lam_seconds = time.perf_counter() - started

        entries = await raw.xrange(f"{prefix}lam:audit", min="(1-0")
        assert len(entries) == appends
        started = time.perf_counter()
        for start in range(0, appends, PIPELINE_BATCH):
            async with raw.pipeline(transaction=False) as pipe:
                for entry_id, fields in entries[start : start + PIPELINE_BATCH]:
                    pipe.xadd(f"{prefix}raw-pipelined", fields, id=entry_id)
                await pipe.execute()
        pipelined_seconds = time.perf_counter() - started

        started = time.perf_counter()
        for entry_id, fields in entries:
            await raw.xadd(f"{prefix}raw-single", fields, id=entry_id)
        single_seconds = time.perf_counter() - started
    finally:
        await raw.aclose()
        await store.aclose()
    return lam_seconds, pipelined_seconds, single_seconds


def _event(record: RequestRecord, kind: str) -> AuditEvent:
    return AuditEvent.model_validate(
        {"kind": kind, "request_id": record.id, "actor": "lam", "state": record.state}
    )


async def redis_engine_round(directory: Path, url: str, prefix: str, requests: int) -> float:
    """Seconds for ``requests`` requests end to end on RedisStore, as ``engine_round`` does."""
    store = await RedisStore.open(url, prefix=prefix)
    try:
        elapsed, _ = await timed_requests(bench_engine(directory, store), requests)
    finally:
        await store.aclose()
    return elapsed


class HeldJobs:
    """A job queue that only collects what is submitted, so it can be released at once."""

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    async def submit(self, request_id: str) -> None:
        self.request_ids.append(request_id)

    async def take(self, consumer: str, wait: float) -> Job | None:
        return None

    async def touch(self, job: Job, consumer: str) -> None:
        pass

    async def done(self, job: Job) -> None:
        pass

    async def bury(self, job: Job, reason: str) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def workers_round(directory: Path, url: str, prefix: str, jobs: int, workers: int) -> float:
    """Seconds from queueing ``jobs`` approved requests until ``workers`` processes ran all."""
    config, policies = directory / "lam.yaml", directory / "policies"
    config.write_text(WORKER_CONFIG)
    policies.mkdir()
    shutil.copy(REPO / "policies" / "model.conf", policies / "model.conf")
    (policies / "policy.csv").write_text(WORKER_POLICY)
    env = {
        "PATH": os.environ["PATH"],
        "LAM_HOME": str(directory / "home"),
        "LAM_CONFIG": str(config),
        "LAM_POLICY_DIR": str(policies),
        "REDIS_URL": url,
        "LAM_REDIS_PREFIX": prefix,
        "LAM_LOG_FORMAT": "json",
        "LAM_LOG_LEVEL": "info",
    }
    processes = [_start_worker(directory, env, f"w{n}") for n in range(workers)]
    engine = await open_engine(Settings.model_validate(env))
    queue = engine.jobs
    assert isinstance(queue, RedisJobQueue)
    held = HeldJobs()
    engine.jobs = held
    raw = aioredis.from_url(url, decode_responses=True)
    try:
        for _ in range(jobs):
            record = await engine.ask(Request(text="hello", requester="user:bench"))
            assert record.state == "approved", record.reason
        started = time.perf_counter()
        async with raw.pipeline(transaction=False) as pipe:
            for request_id in held.request_ids:
                pipe.xadd(queue.stream, {"request_id": request_id})
            await pipe.execute()
        while await raw.zcard(f"{prefix}index:state:succeeded") < jobs:
            failed = await raw.zcard(f"{prefix}index:state:failed")
            if failed:
                raise RuntimeError(f"{failed} benchmark request(s) failed; see {directory}")
            await asyncio.sleep(0.002)
        return time.perf_counter() - started
    finally:
        await raw.aclose()
        await queue.aclose()
        await engine.aclose()
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)


def _start_worker(directory: Path, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    """A ``lam worker`` process, returned once it waits for jobs."""
    log = directory / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "worker", "--name", name],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while b'"worker.started"' not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"worker {name} did not start: {log.read_text()}")
        try:
            process.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            continue
    return process


def _median_rate(count: int, seconds: Sequence[float]) -> float:
    return count / statistics.median(seconds)


async def main(rounds: int, appends: int, requests: int, jobs: int) -> None:
    # As the CLI runs by default: warnings only, so the figures are not about printing.
    configure_logging(log_format="json", level="warning", redactor=Redactor())
    lam_s: list[float] = []
    pipelined_s: list[float] = []
    single_s: list[float] = []
    redis_engine_s: list[float] = []
    sqlite_engine_s: list[float] = []
    worker_s: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="lam-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            for n in range(rounds):
                round_dir = Path(tmp) / f"round{n}"
                for name in ("redis", "sqlite", "w1", "w2"):
                    (round_dir / name).mkdir(parents=True)
                lam, pipelined, single = await audit_round(server.url, f"audit{n}:", appends)
                lam_s.append(lam)
                pipelined_s.append(pipelined)
                single_s.append(single)
                redis_engine_s.append(
                    await redis_engine_round(
                        round_dir / "redis", server.url, f"engine{n}:", requests
                    )
                )
                sqlite_engine_s.append((await engine_round(round_dir / "sqlite", requests))[0])
                for workers in (1, 2):
                    worker_s[workers].append(
                        await workers_round(
                            round_dir / f"w{workers}", server.url, f"w{workers}-{n}:", jobs, workers
                        )
                    )
                print(f"round {n + 1}/{rounds} done", file=sys.stderr)
        finally:
            server.kill()

    lam_rate = _median_rate(appends, lam_s)
    pipelined_rate = _median_rate(appends, pipelined_s)
    single_rate = _median_rate(appends, single_s)
    redis_rate = _median_rate(requests, redis_engine_s)
    sqlite_rate = _median_rate(requests, sqlite_engine_s)
    one, two = (_median_rate(jobs, worker_s[k]) for k in (1, 2))
    print(f"rounds: {rounds} (medians below); redis-server on 127.0.0.1, no persistence")
    print(f"audit appends ({appends} per round):")
    print(f"  LAM (transition + chained event): {lam_rate:9.0f} appends/s")
    print(f"  raw XADD, pipelined by {PIPELINE_BATCH}:       {pipelined_rate:9.0f} appends/s")
    print(f"  raw XADD, one per round trip:     {single_rate:9.0f} appends/s")
    print(
        f"  LAM / raw pipelined: {lam_rate / pipelined_rate:.3f}"
        f"   LAM / raw single: {lam_rate / single_rate:.3f}"
    )
    print(f"engine, no-op action run inline ({requests} requests per round):")
    print(f"  RedisStore:  {redis_rate:8.1f} requests/s")
    print(f"  SqliteStore: {sqlite_rate:8.1f} requests/s")
    print(f"  Redis / SQLite: {redis_rate / sqlite_rate:.2f}")
    print(f"lam worker processes, shell runbook 'echo' ({jobs} queued requests per round):")
    print(f"  1 worker:  {one:8.1f} requests/s")
    print(f"  2 workers: {two:8.1f} requests/s")
    print(f"  2 / 1: {two / one:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=100)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.appends, arguments.requests, arguments.jobs))
