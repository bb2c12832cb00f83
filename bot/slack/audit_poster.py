"""The audit log channel: every audit event posted to ``LAM_AUDIT_CHANNEL``, in order.

The store is the source of truth. The poster tails ``store.audit_events(after_seq)`` and
posts what it has not posted yet, a batch per message, one compact line per event; only
after Slack accepts a batch does it move its position on and write it down (in the Slack
front's state file). A Slack outage, a 429 or a crash therefore never loses an event: the
batch is posted again later. The worst case is a batch posted twice, after a crash
between Slack's answer and writing the position; each line starts with the event's
sequence number, so a reader can tell.

Run the poster in one process per audit channel (one ``lam serve`` replica sets
``LAM_AUDIT_CHANNEL``): two would both post every event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.models import AuditEvent
from bot.slack._state import SlackState
from bot.slack._tasks import woken
from bot.slack.blocks import audit_line
from bot.slack.front import SLACK_FAILURES
from bot.store import Store

log = structlog.get_logger("lam.slack.audit")

Sleep = Callable[[float], Awaitable[None]]


class AuditPoster:
    """Posts the audit trail to a channel, batched, in order, never skipping an event."""

    def __init__(
        self,
        store: Store,
        client: AsyncWebClient,
        state: SlackState,
        channel: str,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 20,
        max_chars: int = 3500,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``client`` should have no rate-limit retry handler: the poster waits out 429s itself,
        and the events that arrive meanwhile go out in the next, fuller batch."""
        self._store = store
        self._client = client
        self._state = state
        self._channel = channel
        self._poll = poll_interval
        self._batch_size = batch_size
        self._max_chars = max_chars
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._wake = asyncio.Event()
        self.posted = 0
        """Events posted since start, for health and tests."""

    @property
    def position(self) -> int:
        """The ``seq`` of the last event Slack accepted."""
        return self._state.audit_seq

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Post until ``stop`` is set; a batch in flight is finished first."""
        while not stop.is_set():
            self._wake.clear()
            batch = await self._next_batch()
            if not batch:
                await woken(self._wake, stop, seconds=self._poll)
                continue
            if await self._post(batch, stop):
                self._state.audit_seq = batch[-1].seq
                self.posted += len(batch)
                await self._state.save()

    async def drain(self) -> None:
        """Post everything stored so far, then return (for ``lam serve`` shutting down, tests)."""
        never = asyncio.Event()
        while batch := await self._next_batch():
            if await self._post(batch, never):
                self._state.audit_seq = batch[-1].seq
                self.posted += len(batch)
                await self._state.save()

    async def _next_batch(self) -> list[AuditEvent]:
        batch: list[AuditEvent] = []
        chars = 0
        try:
            async for event in self._store.audit_events(self._state.audit_seq):
                line = len(audit_line(event)) + 1
                if batch and (len(batch) >= self._batch_size or chars + line > self._max_chars):
                    break
                batch.append(event)
                chars += line
        except Exception:
            # The store is down: nothing can be posted, and nothing is lost.
            log.exception("audit_poster.store_unavailable", after_seq=self._state.audit_seq)
            return []
        return batch

    async def _post(self, batch: list[AuditEvent], stop: asyncio.Event) -> bool:
        """Post one batch, waiting out rate limits and outages; ``False`` if stopped first."""
        text = "\n".join(audit_line(event) for event in batch)
        delay = self._backoff
        while True:
            try:
                await self._client.chat_postMessage(
                    channel=self._channel, text=text, unfurl_links=False, unfurl_media=False
                )
                return True
            except SlackApiError as error:
                wait = _retry_after(error)
                if wait is None:
                    wait, delay = delay, min(delay * 2, self._max_backoff)
                log.warning(
                    "audit_poster.refused",
                    error=error.response.get("error"),
                    status=error.response.status_code,
                    first_seq=batch[0].seq,
                    retry_in=wait,
                )
            except SLACK_FAILURES as error:
                wait, delay = delay, min(delay * 2, self._max_backoff)
                log.warning("audit_poster.unreachable", error=str(error), retry_in=wait)
            if stop.is_set():
                return False
            await self._sleep(wait)


def _retry_after(error: SlackApiError) -> float | None:
    """Slack's ``Retry-After`` seconds for a 429, else ``None``."""
    if error.response.status_code != 429:
        return None
    headers = error.response.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except (TypeError, ValueError):
        return 1.0
