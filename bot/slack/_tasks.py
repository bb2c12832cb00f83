"""Work handed off by listeners after they ack: bounded, tracked, logged when it fails,
drained at exit."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from bot.metrics import SLACK_WORK_QUEUED

log = structlog.get_logger("lam.slack")

DEFAULT_CONCURRENCY = 4
SLOT_SECONDS = 1.0
"""A piece of work still running after this long gives its slot to the next one.

Slots exist to keep the event loop's ready queue short, so that an ack waits behind a few
slices of work rather than dozens; work that lasts this long is waiting (on the model, a
runbook, Slack), not computing, and holding its slot would only stall every delivery
behind, say, four long runbooks."""


@dataclass
class _Queued:
    work: Coroutine[Any, Any, None]
    name: str
    context: contextvars.Context
    """The log context of the delivery that handed the work off, as when it was spawned."""


class Background:
    """The work listeners hand off: at most ``concurrency`` pieces started and running at
    once (see ``SLOT_SECONDS``), the rest waiting in memory in the order handed off.

    A delivery is acknowledged before its work is queued, so the queue is what a busy
    replica owes Slack; ``idle`` and ``aclose`` wait for it as for running work. A failing
    piece is logged, never lost silently, and frees its slot like any other. asyncio keeps
    only weak references to tasks, so each one is held here until it ends.
    """

    def __init__(
        self, concurrency: int = DEFAULT_CONCURRENCY, *, slot_seconds: float = SLOT_SECONDS
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"Background: concurrency must be at least 1, not {concurrency}")
        self._concurrency = concurrency
        self._slot_seconds = slot_seconds
        self._tasks: set[asyncio.Task[None]] = set()
        self._holding: dict[asyncio.Task[None], asyncio.TimerHandle] = {}
        """The running tasks that hold a slot (started less than ``slot_seconds`` ago), with
        the timer that frees it."""
        self._queue: deque[_Queued] = deque()
        self._idle = asyncio.Event()
        self._idle.set()

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        self._idle.clear()
        queued = _Queued(work, name, contextvars.copy_context())
        if len(self._holding) < self._concurrency and not self._queue:
            self._start(queued)
            return
        self._queue.append(queued)
        SLACK_WORK_QUEUED.inc()

    def _start(self, queued: _Queued) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(
            self._guarded(queued.work, queued.name), name=queued.name, context=queued.context
        )
        self._tasks.add(task)
        self._holding[task] = loop.call_later(self._slot_seconds, self._release, task)
        task.add_done_callback(self._done)

    @staticmethod
    async def _guarded(work: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("slack.background_failed", task=name)

    def _release(self, task: asyncio.Task[None]) -> None:
        if (timer := self._holding.pop(task, None)) is not None:
            timer.cancel()
            self._start_queued()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._release(task)
        if not self._tasks and not self._queue:
            self._idle.set()

    def _start_queued(self) -> None:
        while self._queue and len(self._holding) < self._concurrency:
            SLACK_WORK_QUEUED.dec()
            self._start(self._queue.popleft())

    @property
    def pending(self) -> int:
        """Work handed off and not finished: running or queued."""
        return len(self._tasks) + len(self._queue)

    @property
    def queued(self) -> int:
        """Work waiting for a slot."""
        return len(self._queue)

    async def idle(self) -> None:
        """Return once no handed-off work is left running or queued."""
        while self._tasks or self._queue:
            await self._idle.wait()

    async def aclose(self, grace: float = 5.0) -> None:
        """Let running and queued work finish for ``grace`` seconds, then cancel what runs
        and drop what never started (logged, with how many)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.idle()
        if self._queue:
            log.warning("slack.background_dropped", queued=len(self._queue))
        while self._queue:
            SLACK_WORK_QUEUED.dec()
            self._queue.popleft().work.close()
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def woken(wake: asyncio.Event, stop: asyncio.Event, *, seconds: float) -> None:
    """Return when ``wake`` or ``stop`` is set, or after ``seconds``, whichever comes first."""
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
