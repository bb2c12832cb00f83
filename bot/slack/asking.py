"""Asking: a mention, a DM or a reply in a LAM thread becomes one request, or an answer.

A delivery is claimed in the store before anything is posted, keyed by the message
itself (team, channel and ts), so Slack's retries, a replayed request, and the mention
and message events of one message all make one request.

When the latest request of the thread is ``clarifying`` (the model asked a question), a
reply there from the requester is their answer, and the same request is planned again;
anyone else is told, only them, that only the requester can answer.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import structlog

from bot.errors import DuplicateRequest, LamError
from bot.models import Request
from bot.slack._state import PlanMessage
from bot.slack.blocks import code, escape, placeholder, section, who
from bot.slack.front import SLACK_FAILURES, SlackFront, Where
from bot.slack.identity import Identity
from bot.text import MAX_REQUEST_CHARS

log = structlog.get_logger("lam.slack")

LINK = re.compile(r"<(?P<target>[^<>|]+)\|(?P<label>[^<>]*)>")
EXAMPLES = "e.g. “restart api in staging” or “disk usage”; `/lam help` for more"


def request_text(text: str, bot_user_id: str) -> str:
    """The request in a Slack message: the bot's mention out, links as their labels.

    Slack sends ``& < >`` as entities and links as ``<target|label>``; policy and the
    planner see what the person wrote.
    """
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text)
    text = LINK.sub(lambda m: m.group("label") or m.group("target"), text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.strip()


async def reply_in_thread(
    front: SlackFront, identity: Identity, *, text: str, channel: str, ts: str, thread_ts: str
) -> None:
    """A reply in a thread makes a request (or answers one) only when the thread is LAM's."""
    latest = await front.state.request_in_thread(channel, thread_ts)
    if latest is None:
        return
    message = Message(identity, text, channel, ts, thread_ts)
    if not await answered(front, message, latest):
        await _new_request(front, message)


def message_key(identity: Identity, channel: str, ts: str) -> str:
    """The dedupe key of one Slack message: the same for its retries and its mention event."""
    return f"slack:{identity.team_id}:{channel}:{ts}"


@dataclass(frozen=True)
class Message:
    """A person's message to LAM, and where it was written."""

    identity: Identity
    text: str
    channel: str
    ts: str
    thread_ts: str | None

    @property
    def key(self) -> str:
        return message_key(self.identity, self.channel, self.ts)

    @property
    def where(self) -> Where:
        return Where(self.identity.user_id, self.channel, self.thread_ts or self.ts)


async def ask(
    front: SlackFront,
    identity: Identity,
    *,
    text: str,
    channel: str,
    ts: str,
    thread_ts: str | None,
) -> None:
    """Record and plan the request in a message, or take it as the answer LAM waits for."""
    message = Message(identity, text, channel, ts, thread_ts)
    if thread_ts is not None:
        latest = await front.state.request_in_thread(channel, thread_ts)
        if latest is not None and await answered(front, message, latest):
            return
    await _new_request(front, message)


async def answered(front: SlackFront, message: Message, request_id: str) -> bool:
    """Whether ``message`` was dealt with as an answer to LAM's question about
    ``request_id``: taken (from the requester) or refused (from anyone else). ``False``
    when no question about it waits."""
    engine = front.engine
    try:
        record = await engine.show(request_id)
    except LamError:
        return False
    if record.state != "clarifying":
        return False
    mine = uuid.uuid4().hex
    if await engine.store.claim(message.key, mine, engine.options.dedupe_ttl) != mine:
        log.info("slack.duplicate_delivery", key=message.key)
        return True
    identity, where = message.identity, message.where
    if record.request.requester != identity.subject:
        await front.tell(
            where,
            f"Only {who(record.request.requester)} can answer my question about request"
            f" {code(record.id)}. To ask for something yourself, mention me in a new message.",
        )
        return True
    wanted = request_text(message.text, front.bot_user_id)
    try:
        record = await engine.answer(
            record.id, identity.subject, wanted, groups=await front.groups_of(identity)
        )
    except LamError as error:
        await front.tell(where, f":warning: Your answer was not taken: {escape(str(error))}")
        return True
    front.tracker.touch(record.id)
    return True


async def _new_request(front: SlackFront, message: Message) -> None:
    """Record and plan the request in a message; its plan message goes in the thread."""
    identity, channel, ts = message.identity, message.channel, message.ts
    thread = message.thread_ts or ts
    where = message.where
    text = message.text
    wanted = request_text(text, front.bot_user_id)
    if not wanted:
        await front.tell(where, f"Tell me what you need, {EXAMPLES}.")
        return
    if len(wanted) > MAX_REQUEST_CHARS:
        await front.tell(
            where,
            f"Your message is {len(wanted):,} characters long; LAM reads requests of at most"
            f" {MAX_REQUEST_CHARS:,}. Nothing was done: say what you need in fewer words.",
        )
        return
    engine = front.engine
    request = Request(
        text=wanted,
        requester=identity.subject,
        source="slack",
        channel=channel,
        thread=thread,
        environment=front.environment_of(channel),
        groups=await front.groups_of(identity),
    )
    key = message.key
    owner = await engine.store.claim(key, request.id, engine.options.dedupe_ttl)
    if owner != request.id:
        log.info("slack.duplicate_delivery", key=key, request_id=owner)
        return

    fallback, blocks = placeholder(request.id, wanted)
    try:
        posted = await front.client.chat_postMessage(
            channel=channel, thread_ts=thread, text=fallback, blocks=blocks
        )
    except SLACK_FAILURES as error:
        log.warning("slack.cannot_post_plan", channel=channel, error=str(error))
        await front.tell(
            Where(identity.user_id),
            f"I cannot post in <#{channel}>, so I did not act on your request there:"
            f" {escape(str(error))[:300]}. Invite me to the channel, or ask me here.",
        )
        return
    plan_ts = str(posted["ts"])
    plan = PlanMessage(channel=channel, ts=plan_ts, thread_ts=thread)
    await front.state.remember_plan(request.id, plan)
    await front.state.remember_thread(channel, thread, request.id)

    try:
        record = await engine.ask(request, dedupe_key=key)
    except DuplicateRequest as duplicate:
        # Another process claimed the message between our claim and now: its request
        # is the one; say so on the message we posted.
        already = f"Already received as request `{duplicate.request_id}`."
        await _replace(front, channel, plan_ts, already)
        await front.state.remember_thread(channel, thread, duplicate.request_id)
        return
    except LamError as error:
        await _replace(front, channel, plan_ts, f":warning: {escape(str(error))}")
        return
    front.tracker.touch(record.id)


async def _replace(front: SlackFront, channel: str, ts: str, text: str) -> None:
    try:
        await front.client.chat_update(channel=channel, ts=ts, text=text, blocks=[section(text)])
    except SLACK_FAILURES as error:
        log.warning("slack.update_failed", channel=channel, error=str(error))
