"""Progress: keeping each plan message in step with its request, and what follows from it.

The audit trail is the feed: every change to a request is an audit event, whichever
process made it (this one, another replica, a ``lam worker``). ``Progress`` tails the
trail, and for each event of a request with a plan message it re-renders that message
from the stored record, so it shows queued → running → succeeded/failed with durations.
Updates to one message are coalesced: however many events arrive while one update is in
flight, one more update follows, showing the latest state. And one message is updated at
most once per ``update_interval`` while its request moves through passing states
(planned, queued, running): a request that runs in a few milliseconds makes one or two
updates, not one per step, which spares Slack's rate limit on ``chat.update`` (and the
process the calls). A state the request rests in (awaiting approval, finished) is shown
at once.

When a request starts waiting for approval its approvers are notified once; when it
ends, its results are posted in the thread once (long output as a file). Once across
replicas: only the holder of the Slack lease (``bot.slack._lease``) renders, and each
follow-up is claimed in the store before it is posted. The holder keeps its place in the
trail in the store, so a new holder (after a restart, or when the old one died) carries
on from there and renders what changed meanwhile.

``wake()`` is the engine hook: called after each stored change it makes updates
immediate; without it, changes are found every ``poll_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable
from datetime import datetime

import structlog

from bot.errors import LamError, UnknownRequest
from bot.models import TERMINAL_STATES, RequestRecord, State, utcnow
from bot.slack._lease import Lease
from bot.slack._state import PlanMessage
from bot.slack._tasks import woken
from bot.slack.blocks import (
    clip,
    code,
    decision_buttons,
    escape,
    long_outputs,
    plan_message,
    question_block,
    results_message,
    section,
    who,
)
from bot.slack.front import SLACK_FAILURES, SlackFront

log = structlog.get_logger("lam.slack")

UPDATE_ATTEMPTS = 3
YIELD_EVERY = 50
"""Events progress reads before letting other work (acks) run."""
POSITION_EVERY = 1.0
"""Seconds between two writes of progress's position in the trail to the store."""
MAX_ENDED = 10_000
RESTING_STATES: frozenset[State] = frozenset({*TERMINAL_STATES, "awaiting_approval", "clarifying"})
"""States a request stays in until someone acts or for good: shown without delay."""


