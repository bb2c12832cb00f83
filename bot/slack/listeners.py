"""Bolt listeners: each acks at once and hands its work to the background.

Bolt runs with ``process_before_response``: a listener's return is the response, and as
listeners only ack and spawn, Slack gets its answer in well under a millisecond of LAM's
time, with no polling for the ack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import structlog
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.errors import LamError
from bot.slack import asking, commands, deciding, home
from bot.slack.blocks import APPROVE, PAGE, REJECT, escape
from bot.slack.front import SLACK_FAILURES, SlackFront, Where
from bot.slack.identity import Identity, identity_of

log = structlog.get_logger("lam.slack")

LAM_ACTIONS = re.compile(rf"^(?:{re.escape(APPROVE)}|{re.escape(REJECT)}|{re.escape(PAGE)}\.\d+)$")
GROUP_EVENTS = frozenset({"subteam_members_changed", "subteam_updated"})
EVENTS = re.compile(
    r"^(?:message|app_mention|app_home_opened|subteam_members_changed|subteam_updated)$"
)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _channel_id(value: object) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return _text(value)


def where_clicked(body: Mapping[str, Any], identity: Identity) -> Where:
    """Where an interaction happened: its channel and thread, and its response_url."""
    container = body.get("container") if isinstance(body.get("container"), Mapping) else {}
    message = body.get("message") if isinstance(body.get("message"), Mapping) else {}
    assert isinstance(container, Mapping) and isinstance(message, Mapping)
    channel = _channel_id(body.get("channel")) or _text(container.get("channel_id"))
    thread = _text(message.get("thread_ts")) or _text(container.get("message_ts"))
    return Where(identity.user_id, channel, thread, _text(body.get("response_url")))


def register(app: AsyncApp, front: SlackFront) -> None:
    """Attach LAM's listeners to ``app``; the work itself runs on ``front.background``.

    One listener per kind of payload (events, ``/lam``, buttons, the modal), each
    dispatching on the type itself: bolt tries listeners in order and builds every
    matcher's arguments anew, so each listener more costs every delivery about as much
    as LAM's whole listener does.
    """

    def spawn_ask(identity: Identity, event: Mapping[str, Any]) -> None:
        channel, ts = _channel_id(event.get("channel")), _text(event.get("ts"))
        if channel is None or ts is None:
            log.info("slack.event_without_place", type=event.get("type"))
            return
        work = asking.ask(
            front,
            identity,
            text=_text(event.get("text")) or "",
            channel=channel,
            ts=ts,
            thread_ts=_text(event.get("thread_ts")),
        )
        front.background.spawn(work, name=f"ask:{channel}:{ts}")

    def on_message(identity: Identity, event: Mapping[str, Any]) -> None:
        if event.get("subtype") or event.get("bot_id"):
            return
        if event.get("channel_type") == "im":
            spawn_ask(identity, event)
            return
        channel, ts = _channel_id(event.get("channel")), _text(event.get("ts"))
        thread, text = _text(event.get("thread_ts")), _text(event.get("text")) or ""
        # A reply that mentions LAM also arrives as app_mention; either makes the one
        # request (they share the message's dedupe key), so skip the second early.
        if channel is None or ts is None or thread is None or f"<@{front.bot_user_id}" in text:
            return
        # Whether the thread is LAM's is in the store: looked up after the ack.
        work = asking.reply_in_thread(
            front, identity, text=text, channel=channel, ts=ts, thread_ts=thread
        )
        front.background.spawn(work, name=f"reply:{channel}:{ts}")

    async def on_event(event: dict[str, Any], context: AsyncBoltContext) -> None:
        kind = event.get("type")
        if kind in GROUP_EVENTS:
            front.directory.invalidate()
            return
        identity = identity_of(context)
        if identity is None:
            return
        if kind == "message":
            on_message(identity, event)
        elif kind == "app_mention" and not event.get("bot_id"):
            spawn_ask(identity, event)
        elif kind == "app_home_opened" and event.get("tab", "home") == "home":
            front.background.spawn(home.publish_home(front, identity), name="home")

    async def on_command(ack: AsyncAck, command: dict[str, Any], context: AsyncBoltContext) -> None:
        await ack()
        if (identity := identity_of(context)) is not None:
            where = Where(
                identity.user_id,
                _text(command.get("channel_id")),
                response_url=_text(command.get("response_url")),
            )
            text = _text(command.get("text")) or ""
            front.background.spawn(_command(front, identity, text, where), name="command")

    async def on_action(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await ack()
        if (identity := identity_of(context)) is None:
            return
        where = where_clicked(body, identity)
        action_id, value = action.get("action_id"), action.get("value")
        if action_id == APPROVE:
            work = deciding.approve(front, identity, value, where)
        elif action_id == REJECT:
            trigger = body.get("trigger_id")
            work = deciding.open_reject(front, identity, value, trigger, where)
        else:
            work = _page(front, identity, value, where)
        front.background.spawn(work, name=str(action_id))

    async def on_reject_submitted(
        ack: AsyncAck, view: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        reason = deciding.submitted_reason(view)
        if problem := deciding.reason_problem(reason):
            await ack(response_action="errors", errors={deciding.REASON_BLOCK: problem})
            return
        await ack()
        identity = identity_of(context)
        if identity is not None and reason is not None:
            value, where = deciding.submitted_target(view, identity.user_id)
            work = deciding.reject(front, identity, value, reason, where)
            front.background.spawn(work, name="reject")

    # Events first: with message.channels, every message in LAM's channels is one.
    app.event(EVENTS)(on_event)
    app.command("/lam")(on_command)
    app.action(LAM_ACTIONS)(on_action)
    app.view_submission(REJECT)(on_reject_submitted)


async def _command(front: SlackFront, identity: Identity, text: str, where: Where) -> None:
    try:
        reply = await commands.answer(front, identity, text, where.channel)
    except LamError as error:
        await front.tell(where, f":warning: {escape(str(error))}")
        return
    await front.tell(where, reply.text, reply.blocks)


async def _page(front: SlackFront, identity: Identity, value: object, where: Where) -> None:
    """Show another page of a listing in place of the one clicked."""
    try:
        text, page = commands.parse_page_value(value)
        reply = await commands.answer(front, identity, text, where.channel, page)
    except LamError as error:
        await front.tell(where, f":warning: {escape(str(error))}")
        return
    if where.response_url and front.trusted_response_url(where.response_url):
        try:
            webhook = AsyncWebhookClient(where.response_url, session=front.session)
            await webhook.send(text=reply.text, blocks=reply.blocks, replace_original=True)
            return
        except SLACK_FAILURES as error:
            log.info("slack.page_replace_failed", error=str(error))
    await front.tell(where, reply.text, reply.blocks)
