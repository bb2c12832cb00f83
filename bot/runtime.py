"""What a long-running LAM process runs beside its front: policy reloads and workers."""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

from bot.config import Settings
from bot.engine import Engine
from bot.jobs import Worker
from bot.policy_reload import PolicyReloader
from bot.policy_share import PolicyShare
from bot.wiring import policy_dir

log = structlog.get_logger("lam.runtime")


def worker_names(name: str | None, count: int) -> list[str]:
    """Queue consumer names, unique per process: ``host-pid`` unless given."""
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    return [base] if count == 1 else [f"{base}-{n}" for n in range(1, count + 1)]


async def run_background(
    engine: Engine, settings: Settings, stop: asyncio.Event, *, workers: list[str]
) -> None:
    """Follow policy changes and run queued jobs until ``stop`` is set.

    Policy: this process's own files, and (with Redis) what other replicas share. Jobs:
    one ``Worker`` per name when the engine has a queue; a job in progress finishes
    before this returns, and a killed process's job is reclaimed by another worker.
    """
    risks = {action.id: action.risk for action in engine.catalog}
    reloader = PolicyReloader(engine, policy_dir(settings), risks)
    tasks = [reloader.run(stop, settings.lam_policy_reload_seconds)]
    share: PolicyShare | None = None
    if settings.redis_url is not None:
        replica = workers[0] if workers else worker_names(None, 1)[0]
        share = PolicyShare(
            reloader,
            settings.redis_url.get_secret_value(),
            prefix=settings.lam_redis_prefix,
            replica=replica,
        )
        tasks.append(share.run(stop))
    if engine.jobs is not None and workers:
        resubmitted = await engine.resubmit_approved()
        log.info("worker.started", workers=workers, resubmitted=resubmitted)
        tasks.extend(
            Worker(
                engine,
                engine.jobs,
                name=name,
                max_deliveries=settings.lam_job_max_deliveries,
                heartbeat=settings.lam_job_idle_seconds / 3,
            ).run(stop)
            for name in workers
        )
    try:
        await asyncio.gather(*tasks)
    finally:
        if share is not None:
            await share.aclose()
    if workers and engine.jobs is not None:
        log.info("worker.stopped", workers=workers)