class Progress:
    """Tails the audit trail and renders each tracked request's changes into Slack."""

    def __init__(
        self,
        front: SlackFront,
        lease: Lease,
        *,
        poll_interval: float,
        update_interval: float = 1.0,
    ) -> None:
        self._front = front
        self._lease = lease
        self._poll = poll_interval
        self._interval = update_interval
        self._wake = asyncio.Event()
        self._dirty: set[str] = set()
        self._running: set[str] = set()
        self._shown_at: dict[str, float] = {}
        """When each request's message was last updated (loop time)."""
        self._hurry: dict[str, asyncio.Event] = {}
        """Set when a request waiting out ``update_interval`` reaches a resting state."""
        self._ended: OrderedDict[str, None] = OrderedDict()
        """Requests shown finished lately: nothing more to show for them."""
        self._deadlines: dict[str, datetime] = {}
        """When each request shown awaiting approval expires: the engine expires a request
        only when it is read, so at its deadline progress reads it."""

    def wake(self) -> None:
        """Look at the audit trail now (the engine stored a change)."""
        self._wake.set()

    def touch(self, request_id: str, *, resting: bool = True) -> None:
        """Re-render ``request_id``'s plan message soon, if it has one; at once if ``resting``
        (the request reached a state it rests in), else within ``update_interval``.

        Only the lease holder renders; on another replica this does nothing.
        """
        if not self._lease.holding or request_id in self._ended:
            return
        self._dirty.add(request_id)
        if resting:
            self._hurry.setdefault(request_id, asyncio.Event()).set()
        if request_id not in self._running:
            self._running.add(request_id)
            self._front.background.spawn(self._update(request_id), name=f"progress:{request_id}")

    async def run(self, stop: asyncio.Event) -> None:
        """Tail the audit trail until ``stop`` is set, while this replica holds the lease.

        The position is stored at most once per ``POSITION_EVERY`` seconds (and when
        stopping): a new holder may render the last second's changes again, which shows
        the same and posts nothing twice.
        """
        store = self._front.engine.store
        loop = asyncio.get_running_loop()
        # Where this replica is in the trail (None while another replica renders), and
        # where it last told the store it was.
        seq: int | None = None
        stored: int | None = None
        stored_at = 0.0
        while not stop.is_set():
            self._wake.clear()
            if not self._lease.holding:
                seq = stored = None
            else:
                try:
                    if seq is None:
                        stored = await self._front.state.progress_position()
                        seq = (await store.audit_head())[0] if stored is None else stored
                    async for event in store.audit_events(seq):
                        seq = event.seq
                        if event.request_id is not None:
                            self.touch(event.request_id, resting=event.state in RESTING_STATES)
                        if seq % YIELD_EVERY == 0:
                            # A long tail is read in one go otherwise, and acks wait for it.
                            await asyncio.sleep(0)
                    if seq != stored and loop.time() - stored_at >= POSITION_EVERY:
                        await self._front.state.set_progress_position(seq)
                        stored, stored_at = seq, loop.time()
                except Exception:
                    log.exception("slack.progress_tail_failed", after_seq=seq)
                self._expire_due()
            await woken(self._wake, stop, seconds=self._poll)
        if seq is not None and seq != stored and self._lease.holding:
            with contextlib.suppress(Exception):
                await self._front.state.set_progress_position(seq)

    def _expire_due(self) -> None:
        now = utcnow()
        for request_id, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[request_id]
                # Reading it expires it; the expiry's audit event then updates the plan.
                read = self._front.engine.show(request_id)
                self._front.background.spawn(_ignore(read), name=f"expire:{request_id}")

    async def _update(self, request_id: str) -> None:
        loop = asyncio.get_running_loop()
        ended = False
        plan: PlanMessage | None = None
        try:
            plan = await self._front.state.plan_of(request_id)
            ended = plan is None
            while plan is not None and request_id in self._dirty and not ended:
                hurry = self._hurry.setdefault(request_id, asyncio.Event())
                shown = self._shown_at.get(request_id)
                if (
                    shown is not None
                    and not hurry.is_set()
                    and (wait := shown + self._interval - loop.time()) > 0
                ):
                    # Whatever changes meanwhile is shown by the one update after the wait.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await hurry.wait()
                hurry.clear()
                self._dirty.discard(request_id)
                try:
                    record = await self._front.engine.store.get(request_id)
                except UnknownRequest:
                    ended = True
                    return
                self._shown_at[request_id] = loop.time()
                ended = record.state in TERMINAL_STATES
                await self._render(record, plan)
        finally:
            self._running.discard(request_id)
            if ended or request_id not in self._dirty:
                self._hurry.pop(request_id, None)
            if ended:
                self._dirty.discard(request_id)
                self._shown_at.pop(request_id, None)
                if plan is not None:
                    self._ended[request_id] = None
                    while len(self._ended) > MAX_ENDED:
                        self._ended.popitem(last=False)

    async def _render(self, record: RequestRecord, plan: PlanMessage) -> None:
        front = self._front
        if record.state in ("awaiting_approval", "clarifying") and record.expires_at is not None:
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
        if record.state == "awaiting_approval" and await front.state.first_to_post(
            record.id, "notified"
        ):
            await self._notify(record, plan)
        # Each question once: the answer may bring another.
        if record.state == "clarifying" and await front.state.first_to_post(
            record.id, f"asked{len(record.conversation)}"
        ):
            await self._ask_requester(record, plan)
        if record.state in ("succeeded", "failed") and await front.state.first_to_post(
            record.id, "results"
        ):
            await self._post_results(record, plan)

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

    async def _ask_requester(self, record: RequestRecord, plan: PlanMessage) -> None:
        """Put the model's question to the requester in the thread, mentioning them."""
        try:
            await self._front.client.chat_postMessage(
                channel=plan.channel,
                thread_ts=plan.thread_ts or plan.ts,
                text=f"Request {record.id} needs an answer: {record.question}",
                blocks=[question_block(record)],
            )
        except SLACK_FAILURES as error:
            log.warning("slack.question_failed", request_id=record.id, error=str(error))

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


async def _ignore(work: Awaitable[object]) -> None:
    """Await ``work`` for its side effect; a refusal (the request is gone) is only logged."""
    try:
        await work
    except LamError as error:
        log.info("slack.expiry_read_failed", error=str(error))
