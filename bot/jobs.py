"""Execution jobs: how an approved request reaches a worker, and the worker loop.

The embedded default runs an approved request at once, in the process that approved it.
With Redis, approval puts a job on a stream and workers (in ``lam serve`` or alone in
``lam worker``) take it; a job whose worker dies is taken again by another worker after
an idle timeout. Jobs are delivered at least once: the executor records each step before
and after it runs, so a redelivered job never runs a finished step again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Protocol

import structlog
from pydantic import BaseModel, ConfigDict

from bot.errors import LamError, StoreUnavailable

if TYPE_CHECKING:
    from bot.engine import Engine

log = structlog.get_logger("lam.jobs")

HAND_BACK_TIMEOUT = 2.0
"""Seconds a stopping worker spends telling the queue it gives a job back."""


class Job(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str
    id: str
    """The queue's own id of this delivery (a stream entry id)."""
    deliveries: int = 1
    """How often the job has been handed to a worker, this time included."""


class JobQueue(Protocol):
    async def submit(self, request_id: str) -> None:
        """Queue an approved request for execution."""
        ...

    async def take(self, consumer: str, wait: float) -> Job | None:
        """The next job for ``consumer``: one abandoned by a dead worker first, else a new one.

        Waits at most ``wait`` seconds; ``None`` when there is none.
        """
        ...

    async def touch(self, job: Job, consumer: str) -> None:
        """Tell the queue the job is still being worked on, so nobody reclaims it."""
        ...

    async def done(self, job: Job) -> None:
        """The job ended (its request finished or failed); it is never delivered again."""
        ...

    async def bury(self, job: Job, reason: str) -> None:
        """Move a job that keeps failing to the dead-letter stream, out of the queue."""
        ...

    async def release(self, job: Job, consumer: str, *, started: bool) -> None:
        """Hand a job back unfinished, for any worker to take at once (a worker stopping).

        A job that was never ``started`` keeps the delivery count it had before this
        worker took it: giving it back is not a failed try.
        """
        ...

    async def depth(self) -> int:
        """How many jobs wait for a worker, not counting those being worked on."""
        ...

    async def aclose(self) -> None: ...


class Worker:
    """Takes jobs from a queue and runs their requests through the engine."""

    def __init__(
        self,
        engine: Engine,
        queue: JobQueue,
        *,
        name: str,
        max_deliveries: int = 5,
        heartbeat: float = 10.0,
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.name = name
        self.max_deliveries = max_deliveries
        self.heartbeat = heartbeat
        """Seconds between ``touch`` calls; well under the queue's reclaim idle time."""

    async def run(self, stop: asyncio.Event, *, wait: float = 1.0) -> None:
        """Work until ``stop`` is set; a job in progress is finished first.

        No job is started once ``stop`` is set: one that arrives while the worker waits
        for it is handed back at once. Cancelled in the middle of a job, the worker hands
        the job back (unfinished) before it stops.
        """
        backoff = 0.1
        while not stop.is_set():
            try:
                job = await self.queue.take(self.name, wait)
                if job is not None and stop.is_set():
                    await self._hand_back(job, started=False)
                elif job is not None:
                    await self.work(job)
                backoff = 0.1
                continue
            except StoreUnavailable as error:
                # Fail closed and recover by itself: nothing runs while the queue is away,
                # and a job it could not finish stays pending, to be reclaimed.
                log.warning("worker.queue_unavailable", worker=self.name, error=str(error))
            except Exception:
                # A bug in one job must not stop the worker: the job stays pending and,
                # if it keeps crashing, is buried after ``max_deliveries``.
                log.exception("worker.job_crashed", worker=self.name)
            try:
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            except TimeoutError:
                backoff = min(backoff * 2, 5.0)

    async def work(self, job: Job) -> None:
        """Run one job's request, keeping the job alive while it runs.

        Every log line written meanwhile, by the engine and the connectors too, carries
        the worker, the request id and the job. Raises ``StoreUnavailable`` when the queue
        cannot be told how the job ended; the job then stays pending and comes again.
        Cancelled (a shutdown out of time), it hands the job back unfinished.
        """
        with structlog.contextvars.bound_contextvars(
            worker=self.name, request_id=job.request_id, job=job.id
        ):
            try:
                await self._work(job)
            except asyncio.CancelledError:
                # Another worker takes the job now rather than after the idle timeout,
                # and finds the interrupted step as it was left. The heartbeat has
                # stopped by now, so it cannot renew the job after it was given back.
                await self._hand_back(job, started=True)
                raise

    async def _work(self, job: Job) -> None:
        if job.deliveries > self.max_deliveries:
            await self._bury(job)
            return
        finished = asyncio.Event()
        keepalive = asyncio.create_task(self._keep_alive(job, finished))
        try:
            if job.deliveries == 1 and await self._running_elsewhere(job):
                # A second job for one request (it was queued twice): the worker of
                # the first runs it. Resuming here would call its running step
                # interrupted.
                log.info("job.duplicate")
            else:
                record = await self.engine.execute(job.request_id)
                log.info("job.finished", state=record.state, deliveries=job.deliveries)
        except StoreUnavailable:
            # Leave the job pending: another delivery finds the request where it stopped.
            log.warning("job.store_unavailable")
            return
        except LamError as error:
            # The request cannot run (cancelled meanwhile, already finished): done.
            log.info("job.skipped", reason=str(error))
        finally:
            finished.set()
            keepalive.cancel()
            # Waits without taking on the task's CancelledError as its own.
            await asyncio.wait({keepalive})
        await self.queue.done(job)

    async def _hand_back(self, job: Job, *, started: bool) -> None:
        """Release ``job``; if the queue cannot be told, it is reclaimed after the idle time."""
        try:
            async with asyncio.timeout(HAND_BACK_TIMEOUT):
                await self.queue.release(job, self.name, started=started)
        except (StoreUnavailable, TimeoutError) as error:
            log.warning("job.not_released", job=job.id, error=str(error) or "timed out")
            return
        log.info("job.released", job=job.id, request_id=job.request_id, started=started)

    async def _bury(self, job: Job) -> None:
        """Fail the request of a job that keeps dying, then dead-letter the job."""
        reason = (
            f"execution was started {job.deliveries - 1} times without finishing;"
            " moved to the dead-letter stream"
        )
        log.error("job.dead_lettered", deliveries=job.deliveries)
        await self.engine.abandon(job.request_id, reason)
        await self.queue.bury(job, reason)

    async def _running_elsewhere(self, job: Job) -> bool:
        """Whether a first delivery finds its request already executing: another job has it.

        A job delivered again (its worker died) resumes an executing request instead.
        """
        record = await self.engine.store.get(job.request_id)
        return record.state == "executing"

    async def _keep_alive(self, job: Job, finished: asyncio.Event) -> None:
        # ``finished`` is checked on every turn rather than relying on cancel() alone: on
        # Python 3.11 a cancel that lands just as a redis-py call completes can be
        # swallowed (``asyncio.wait_for``), and this loop would then renew a finished
        # job for ever while ``work`` waits for it.
        while not finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=self.heartbeat)
            if finished.is_set():
                return
            try:
                await self.queue.touch(job, self.name)
            except StoreUnavailable:
                continue
