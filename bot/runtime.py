"""What a long-running LAM process runs beside its front, and how it stops.

Beside the front: policy reloads and, with Redis, workers taking jobs from the queue.

Stopping: the first SIGTERM (or Ctrl-C) stops new work — the Slack front stops taking
events, workers stop taking jobs — and gives the work in progress
``LAM_SHUTDOWN_GRACE_SECONDS`` to finish. A second signal, or the grace running out,
cuts it short: running steps are cancelled, and their jobs handed back unfinished to the
queue, where the next worker finds the interrupted step (its outcome unknown, so it is
not run again) and fails its request for a person to look at. Either way the process
exits 0: it stopped because it was asked to, and every job it did not finish is still
in the queue. Kubernetes sends SIGKILL ``terminationGracePeriodSeconds`` (30 by default)
after SIGTERM: keep the grace a few seconds under it, for closing connections and
posting the last audit events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Iterable, Iterator
from typing import Any

import structlog

from bot.config import Settings
from bot.engine import Engine
from bot.health import Health, health_application, listening
from bot.jobs import Worker
from bot.policy_reload import PolicyReloader
from bot.policy_share import PolicyShare
from bot.wiring import policy_dir

log = structlog.get_logger("lam.runtime")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    """The stop of one process: ``stop`` takes no new work, ``hurry`` cuts running work short.

    ``begin`` (the first signal) sets ``stop`` and starts the grace period; a second
    ``begin``, or the end of the grace period, sets ``hurry``.
    """

    def __init__(self, grace: float) -> None:
        if grace <= 0:
            raise ValueError(f"grace must be more than 0 seconds, not {grace!r}")
        self.grace = grace
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    def begin(self, reason: str = "asked to stop") -> None:
        if self.stop.is_set():
            self._hurry(f"{reason} again")
            return
        self.stop.set()
        self._timer = asyncio.get_running_loop().call_later(
            self.grace, self._hurry, f"the {self.grace:g}s grace period ran out"
        )
        log.warning("shutdown.started", reason=reason, grace_seconds=self.grace)

    def abort(self, reason: str) -> None:
        """Stop at once, cutting work short: the process is failing, not asked to stop."""
        self.stop.set()
        self._hurry(reason)

    def _hurry(self, reason: str) -> None:
        if not self.hurry.is_set():
            self.hurry.set()
            log.warning("shutdown.hurried", reason=reason)

    @contextlib.contextmanager
    def on_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT call ``begin`` while the block runs."""
        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            loop.add_signal_handler(signum, self.begin, signum.name)
        try:
            yield
        finally:
            for signum in SIGNALS:
                loop.remove_signal_handler(signum)
            if self._timer is not None:
                self._timer.cancel()

    async def finish(self, tasks: Iterable[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
        """Wait for ``tasks`` until ``hurry``, then cancel the rest; returns those cut short.

        The first task that fails cancels the others, and its error is raised.
        """
        pending = set(tasks)
        hurried = asyncio.ensure_future(self.hurry.wait())
        try:
            while pending and not hurried.done():
                done, pending = await asyncio.wait(
                    pending | {hurried}, return_when=asyncio.FIRST_COMPLETED
                )
                done.discard(hurried)
                pending.discard(hurried)
                for task in done:
                    if not task.cancelled() and (error := task.exception()) is not None:
                        raise error
        finally:
            hurried.cancel()
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        return pending

    async def within(self, work: Awaitable[Any], *, name: str) -> bool:
        """Run ``work`` until it ends or ``hurry``; ``False`` when it was cut short."""
        cut = await self.finish([asyncio.ensure_future(work)])
        if cut:
            log.warning("shutdown.cut_short", work=name)
        return not cut


def worker_names(name: str | None, count: int) -> list[str]:
    """Queue consumer names, unique per process: ``host-pid`` unless given."""
    base = name or f"{socket.gethostname()}-{os.getpid()}"
    return [base] if count == 1 else [f"{base}-{n}" for n in range(1, count + 1)]


async def run_background(
    engine: Engine, settings: Settings, shutdown: Shutdown, *, workers: list[str]
) -> None:
    """Follow policy changes and run queued jobs until ``shutdown.stop`` is set.

    Policy: this process's own files, and (with Redis) what other replicas share. Jobs:
    one ``Worker`` per name when the engine has a queue. After ``stop``, no job is
    started; a job in progress finishes unless ``hurry`` cuts it short, and then goes
    back to the queue for another worker.
    """
    stop = shutdown.stop
    working = engine.jobs is not None and bool(workers)
    if working:
        # Before any task starts: a store that fails here leaves nothing running.
        resubmitted = await engine.resubmit_approved()
        log.info("worker.started", workers=workers, resubmitted=resubmitted)
    risks = {action.id: action.risk for action in engine.catalog}
    reloader = PolicyReloader(engine, policy_dir(settings), risks)
    tasks = [
        asyncio.create_task(
            reloader.run(stop, settings.lam_policy_reload_seconds), name="policy-reload"
        )
    ]
    share: PolicyShare | None = None
    if settings.redis_url is not None:
        replica = workers[0] if workers else worker_names(None, 1)[0]
        share = PolicyShare(
            reloader,
            settings.redis_url.get_secret_value(),
            prefix=settings.lam_redis_prefix,
            replica=replica,
        )
        tasks.append(asyncio.create_task(share.run(stop), name="policy-share"))
    if working and engine.jobs is not None:
        tasks.extend(
            asyncio.create_task(
                Worker(
                    engine,
                    engine.jobs,
                    name=name,
                    max_deliveries=settings.lam_job_max_deliveries,
                    heartbeat=settings.lam_job_idle_seconds / 3,
                ).run(stop),
                name=f"worker:{name}",
            )
            for name in workers
        )
    try:
        cut = await shutdown.finish(tasks)
    finally:
        if share is not None:
            await share.aclose()
    if working:
        log.info("worker.stopped", workers=workers, cut_short=sorted(t.get_name() for t in cut))


async def run_worker(
    engine: Engine,
    settings: Settings,
    *,
    workers: list[str],
    grace: float,
    health_port: int | None = None,
    host: str = "0.0.0.0",  # noqa: S104 -- a server listens on every interface by default
) -> None:
    """``lam worker``: run jobs until SIGTERM or Ctrl-C, with health on ``health_port``.

    The health endpoints stay up until the last job has finished or been handed back;
    ``/readyz`` says 503 from the first signal on.
    """
    shutdown = Shutdown(grace)
    with shutdown.on_signals():
        async with contextlib.AsyncExitStack() as stack:
            if health_port is not None:
                health = Health(engine, stopping=shutdown.stop)
                url = await stack.enter_async_context(
                    listening(health_application(health), host, health_port)
                )
                log.warning("worker.health", url=url)
            await run_background(engine, settings, shutdown, workers=workers)
    log.warning("shutdown.finished")
