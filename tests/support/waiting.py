"""Waiting for a condition that no event announces, by polling it against a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

DEADLINE = 30.0
"""Seconds any awaited condition has before the test fails."""
POLL_INTERVAL = 0.02
"""Seconds between two looks at the condition."""

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T] | T], what: str, deadline: float = DEADLINE
) -> T:
    """The first truthy result of ``probe``, polled until ``deadline`` seconds have passed."""
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(POLL_INTERVAL)
    raise AssertionError(f"gave up after {deadline}s waiting for {what}")
