"""The work side of the front: what an acknowledged payload asks for, done in the background.

The listeners (``bot.slack.listeners``) ack a payload and hand it over, to ``receive``
here, in the same process or through the ingress process's pipe (``bot.slack.ingress``).
Only payloads a listener accepted arrive: verified, shape-checked
(``bot.slack._payload``), of a kind LAM listens to. The person acting is read from the
payload itself (``identify``), never from anything echoed back in it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Coroutine, Mapping
from typing import Any

import structlog
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.errors import LamError
from bot.slack import asking, commands, deciding, home
from bot.slack.app import bind_delivery
from bot.slack.blocks import APPROVE, REJECT, escape
from bot.slack.front import SLACK_FAILURES, SlackFront, Where
from bot.slack.identity import Identity, identify

log = structlog.get_logger("lam.slack")

GROUP_EVENTS = frozenset({"subteam_members_changed", "subteam_updated"})

Work = Coroutine[Any, Any, None]


def receive(front: SlackFront, body: dict[str, Any]) -> None:
    """Start (or queue) the work ``body`` asks for, logged with the delivery's ids."""
    context = contextvars.copy_context()
    context.run(_receive, front, body)


def _receive(front: SlackFront, body: dict[str, Any]) -> None:
    bind_delivery(body)
    if (found := work_for(front, body)) is not None:
        work, name = found
        front.background.spawn(work, name=name)


def work_for(front: SlackFront, body: Mapping[str, Any]) -> tuple[Work, str] | None:
    """The work ``body`` asks for and its name, or ``None`` when it asks for none."""
    identity = identify(body)
    event = body.get("event")
    if body.get("type") == "event_callback" and isinstance(event, Mapping):
        return _event_work(front, identity, event)
    if identity is None:
        return None
    if body.get("command") == "/lam":
        where = Where(
            identity.user_id,
            _text(body.get("channel_id")),
            response_url=_text(body.get("response_url")),
        )
        return _command(front, identity, _text(body.get("text")) or "", where), "command"
    if body.get("type") == "block_actions":
        actions = body.get("actions")
        action = actions[0] if isinstance(actions, list) and actions else None
        if isinstance(action, Mapping):
            return _action_work(front, identity, body, action)
        return None
    view = body.get("view")
    if body.get("type") == "view_submission" and isinstance(view, Mapping):
        reason = deciding.submitted_reason(view)
        if reason is None:
            return None
        value, where = deciding.submitted_target(view, identity.user_id)
        return deciding.reject(front, identity, value, reason, where), "reject"
    return None


def _event_work(
    front: SlackFront, identity: Identity | None, event: Mapping[str, Any]
) -> tuple[Work, str] | None:
    kind = event.get("type")
    if kind in GROUP_EVENTS:
        front.directory.invalidate()
        return None
    if identity is None or event.get("bot_id") or (kind == "message" and event.get("subtype")):
        return None
    if kind == "app_home_opened":
        return (
            (home.publish_home(front, identity), "home")
            if event.get("tab", "home") == "home"
            else None
        )
    channel, ts = _channel_id(event.get("channel")), _text(event.get("ts"))
    if channel is None or ts is None:
        log.info("slack.event_without_place", type=kind)
        return None
    text, thread = _text(event.get("text")) or "", _text(event.get("thread_ts"))
    if kind == "app_mention" or (kind == "message" and event.get("channel_type") == "im"):
        work = asking.ask(front, identity, text=text, channel=channel, ts=ts, thread_ts=thread)
        return work, f"ask:{channel}:{ts}"
    # A reply that mentions LAM also arrives as app_mention; either makes the one request
    # (they share the message's dedupe key), so the second is skipped early.
    if kind != "message" or thread is None:
        return None
    if f"<@{front.bot_user_id}" in text:
        return None
    # Whether the thread is LAM's is in the store.
    work = asking.reply_in_thread(
        front, identity, text=text, channel=channel, ts=ts, thread_ts=thread
    )
    return work, f"reply:{channel}:{ts}"


def _action_work(
    front: SlackFront, identity: Identity, body: Mapping[str, Any], action: Mapping[str, Any]
) -> tuple[Work, str]:
    where = where_clicked(body, identity)
    action_id, value = action.get("action_id"), action.get("value")
    if action_id == APPROVE:
        return deciding.approve(front, identity, value, where), str(action_id)
    if action_id == REJECT:
        trigger = body.get("trigger_id")
        return deciding.open_reject(front, identity, value, trigger, where), str(action_id)
    return _page(front, identity, value, where), str(action_id)


def where_clicked(body: Mapping[str, Any], identity: Identity) -> Where:
    """Where an interaction happened: its channel and thread, and its response_url."""
    container = body.get("container")
    message = body.get("message")
    container = container if isinstance(container, Mapping) else {}
    message = message if isinstance(message, Mapping) else {}
    channel = _channel_id(body.get("channel")) or _text(container.get("channel_id"))
    thread = _text(message.get("thread_ts")) or _text(container.get("message_ts"))
    return Where(identity.user_id, channel, thread, _text(body.get("response_url")))


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


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _channel_id(value: object) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return _text(value)
