"""Progress: keeping each plan message in step with its request, and what follows from it.

The audit trail is the feed: every change to a request is an audit event, whichever
process made it (this one, another replica, a ``lam worker``). ``Progress`` tails the
trail, and for each event of a request with a plan message it re-renders that message
from the stored record, so it shows queued → running → succeeded/failed with durations.
Updates to one message are coalesced: however many events arrive while one update is in
flight, one more update follows, showing the latest state.

When a request starts waiting for approval its approvers are notified once; when it
ends, its results are posted in the thread once (long output as a file).

``wake()`` is the engine hook: called after each stored change it makes updates
immediate; without it, changes are found every ``poll_interval`` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime

import structlog

from bot.errors import LamError, UnknownRequest
from bot.models import TERMINAL_STATES, RequestRecord, utcnow
from bot.slack._state import PlanMessage
from bot.slack._tasks import woken
from bot.slack.blocks import (
    clip,
    code,
    decision_buttons,
    escape,
    long_outputs,
    plan_message,
    results_message,
    section,
    who,
)
from bot.slack.front import SLACK_FAILURES, SlackFront

log = structlog.get_logger("lam.slack")

UPDATE_ATTEMPTS = 3


class Progress:
    """Tails the audit trail and renders each tracked request's changes into Slack."""

    def __init__(self, front: SlackFront, *, poll_interval: float) -> None:
        self._front = front
        self._poll = poll_interval
        self._wake = asyncio.Event()
        self._dirty: set[str] = set()
        self._running: set[str] = set()
        self._deadlines: dict[str, datetime] = {}
        """When each request shown awaiting approval expires: the engine expires a request
        only when it is read, so at its deadline progress reads it."""

    def wake(self) -> None:
        """Look at the audit trail now (the engine stored a change)."""
        self._wake.set()

    def touch(self, request_id: str) -> None:
        """Re-render ``request_id``'s plan message soon, if it has one."""
        if request_id not in self._front.state.plans:
            return
        self._dirty.add(request_id)
        if request_id not in self._running:
            self._running.add(request_id)
            self._front.background.spawn(self._update(request_id), name=f"progress:{request_id}")

    async def run(self, stop: asyncio.Event) -> None:
        """Tail the audit trail until ``stop`` is set, from its end when started."""
        store = self._front.engine.store
        seq, _ = await store.audit_head()
        # Requests tracked before a restart may have moved on while LAM was down.
        for request_id in list(self._front.state.plans):
            self.touch(request_id)
        while not stop.is_set():
            self._wake.clear()
            try:
                async for event in store.audit_events(seq):
                    seq = event.seq
                    if event.request_id is not None:
                        self.touch(event.request_id)
            except Exception:
                log.exception("slack.progress_tail_failed", after_seq=seq)
            self._expire_due()
            await woken(self._wake, stop, seconds=self._poll)

    def _expire_due(self) -> None:
        now = utcnow()
        for request_id, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[request_id]
                # Reading it expires it; the expiry's audit event then updates the plan.
                read = self._front.engine.show(request_id)
                self._front.background.spawn(_ignore(read), name=f"expire:{request_id}")

    async def _update(self, request_id: str) -> None:
        try:
            while request_id in self._dirty:
                self._dirty.discard(request_id)
                try:
                    record = await self._front.engine.store.get(request_id)
                except UnknownRequest:
                    self._front.state.plans.pop(request_id, None)
                    return
                await self._render(record)
        finally:
            self._running.discard(request_id)

    async def _render(self, record: RequestRecord) -> None:
        front = self._front
        plan = front.state.plans.get(record.id)
        if plan is None:
            return
        if record.state == "awaiting_approval" and record.expires_at is not None:
            self._deadlines[record.id] = record.expires_at
        else:
            self._deadlines.pop(record.id, None)
        text, blocks = plan_message(record, labels=await front.labels(record))
        for attempt in range(UPDATE_ATTEMPTS):
            try:
                await front.client.chat_update(
                    channel=plan.channel, ts=plan.ts, text=text, blocks=blocks
                )
                break
            except SLACK_FAILURES as error:
                log.warning("slack.plan_update_failed", request_id=record.id, error=str(error))
                await asyncio.sleep(0.2 * 2**attempt)
        if record.state == "awaiting_approval" and "notified" not in plan.posted:
            await self._notify(record, plan)
            front.state.mark(record.id, "notified")
            await front.state.save()
        if record.state in TERMINAL_STATES:
            if record.state in ("succeeded", "failed") and "results" not in plan.posted:
                await self._post_results(record, plan)
            front.state.plans.pop(record.id, None)
            await front.state.save()

    async def _notify(self, record: RequestRecord, plan: PlanMessage) -> None:
        """Tell approvers: a mention in the thread, or a DM to each (``LAM_APPROVER_NOTIFY``)."""
        front = self._front
        thread = plan.thread_ts or plan.ts
        asked = escape(clip(record.request.text, 300))
        requester = who(record.request.requester)
        try:
            if front.options.notify == "thread":
                labels = await front.labels(record)
                approvers = sorted({a for d in record.decisions for a in d.approvers})
                named = " ".join(labels.get(a, code(a)) for a in approvers)
                await front.client.chat_postMessage(
                    channel=plan.channel,
                    thread_ts=thread,
                    text=f"{named}: request {code(record.id)} from {requester} needs your"
                    f" approval: “{asked}”. Approve or reject it on the plan above.",
                )
            elif front.options.notify == "dm":
                client = front.client
                link = await client.chat_getPermalink(channel=plan.channel, message_ts=plan.ts)
                line = (
                    f"Request {code(record.id)} from {requester} needs your approval:"
                    f" “{asked}” (<{link['permalink']}|see the plan>)"
                )
                for user in await front.approver_users(record):
                    await front.client.chat_postMessage(
                        channel=user,
                        text=f"Request {record.id} needs your approval",
                        blocks=[section(line), decision_buttons(record.id)],
                    )
        except SLACK_FAILURES as error:
            log.warning("slack.notify_failed", request_id=record.id, error=str(error))

    async def _post_results(self, record: RequestRecord, plan: PlanMessage) -> None:
        front = self._front
        thread = plan.thread_ts or plan.ts
        text, blocks = results_message(record)
        try:
            await front.client.chat_postMessage(
                channel=plan.channel, thread_ts=thread, text=text, blocks=blocks
            )
            for result in long_outputs(record):
                await front.client.files_upload_v2(
                    content=result.output,
                    filename=f"lam-{record.id}-{result.step_id}.txt",
                    title=f"Output of {result.step_id} ({result.action})",
                    channel=plan.channel,
                    thread_ts=thread,
                )
        except SLACK_FAILURES as error:
            log.warning("slack.results_failed", request_id=record.id, error=str(error))
            return
        front.state.mark(record.id, "results")


async def _ignore(work: Awaitable[object]) -> None:
    """Await ``work`` for its side effect; a refusal (the request is gone) is only logged."""
    try:
        await work
    except LamError as error:
        log.info("slack.expiry_read_failed", error=str(error))
