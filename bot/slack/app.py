"""The bolt ``AsyncApp`` of the Slack front, its middleware, and one dispatch for both transports.

Cross-cutting concerns are bolt middleware (one, as bolt builds every middleware's and
listener's arguments anew): the payload's user becomes an ``Identity`` and the
delivery's ids go into the log context. LAM verifies and parses HTTP deliveries
itself (``bot.slack._guard``) and checks every payload's shape (``bot.slack._payload``),
then hands bolt the verified payload; over Socket Mode the WebSocket authenticates Slack.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.slack._payload import MalformedPayload, check_payload
from bot.slack.front import SlackFront
from bot.slack.identity import IDENTITY_KEY, identify
from bot.slack.listeners import register

log = structlog.get_logger("lam.slack")

FORWARDED_HEADERS = ("X-Slack-Retry-Num", "X-Slack-Retry-Reason")


class RequestContext(AsyncMiddleware):
    """Bolt middleware: who is acting, and the delivery's ids in every log line after.

    The payload's user becomes the context's ``Identity`` (or ``None``). It only reads the
    payload, so acknowledging stays instant; user groups are looked up later, in the
    background, when a listener's work needs them. Work handed off inherits the log
    context, so its log lines carry the delivery's ids too. (A class, not a function:
    bolt calls it directly instead of building its arguments for every delivery.)
    """

    async def async_process(
        self,
        *,
        req: AsyncBoltRequest,
        resp: BoltResponse,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse | None:
        body = req.body
        identity = identify(body)
        req.context[IDENTITY_KEY] = identity
        event = body.get("event")
        ids = {
            "slack_type": body.get("type") or ("command" if "command" in body else None),
            "slack_event_id": body.get("event_id"),
            "slack_event": event.get("type") if isinstance(event, dict) else None,
            "slack_channel": channel_of(body),
            "slack_user": identity.subject if identity else None,
        }
        # bolt runs the listeners after the middleware chain has returned, in the same
        # task: a `with` block here would be gone by then. The delivery's ids stay bound
        # for the rest of its task (and the work it hands off copies them); the ids of a
        # previous delivery handled by the same task are dropped first.
        structlog.contextvars.unbind_contextvars(*ids)
        structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v})
        return await next()


def channel_of(body: Mapping[str, Any]) -> str | None:
    """The channel of an event, a slash command, or an interaction, for log lines."""
    event = body.get("event")
    container = body.get("container")
    for candidate in (
        event.get("channel") if isinstance(event, Mapping) else None,
        body.get("channel_id"),
        body.get("channel"),
        container.get("channel_id") if isinstance(container, Mapping) else None,
    ):
        if isinstance(candidate, Mapping):
            candidate = candidate.get("id")
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


def build_app(front: SlackFront) -> AsyncApp:
    """The bolt app: LAM's middleware, then its listeners, all on ``front.client``."""
    app = AsyncApp(
        name="lam",
        client=front.client,
        # Listeners only ack and hand off, so answering after them is immediate, and bolt
        # need not poll for the ack (its runner does, every 10 ms, otherwise).
        process_before_response=True,
        # LAM's own guard verified the signature before dispatch.
        request_verification_enabled=False,
        logger=logging.getLogger("lam.slack.bolt"),
    )
    app.use(RequestContext())
    register(app, front)
    return app


async def dispatch(
    app: AsyncApp, payload: object, headers: Mapping[str, str] | None = None
) -> BoltResponse:
    """Run one verified payload through bolt; a malformed one is a 400, never an exception."""
    try:
        body = check_payload(payload)
    except MalformedPayload as error:
        return BoltResponse(status=400, body=json.dumps({"error": f"malformed payload: {error}"}))
    forwarded: dict[str, str | Sequence[str]] = {
        name.lower(): value
        for name in FORWARDED_HEADERS
        if headers is not None and (value := headers.get(name)) is not None
    }
    # "socket_mode" tells bolt the payload is already verified and parsed; for HTTP,
    # LAM's guard did both.
    request = AsyncBoltRequest(body=body, headers=forwarded or None, mode="socket_mode")
    try:
        return await app.async_dispatch(request)
    except Exception:
        log.exception("slack.dispatch_failed")
        return BoltResponse(status=400, body=json.dumps({"error": "malformed payload"}))
