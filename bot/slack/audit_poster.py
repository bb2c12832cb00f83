"""The audit log channel: every audit event posted to ``LAM_AUDIT_CHANNEL``, once, in order.

The store is the source of truth. The poster tails ``store.audit_events(position)`` and
posts what the channel has not had yet, a batch per message, one compact line per event;
only after Slack accepts a batch does it move the channel's position on, in the store. A
Slack outage, a 429 or a crash therefore never loses an event: the batch is posted later.

With several replicas only the holder of the Slack lease posts (``bot.slack._lease``); a
dead holder is replaced once its lease expires, and the new one carries on from the
stored position. Should two replicas both believe they hold the lease (a renewal that came
too late), each batch is also claimed in the store, by the seq it starts at, before each
attempt to post it: the same events do not go out twice. One case is left: a crash
between Slack accepting a batch and the position being stored; that batch is posted
again. Each line starts with its event's seq, so a reader can tell.

The gauge ``lam_audit_post_lag_events`` is how many stored events the channel lacks, as
every replica sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.metrics import AUDIT_POST_LAG
from bot.models import AuditEvent
from bot.slack._lease import Lease
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
        lease: Lease,
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
        self.lease = lease
        self._channel = channel
        self._poll = poll_interval
        self._batch_size = batch_size
        self._max_chars = max_chars
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._wake = asyncio.Event()
        self.posted = 0
        """Events this poster has posted since it started, for tests."""

    async def position(self) -> int:
        """The ``seq`` of the last event the channel got (from any replica)."""
        return await self._state.audit_position(self._channel)

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Post while holding the lease, until ``stop`` is set; a batch in flight is finished."""
        while not stop.is_set():
            self._wake.clear()
            if self.lease.holding:
                if await self._post_next(stop):
                    continue
            else:
                # Every replica reports the lag, so a dead holder shows on the others.
                await self._measure_lag()
            await woken(self._wake, stop, seconds=self._poll)

    async def drain(self) -> None:
        """Post everything stored so far, then give the lease up (``lam serve`` stopping).

        Returns at once when another replica holds the lease: that one posts instead.
        """
        if not await self.lease.renew():
            log.info("audit_poster.drain_left_to_leader")
            return
        try:
            never = asyncio.Event()
            while await self._post_next(never):
                pass
        finally:
            await self.lease.release()

    async def _post_next(self, stop: asyncio.Event) -> bool:
        """Post the batch after the channel's position; whether there was one and it went."""
        try:
            position = await self._state.audit_position(self._channel)
            head, _ = await self._store.audit_head()
            AUDIT_POST_LAG.set(max(0, head - position))
            batch = await self._next_batch(position)
        except Exception:
            # The store is down: nothing can be posted, and nothing is lost.
            log.exception("audit_poster.store_unavailable")
            return False
        if not batch or not await self._post(batch, stop):
            return False
        try:
            await self._state.set_audit_position(self._channel, batch[-1].seq)
        except Exception:
            # Slack has the batch; without the position it goes out again later.
            log.exception("audit_poster.position_not_stored", seq=batch[-1].seq)
            return False
        self.posted += len(batch)
        AUDIT_POST_LAG.set(max(0, head - batch[-1].seq))
        return True

    async def _measure_lag(self) -> None:
        try:
            position = await self._state.audit_position(self._channel)
            head, _ = await self._store.audit_head()
        except Exception as error:  # The store is down; the last figure stands.
            log.info("audit_poster.lag_unknown", error=str(error))
            return
        AUDIT_POST_LAG.set(max(0, head - position))

    async def _next_batch(self, position: int) -> list[AuditEvent]:
        batch: list[AuditEvent] = []
        chars = 0
        async for event in self._store.audit_events(position):
            line = len(audit_line(event)) + 1
            if batch and (len(batch) >= self._batch_size or chars + line > self._max_chars):
                break
            batch.append(event)
            chars += line
        return batch

    async def _still_mine(self, batch: list[AuditEvent]) -> bool:
        """Whether this replica holds the lease (renewing it) and, claiming it again, the batch."""
        if not await self.lease.renew():
            return False
        key = f"slack:audit:{self._channel}:batch:{batch[0].seq}"
        ttl = timedelta(seconds=self.lease.ttl)
        try:
            return await self._store.claim(key, self.lease.holder, ttl) == self.lease.holder
        except Exception as error:  # Unclaimed, the batch waits; nothing is lost.
            log.warning("audit_poster.claim_failed", error=str(error))
            return False

    async def _post(self, batch: list[AuditEvent], stop: asyncio.Event) -> bool:
        """Post one batch, waiting out rate limits and outages; ``False`` if stopped first,
        or when another replica has taken the lease or the batch meanwhile."""
        text = "\n".join(audit_line(event) for event in batch)
        delay = self._backoff
        while await self._still_mine(batch):
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
        return False


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
